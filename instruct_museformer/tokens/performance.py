"""Performances: a beat-aligned tempo map fitted through alignment anchors, tokens, and decoding.

A performance MIDI has no musical bars. We give it the score's bars through a monotone piecewise-linear
map from score time to performance seconds, anchored at aligned onsets / annotated beats and sampled
at every beat of the :class:`~.grid.BarGrid`. The decoded MIDI's beats are then the played beats.

Tempo quantisation would make decoded times drift over a piece, so the tempo of each beat is chosen
with error feedback: among the vocabulary's tempo bins, the one that brings the *decoded* time of the
next beat closest to its played time, given the decoded time so far (at a bar line, the closest one
that is not later than the played downbeat, so that notes played on it stay in their bar). Note and
pedal positions are then computed against that decoded grid, so the only onset error left is the
position rounding (1/48 beat).

Events outside the score's span are kept inside the piece: the first beat is stretched back to the
first onset or pedal change and the last beat forward to the last one (within the tempo range), and
anything still outside is clamped to bar 1 / the last bar; no bar is ever added. The pedal counts from
the first note (:func:`pedal_from_first_note`): pianists press it before they start, and the first beat
stretched back to that press read as a tempo nobody played.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import miditok
import numpy as np
from symusic import Score

from .errors import TokenizationError
from .grid import BarGrid
from .remi import BarWriter, decode_ids
from .score import read_midi
from .tokenizer import Vocab

MIN_GAP_S = 1e-3


@dataclass
class PerformanceData:
    """Notes and sustain-pedal intervals of a performance MIDI, in seconds."""

    path: Path
    onset: np.ndarray
    offset: np.ndarray
    pitch: np.ndarray
    velocity: np.ndarray
    pedal_on: np.ndarray
    pedal_off: np.ndarray


def load_performance(path: Path) -> PerformanceData:
    """Read a performance MIDI (all non-drum tracks, sustain pedal from CC64)."""
    path = Path(path)
    score = read_midi(path, "second")
    notes = [n for track in score.tracks if not track.is_drum for n in track.notes]
    pedals = [p for track in score.tracks if not track.is_drum for p in track.pedals]
    if not notes:
        raise TokenizationError("parse error", f"{path}: the performance has no notes")
    onset = np.array([n.time for n in notes], dtype=np.float64)
    order = np.argsort(onset, kind="stable")
    pedals.sort(key=lambda p: p.time)
    return PerformanceData(
        path,
        onset[order],
        np.array([n.time + n.duration for n in notes], dtype=np.float64)[order],
        np.array([n.pitch for n in notes], dtype=np.int64)[order],
        np.array([n.velocity for n in notes], dtype=np.int64)[order],
        np.array([p.time for p in pedals], dtype=np.float64),
        np.array([p.time + p.duration for p in pedals], dtype=np.float64),
    )


def pedal_from_first_note(perf: PerformanceData) -> PerformanceData:
    """The sustain pedal as it acts on the notes: a press before the first note starts with it, a press
    released before it is dropped. Half of (n)ASAP's performances press the pedal up to a few seconds before
    the first note; stretching the first beat back to that press gave an opening tempo down to a quarter
    of the played one, which the model learnt as noise and then guessed in octaves when rendering."""
    first = float(perf.onset.min())
    keep = perf.pedal_off > first
    return replace(perf, pedal_on=np.maximum(perf.pedal_on[keep], first), pedal_off=perf.pedal_off[keep])


def _monotone_anchors(ticks: np.ndarray, seconds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Strictly increasing (tick, second) anchors: earliest time per tick, then the longest increasing run.

    The earliest note of a chord (not the median) marks its beat, so that a chord on a downbeat is
    entirely inside its bar: with the median, the early notes of arpeggiated or asynchronous chords
    fell into the previous bar (3% of aligned notes on Chopin's Ballade 1, 0.6% with the earliest).
    """
    order = np.argsort(ticks, kind="stable")
    ticks, seconds = ticks[order], seconds[order]
    unique, starts = np.unique(ticks, return_index=True)
    earliest = np.array([s.min() for s in np.split(seconds, starts[1:])])
    keep = _longest_increasing(earliest)
    return unique[keep].astype(np.float64), earliest[keep]


def _longest_increasing(values: np.ndarray) -> np.ndarray:
    """Indices of a longest strictly increasing subsequence (O(n log n)); drops alignment outliers."""
    import bisect

    tails: list[float] = []
    tail_index: list[int] = []
    previous = np.full(len(values), -1, dtype=np.int64)
    for i, v in enumerate(values):
        k = bisect.bisect_left(tails, v)
        if k == len(tails):
            tails.append(v)
            tail_index.append(i)
        else:
            tails[k] = v
            tail_index[k] = i
        previous[i] = tail_index[k - 1] if k > 0 else -1
    out = []
    i = tail_index[-1] if tail_index else -1
    while i >= 0:
        out.append(i)
        i = previous[i]
    return np.asarray(out[::-1], dtype=np.int64)


def _interp_extrap(x: np.ndarray, xp: np.ndarray, fp: np.ndarray, min_span: float) -> np.ndarray:
    """Piecewise-linear interpolation, extended beyond the ends with the slope over >= min_span."""
    y = np.interp(x, xp, fp)
    far_start = int(np.clip(np.searchsorted(xp, xp[0] + min_span), 1, len(xp) - 1))
    far_end = int(np.clip(np.searchsorted(xp, xp[-1] - min_span, side="right") - 1, 0, len(xp) - 2))
    slope_start = (fp[far_start] - fp[0]) / (xp[far_start] - xp[0])
    slope_end = (fp[-1] - fp[far_end]) / (xp[-1] - xp[far_end])
    y = np.where(x < xp[0], fp[0] + (x - xp[0]) * slope_start, y)
    return np.where(x > xp[-1], fp[-1] + (x - xp[-1]) * slope_end, y)


