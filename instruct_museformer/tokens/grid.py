"""The bar grid shared by both sides of a pair: score measures -> token bars -> ticks.

Score time is measured in quarters of the *unfolded* score. Each measure becomes one token bar (or
several, when it is longer than the vocabulary's 12 beats), with a time signature that spells its real
length, so REMI's bar arithmetic (bar length = numerator x beat) reproduces the measure exactly:

- an anacrusis (a first measure shorter than its time signature) is padded at its start to a full bar,
  so pickup notes sit on the beats where they are counted;
- other short or long measures (a bar split by a repeat sign, a cadenza bar) get their own time
  signature, re-expressed in 8ths or 16ths when needed (``3.5`` quarters -> ``7/8``);
- ``x/2`` and ``x/1`` are written as quarters (``2/2`` -> ``4/4``), which doubles the position
  resolution of alla-breve music at the cost of spelling its meter differently.

Both the score and the performance are encoded on the same grid, so their bar counts agree by
construction.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .tokenizer import MAX_BEATS_PER_BAR, TIME_SIGNATURE_DENOMINATORS, Vocab


@dataclass(frozen=True)
class Measure:
    """One measure of the unfolded score: [start, end) in quarters and its notated time signature."""

    start: float
    end: float
    numerator: int
    denominator: int


@dataclass(frozen=True)
class TokenBar:
    """One token bar: the score quarters it covers and its time signature / ticks."""

    start_q: float
    length_q: float
    numerator: int
    denominator: int
    start_tick: int
    length_ticks: int


def _frac(x: float) -> Fraction:
    return Fraction(x).limit_denominator(3 * 64)


def _normalise_signature(numerator: int, denominator: int) -> tuple[Fraction, int]:
    """Bring the notated signature into the vocabulary's denominators (as a length in beats)."""
    numerator = max(int(numerator), 1)
    denominator = int(denominator) if denominator and denominator > 0 else 4
    length_q = Fraction(4 * numerator, denominator)
    for d in TIME_SIGNATURE_DENOMINATORS:
        if d >= denominator:
            return length_q * d / 4, d
    return length_q * TIME_SIGNATURE_DENOMINATORS[-1] / 4, TIME_SIGNATURE_DENOMINATORS[-1]


def _express(length_q: Fraction, preferred: int) -> tuple[int, int]:
    """(numerator, denominator) for a bar of ``length_q`` quarters, favouring ``preferred``."""
    for d in TIME_SIGNATURE_DENOMINATORS:
        if d < preferred:
            continue
        n = length_q * d / 4
        if n.denominator == 1 and n >= 1:
            return int(n), d
    finest = TIME_SIGNATURE_DENOMINATORS[-1]
    return max(1, round(float(length_q) * finest / 4)), finest


def _split(numerator: int, chunk: int) -> list[int]:
    """A measure longer than the vocabulary allows -> bars of the notated length and a remainder."""
    if numerator <= MAX_BEATS_PER_BAR:
        return [numerator]
    parts = []
    while numerator > chunk:
        parts.append(chunk)
        numerator -= chunk
    parts.append(numerator)
    return parts


