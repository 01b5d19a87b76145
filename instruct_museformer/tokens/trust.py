"""Checks on a note alignment nobody vouched for: bar k of the performance must be bar k of the score.

(n)ASAP marks some of its note alignments not robust (a performance that leaves the score's path, a
sloppy automatic alignment), and parangonar's alignments are automatic. The tempo fit through the
anchors of such an alignment would always succeed, and the bar agreement of ``pair.tokenize_pair``
would still be high where the performance skipped bars (they are fitted into a few milliseconds), so the
alignment itself is checked first:

- **matched share**: at least :data:`~.autoalign.MIN_MATCHED` of the score's notes (grace notes aside)
  are anchors, the threshold of parangonar's alignments;
- **score bars without anchors**: no run of more than :data:`MAX_UNANCHORED_BARS` score bars that hold
  notes but no anchor (a skipped repeat or passage);
- **performance without anchors**: no gap between consecutive anchors that lasts more than
  :data:`MAX_EXCESS_S` seconds longer than the score's quarters in it take at the local tempo (music the
  score does not have at that point, e.g. a repeat the score does not write);
- **beat annotations**, where the pair has some that count about as many bars as the score (within
  :data:`SAME_BAR_COUNT`; they failed on a bar or two): at least :data:`MIN_DOWNBEATS_ON_BAR_LINES` of
  their downbeats fall on a bar line where the alignment's anchors put them (within
  :data:`DOWNBEAT_TOLERANCE_Q`).

Robust (n)ASAP alignments pass these checks with a margin (docs/tokens.md gives the figures).
"""

from __future__ import annotations

import numpy as np

from .autoalign import MIN_MATCHED
from .errors import TokenizationError
from .grid import BarGrid
from .performance import _monotone_anchors
from .score import ScoreData

MAX_UNANCHORED_BARS = 2
MAX_EXCESS_S = 10.0
TEMPO_WINDOW = 16  # anchor intervals on each side that give the local tempo
MIN_GAP_NOTES = 16  # performance notes in a gap between anchors that make it music rather than a pause
SAME_BAR_COUNT = 0.05  # annotations within 5% of the score's bar count are compared with the alignment
MIN_DOWNBEATS_ON_BAR_LINES = 0.85  # robust (n)ASAP alignments: 0.863-1.0, median 1.0 (757 pairs)
DOWNBEAT_TOLERANCE_Q = 0.25  # quarters between an annotated downbeat and the bar line it marks


def matched_share(data: ScoreData, anchor_count: int) -> float:
    """Anchors per score note (grace notes aside: they are never anchors)."""
    notes = int(np.count_nonzero(~data.is_grace))
    return anchor_count / notes if notes else 0.0


def longest_unanchored_run(grid: BarGrid, data: ScoreData, anchor_q: np.ndarray) -> int:
    """The longest run of consecutive score bars (of those holding notes) without an anchor."""
    note_bars = np.unique(grid.bar_of_tick(grid.quarter_to_tick(data.onset[~data.is_grace])))
    anchored = np.isin(note_bars, grid.bar_of_tick(grid.quarter_to_tick(anchor_q)))
    longest = run = 0
    for ok in anchored:
        run = 0 if ok else run + 1
        longest = max(longest, run)
    return longest


def largest_excess(grid: BarGrid, anchor_q: np.ndarray, anchor_s: np.ndarray,
                   onsets: np.ndarray) -> tuple[float, float]:
    """(seconds, performance time) of the gap between consecutive anchors that lasts longest beyond what its
    score quarters take at the median tempo of the :data:`TEMPO_WINDOW` gaps on either side, among the gaps
    in which at least :data:`MIN_GAP_NOTES` performance notes (``onsets``) are played: a held fermata or a
    pause is no music the score lacks."""
    ticks, seconds = _monotone_anchors(grid.quarter_to_tick(anchor_q), anchor_s)
    if len(ticks) < 3:
        return 0.0, 0.0
    quarters = np.diff(ticks) / grid.vocab.ticks_per_quarter
    gaps = np.diff(seconds)
    pace = gaps / np.maximum(quarters, 1e-9)
    inside = np.searchsorted(np.sort(onsets), seconds[1:], side="left") - np.searchsorted(
        np.sort(onsets), seconds[:-1], side="right")
    worst, worst_at = 0.0, 0.0
    for i in np.flatnonzero(inside >= MIN_GAP_NOTES):
        near = np.r_[max(0, i - TEMPO_WINDOW):i, i + 1:min(len(gaps), i + TEMPO_WINDOW + 1)]
        local = float(np.median(pace[near])) if len(near) else 0.0
        excess = gaps[i] - quarters[i] * local
        if excess > worst:
            worst, worst_at = float(excess), float(seconds[i])
    return worst, worst_at


def downbeats_on_bar_lines(grid: BarGrid, anchor_q: np.ndarray, anchor_s: np.ndarray,
                           downbeats: np.ndarray) -> float:
    """Share of annotated downbeats (seconds) that the anchors' time map puts on a bar line."""
    ticks, seconds = _monotone_anchors(grid.quarter_to_tick(anchor_q), anchor_s)
    at = np.interp(downbeats, seconds, ticks)
    bar = grid.bar_of_tick(at)
    offset = (at - grid.start_tick[bar]) / grid.vocab.ticks_per_quarter
    length = grid.length_ticks[bar] / grid.vocab.ticks_per_quarter
    return float(np.mean(np.minimum(offset, length - offset) <= DOWNBEAT_TOLERANCE_Q)) if len(downbeats) else 1.0


def check_alignment(grid: BarGrid, data: ScoreData, anchor_q: np.ndarray, anchor_s: np.ndarray,
                    onsets: np.ndarray, name: str, downbeats: np.ndarray | None = None) -> None:
    """Raise TokenizationError("alignment below threshold") naming ``name`` where a check fails; ``onsets``:
    the performance's note onsets, ``downbeats``: its annotated downbeats (seconds), if any."""
    share = matched_share(data, len(anchor_q))
    if share < MIN_MATCHED:
        raise TokenizationError("alignment below threshold", f"{name}: {share:.1%} of the score's notes matched "
                                f"(< {MIN_MATCHED:.0%})")
    run = longest_unanchored_run(grid, data, anchor_q)
    if run > MAX_UNANCHORED_BARS:
        raise TokenizationError("alignment below threshold", f"{name}: {run} consecutive score bars without a "
                                f"matched note (> {MAX_UNANCHORED_BARS}; a skipped passage?)")
    excess, at = largest_excess(grid, anchor_q, anchor_s, onsets)
    if excess > MAX_EXCESS_S:
        raise TokenizationError("alignment below threshold", f"{name}: {excess:.1f} s of the performance at "
                                f"{at:.1f} s without a matched note beyond the score's time (> {MAX_EXCESS_S:.0f} s; "
                                "music the score does not have there?)")
    if downbeats is not None and abs(len(downbeats) - grid.num_bars) <= SAME_BAR_COUNT * grid.num_bars:
        share = downbeats_on_bar_lines(grid, anchor_q, anchor_s, downbeats)
        if share < MIN_DOWNBEATS_ON_BAR_LINES:
            raise TokenizationError("alignment below threshold", f"{name}: {share:.1%} of the {len(downbeats)} "
                                    f"annotated downbeats on a bar line (< {MIN_DOWNBEATS_ON_BAR_LINES:.0%})")