@dataclass
class TempoFit:
    """The decoded grid: tempo beats in ticks, their decoded seconds, the chosen tempo bin per beat."""

    beat_ticks: np.ndarray  # (B+1,) including the end tick
    decoded: np.ndarray  # (B+1,) seconds from the start of bar 1, as the MIDI will decode them
    tempo_index: np.ndarray  # (B,) index into Vocab.tempos
    origin: float  # performance time (s) of tick 0

    def seconds_to_ticks(self, seconds: np.ndarray) -> np.ndarray:
        """Continuous ticks of performance times (absolute seconds) on the decoded grid."""
        rel = np.asarray(seconds, dtype=np.float64) - self.origin
        return _interp_extrap(rel, self.decoded, self.beat_ticks.astype(np.float64), 0.0)


def fit_tempo(grid: BarGrid, anchor_q: np.ndarray, anchor_s: np.ndarray, first_event: float,
              last_event: float) -> TempoFit:
    """Tempo per beat with error feedback (see the module docstring)."""
    vocab = grid.vocab
    tpq = vocab.ticks_per_quarter
    ticks, seconds = _monotone_anchors(grid.quarter_to_tick(anchor_q), anchor_s)
    if len(ticks) < 2:
        raise ValueError("fewer than two monotone anchors")
    beats = grid.beat_ticks()
    played = _interp_extrap(beats.astype(np.float64), ticks, seconds, float(tpq))
    # Stretch the first beat back to the first event and the last beat on to the last one, but never
    # beyond what the slowest tempo bin can express (a stray event long before the piece is clamped
    # instead of distorting the tempo of the bars after it).
    slowest = 60.0 / float(vocab.tempos.min()) * 0.95
    first_q = (beats[1] - beats[0]) / tpq
    last_q = (beats[-1] - beats[-2]) / tpq
    played[0] = max(min(played[0], first_event), played[1] - first_q * slowest)
    # The last event must fall before the end of the last bar, on a position that exists.
    last_step = grid.ticks_per_pos[-1] / (beats[-1] - beats[-2]) * (played[-1] - played[-2])
    played[-1] = min(max(played[-1], last_event + max(last_step, 0.01)), played[-2] + last_q * slowest)
    for i in range(1, len(played)):
        played[i] = max(played[i], played[i - 1] + MIN_GAP_S)
    origin = float(played[0])
    target = played - origin
    mspq = np.round(60e6 / vocab.tempos)  # what a MIDI file stores
    seconds_per_quarter = mspq / 1e6
    decoded = np.zeros(len(beats), dtype=np.float64)
    chosen = np.zeros(len(beats) - 1, dtype=np.int64)
    bar_lines = set(grid.start_tick.tolist())
    for i in range(len(beats) - 1):
        quarters = (beats[i + 1] - beats[i]) / tpq
        candidates = decoded[i] + quarters * seconds_per_quarter
        error = np.abs(candidates - target[i + 1])
        if int(beats[i + 1]) in bar_lines:
            # A decoded bar line must not come after the played one, or the notes played on it would
            # fall into the previous bar: pick the closest bin that is not late (when there is one).
            error = np.where(candidates <= target[i + 1] + 1e-9, error, error + 1e6)
        k = int(error.argmin())
        chosen[i] = k
        decoded[i + 1] = decoded[i] + quarters * seconds_per_quarter[k]
    return TempoFit(beats, decoded, chosen, origin)


def encode_performance(perf: PerformanceData, grid: BarGrid, fit: TempoFit) -> list[int]:
    """Performance tokens on ``grid`` with the fitted tempo map."""
    writer = BarWriter(grid)
    bar, pos = grid.snap(fit.beat_ticks[:-1].astype(np.float64))
    previous = -1
    for b, p, k in zip(bar, pos, fit.tempo_index, strict=True):
        if k != previous:
            writer.add_tempo(int(b), int(p), int(k))
            previous = k
    onset_tick = fit.seconds_to_ticks(perf.onset)
    offset_tick = fit.seconds_to_ticks(perf.offset)
    bar, pos = grid.snap(onset_tick)
    snapped = grid.position_tick(bar, pos)
    for i in range(len(perf.onset)):
        writer.add_note(int(bar[i]), int(pos[i]), int(perf.pitch[i]), int(perf.velocity[i]),
                        float(offset_tick[i] - snapped[i]))
    for times, down in ((perf.pedal_on, True), (perf.pedal_off, False)):
        if len(times) == 0:
            continue
        bar, pos = grid.snap(fit.seconds_to_ticks(times))
        for b, p, t in zip(bar, pos, times, strict=True):
            writer.add_pedal(int(b), int(p), down, float(t))
    return writer.ids()


def decode_performance(ids: Sequence[int], tokenizer: miditok.REMI) -> Score:
    """Token ids -> performance ``symusic.Score`` (ticks, tempo map, time signatures, sustain pedal).

    Accepts any id sequence (a model's output included): see :func:`.remi.decode_ids`.
    """
    return decode_ids(ids, Vocab(tokenizer))
