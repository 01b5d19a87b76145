"""Metric primitives: Pearson r and MAE on keyed curves, JS divergence on fixed-bin histograms.

A *curve* is a pair of arrays ``(keys, values)``: keys are integer score positions (a score note index,
a score onset in divs, a beat or bar index), values are what the performance did there. Two performances
are compared only on the keys both have, so missing/extra notes never shift the comparison.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Curve = tuple[np.ndarray, np.ndarray]

# Fewer common points than this and a correlation means nothing: reported as undefined (None).
MIN_POINTS = 3
# A curve whose std is below this (relative to max(1, |values|)) is flat: Pearson r is undefined for it. It absorbs
# the float32 jitter of MIDI times (~1e-5 s) so a mechanical performance does not fake a tempo curve.
_FLAT = 1e-4


def empty_curve() -> Curve:
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)


def make_curve(keys: Sequence[int] | np.ndarray, values: Sequence[float] | np.ndarray) -> Curve:
    """Sorted, finite-only, one-value-per-key curve (a repeated key keeps its mean)."""
    keys = np.asarray(keys, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    keys, values = keys[finite], values[finite]
    if len(keys) == 0:
        return empty_curve()
    unique, inverse = np.unique(keys, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(unique))
    counts = np.bincount(inverse, minlength=len(unique))
    return unique, sums / counts


def common(a: Curve, b: Curve) -> tuple[np.ndarray, np.ndarray]:
    """Values of ``a`` and ``b`` on the keys both curves have, in key order."""
    _, ia, ib = np.intersect1d(a[0], b[0], assume_unique=True, return_indices=True)
    return a[1][ia], b[1][ib]


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson r, or None when it is undefined (too few points, or a flat series)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < MIN_POINTS or len(x) != len(y):
        return None
    if _flat(x) or _flat(y):
        return None
    dx, dy = x - x.mean(), y - y.mean()
    sx, sy = np.sqrt((dx * dx).sum()), np.sqrt((dy * dy).sum())
    return float(np.clip((dx * dy).sum() / (sx * sy), -1.0, 1.0))


def _flat(x: np.ndarray) -> bool:
    return bool(x.std() <= _FLAT * max(1.0, float(np.abs(x).max())))


def curve_r(a: Curve, b: Curve) -> float | None:
    return pearson(*common(a, b))


def curve_mae(a: Curve, b: Curve) -> float | None:
    x, y = common(a, b)
    return float(np.abs(x - y).mean()) if len(x) else None


def mean_curve(curves: Sequence[Curve]) -> Curve:
    """Pointwise mean of curves over the union of their keys (a key averaged over the curves that have it)."""
    curves = [c for c in curves if len(c[0])]
    if not curves:
        return empty_curve()
    return make_curve(np.concatenate([c[0] for c in curves]), np.concatenate([c[1] for c in curves]))


def mean_or_none(values: Sequence[float | None]) -> float | None:
    """Mean of the defined values; None when none is defined."""
    kept = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(kept)) if kept else None


# ------------------------------------------------------------------------------------------ histograms

# Fixed bins, the same for every performance, so histograms are comparable across pieces and systems.
# The last bin of IOI and duration is an overflow bin (everything at or above its left edge).
BINS: dict[str, np.ndarray] = {
    # MIDI velocity 0..127 in 32 bins of 4 (MidiTok's default velocity resolution)
    "velocity": np.arange(0, 129, 4, dtype=np.float64),
    # inter-onset interval between consecutive performed notes, seconds: 25 ms bins up to 2 s, then overflow
    "ioi": np.append(np.arange(0.0, 2.0 + 1e-9, 0.025), np.inf),
    # performed note duration, seconds: 50 ms bins up to 4 s, then overflow
    "duration": np.append(np.arange(0.0, 4.0 + 1e-9, 0.05), np.inf),
    # sustain pedal (CC64) value in effect at each note onset, 4 bins: off / light / half / full
    "pedal": np.array([0.0, 32.0, 64.0, 96.0, 128.0]),
}


def histogram(values: np.ndarray, name: str) -> np.ndarray:
    """Counts of ``values`` in the fixed bins of ``name`` (values below the first edge go to the first bin)."""
    edges = BINS[name]
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    clipped = np.clip(values, edges[0], None)
    # right-open bins [e_i, e_{i+1}); the overflow edge is +inf so every finite value lands somewhere
    index = np.searchsorted(edges, clipped, side="right") - 1
    index = np.clip(index, 0, len(edges) - 2)
    return np.bincount(index, minlength=len(edges) - 1).astype(np.float64)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float | None:
    """Jensen-Shannon divergence in bits (base 2): 0 for identical, 1 for disjoint distributions.

    ``p`` and ``q`` are counts or probabilities over the same bins; None when either is empty.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return None
    p, q = p / p.sum(), q / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nonzero = a > 0
        return float((a[nonzero] * np.log2(a[nonzero] / m[nonzero])).sum())

    return float(np.clip(0.5 * kl(p) + 0.5 * kl(q), 0.0, 1.0))
