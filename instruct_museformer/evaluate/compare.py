"""One performance against a set of reference (human) performances of the same score.

Every metric is computed two ways, both in the report:

- ``vs_each``: against each reference separately, then averaged over the references (the headline figure
  for renderings: "how close is it to a human, on average");
- ``vs_pool``: against the pointwise MEAN curve of the references (for JS: their pooled histogram). The
  leave-one-out human ceiling in data.md is of this kind (one pianist against the mean of the others).

The ceiling is every human against the other humans of the same piece, averaged over the humans.
"""

from __future__ import annotations

from collections.abc import Sequence

from .features import Features
from .metrics import BINS, curve_mae, curve_r, histogram, js_divergence, mean_curve, mean_or_none

CURVES = ("tempo_onset", "tempo_beat", "tempo_bar", "velocity", "articulation", "asynchrony")
DISTRIBUTIONS = tuple(BINS)
# metric name -> (higher is better?) ; the order is the report's column order
METRICS: dict[str, bool] = {
    "tempo_onset_r": True,
    "tempo_beat_r": True,
    "tempo_bar_r": True,
    "velocity_r": True,
    "velocity_mae": False,
    "articulation_r": True,
    "asynchrony_r": True,
    "js_velocity": False,
    "js_ioi": False,
    "js_duration": False,
    "js_pedal": False,
}
MODES = ("vs_each", "vs_pool")


def coverage_of(features: Features) -> dict[str, float | int]:
    """Score notes found in the performance, and notes it added (absolute and per score note); the coverage
    also with unisons counted once (issue #17's target), which a MIDI file can reach: the plain one cannot."""
    return {
        "score_notes": features.score_notes,
        "matched": features.matched,
        "added": features.added,
        "coverage": round(features.coverage, 6),
        "coverage_unisons_once": round(features.coverage_unisons_once, 6),
        "added_ratio": round(features.added / features.score_notes, 6) if features.score_notes else 0.0,
    }


def compare(performance: Features, references: Sequence[Features]) -> dict[str, dict[str, float | None]]:
    """All metrics of ``performance`` against ``references``: ``{"vs_each": {...}, "vs_pool": {...}}``."""
    each: dict[str, float | None] = {}
    pool: dict[str, float | None] = {}
    for name in CURVES:
        mine = getattr(performance, name)
        theirs = [getattr(ref, name) for ref in references]
        mean = mean_curve(theirs)
        each[f"{name}_r"] = mean_or_none([curve_r(mine, other) for other in theirs])
        pool[f"{name}_r"] = curve_r(mine, mean)
        if name == "velocity":
            each["velocity_mae"] = mean_or_none([curve_mae(mine, other) for other in theirs])
            pool["velocity_mae"] = curve_mae(mine, mean)
    for name in DISTRIBUTIONS:
        mine_hist = histogram(performance.samples[name], name)
        hists = [histogram(ref.samples[name], name) for ref in references]
        each[f"js_{name}"] = mean_or_none([js_divergence(mine_hist, h) for h in hists])
        pool[f"js_{name}"] = js_divergence(mine_hist, sum(hists)) if hists else None
    return {"vs_each": _ordered(each), "vs_pool": _ordered(pool)}


def ceiling(humans: Sequence[Features]) -> dict | None:
    """Leave-one-out human agreement: each human against the others, averaged over the humans (None if < 2)."""
    if len(humans) < 2:
        return None
    rows = [compare(h, [o for j, o in enumerate(humans) if j != i]) for i, h in enumerate(humans)]
    result: dict = {mode: {m: mean_or_none([row[mode][m] for row in rows]) for m in METRICS} for mode in MODES}
    result["coverage"] = _mean_coverage([coverage_of(h) for h in humans])
    result["performances"] = len(humans)
    return result


def _mean_coverage(rows: Sequence[dict]) -> dict[str, float]:
    return {key: round(float(sum(r[key] for r in rows) / len(rows)), 6) for key in rows[0]}


def _ordered(values: dict[str, float | None]) -> dict[str, float | None]:
    return {m: (None if values.get(m) is None else round(float(values[m]), 6)) for m in METRICS}