class BarGrid:
    """Token bars in order, with the score-quarter <-> tick map and the tempo beats."""

    def __init__(self, bars: list[TokenBar], ticks_per_quarter: int, vocab: Vocab) -> None:
        if not bars:
            raise ValueError("a bar grid needs at least one bar")
        self.bars = bars
        self.ticks_per_quarter = ticks_per_quarter
        self.vocab = vocab
        self.start_q = np.array([b.start_q for b in bars], dtype=np.float64)
        self.length_q = np.array([b.length_q for b in bars], dtype=np.float64)
        self.start_tick = np.array([b.start_tick for b in bars], dtype=np.int64)
        self.length_ticks = np.array([b.length_ticks for b in bars], dtype=np.int64)
        self.ticks_per_pos = np.array([vocab.ticks_per_position(b.denominator) for b in bars], dtype=np.int64)
        self.end_tick = int(self.start_tick[-1] + self.length_ticks[-1])

    @property
    def num_bars(self) -> int:
        return len(self.bars)

    @classmethod
    def from_measures(cls, measures: list[Measure], vocab: Vocab) -> BarGrid:
        """Token bars for the measures of an unfolded score (see the module docstring)."""
        tpq = vocab.ticks_per_quarter
        bars: list[TokenBar] = []
        tick = 0
        for index, measure in enumerate(measures):
            length = _frac(measure.end - measure.start)
            if length <= 0:
                continue
            nominal_beats, denominator = _normalise_signature(measure.numerator, measure.denominator)
            nominal_q = nominal_beats * 4 / denominator
            start_q = measure.start
            if index == 0 and length < nominal_q and nominal_beats.denominator == 1 and nominal_beats <= 12:
                # Anacrusis: pad the pickup to a full bar so its notes fall on their counted beats.
                start_q = measure.start - float(nominal_q - length)
                length = nominal_q
            numerator, denominator = _express(length, denominator)
            nominal_here = nominal_q * denominator / 4  # the notated bar, in this bar's beats
            chunk = int(nominal_here) if nominal_here.denominator == 1 and 1 <= nominal_here <= 12 else 12
            if _frac(numerator * 4 / denominator) != length:
                # Not expressible exactly (tuplet-length measure): one bar, time scaled within it.
                parts, exact = [numerator], False
            else:
                parts, exact = _split(numerator, chunk), True
            q = start_q
            for n in parts:
                n = min(n, MAX_BEATS_PER_BAR)
                part_q = float(Fraction(4 * n, denominator)) if exact else float(length)
                ticks = n * vocab.ticks_per_beat(denominator)
                bars.append(TokenBar(q, part_q, n, denominator, tick, ticks))
                q += part_q
                tick += ticks
        if not bars:
            raise ValueError("the score has no measures of positive length")
        return cls(bars, tpq, vocab)

    def bar_of_quarter(self, q: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self.start_q, np.asarray(q, dtype=np.float64), side="right") - 1
        return np.clip(index, 0, self.num_bars - 1)

    def quarter_to_tick(self, q: np.ndarray | float) -> np.ndarray:
        """Continuous tick of score time ``q`` (quarters), linear within each bar, clamped to the grid."""
        q = np.asarray(q, dtype=np.float64)
        b = self.bar_of_quarter(q)
        frac = (q - self.start_q[b]) / self.length_q[b]
        ticks = self.start_tick[b] + frac * self.length_ticks[b]
        return np.clip(ticks, 0.0, float(self.end_tick))

    def tick_to_quarter(self, tick: np.ndarray | float) -> np.ndarray:
        tick = np.asarray(tick, dtype=np.float64)
        b = np.clip(np.searchsorted(self.start_tick, tick, side="right") - 1, 0, self.num_bars - 1)
        return self.start_q[b] + (tick - self.start_tick[b]) / self.length_ticks[b] * self.length_q[b]

    def bar_of_tick(self, tick: np.ndarray) -> np.ndarray:
        index = np.searchsorted(self.start_tick, np.asarray(tick), side="right") - 1
        return np.clip(index, 0, self.num_bars - 1)

    def snap(self, tick: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Round continuous ticks to the position grid: (bar index, position index), clamped to the piece."""
        tick = np.clip(np.asarray(tick, dtype=np.float64), 0.0, None)
        bar = self.bar_of_tick(tick)
        pos = np.rint((tick - self.start_tick[bar]) / self.ticks_per_pos[bar]).astype(np.int64)
        positions_in_bar = self.length_ticks[bar] // self.ticks_per_pos[bar]
        overflow = pos >= positions_in_bar
        last_bar = bar == self.num_bars - 1
        # Rounded onto the next bar line: position 0 of the next bar (or the last position of the piece).
        bar = np.where(overflow & ~last_bar, bar + 1, bar)
        pos = np.where(overflow & ~last_bar, 0, pos)
        pos = np.where(overflow & last_bar, positions_in_bar - 1, pos)
        return bar, np.maximum(pos, 0)

    def position_tick(self, bar: np.ndarray, pos: np.ndarray) -> np.ndarray:
        return self.start_tick[bar] + pos * self.ticks_per_pos[bar]

    def beat_ticks(self) -> np.ndarray:
        """Tick of every tempo beat (a compound meter's beat is three of its units) and the end tick."""
        out: list[int] = []
        for bar in self.bars:
            unit = self.vocab.ticks_per_beat(bar.denominator)
            group = 3 if bar.denominator >= 8 and bar.numerator % 3 == 0 and bar.numerator > 3 else 1
            step = unit * group
            out.extend(range(bar.start_tick, bar.start_tick + bar.length_ticks, step))
        out.append(self.end_tick)
        return np.asarray(out, dtype=np.int64)
