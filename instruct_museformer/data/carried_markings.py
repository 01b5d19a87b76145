"""The score markings in force where a training chunk or a rendering window starts, written into its first bar.

A pianist who starts reading at bar 40 still knows the piece is an Adagio at quarter = 60, in piano. A
score's metronome mark, tempo word and dynamic are written once, at the bar where they start
(docs/tokens.md), so a chunk cut from the middle of a piece (``imf train --chunk-train``) had none of
them: only a piece's first chunk told the model the marked tempo, and the model learnt to guess the
global tempo from the notes (docs/model.md, section 6). With ``--carry-markings`` every chunk after the
first, and every rendering window after the first, starts with the last metronome mark (``Tempo_t``), tempo
word (``TempoWord_*``) and dynamic level (``Dyn_pppp`` .. ``Dyn_ffff``) seen before it, at position 0 of its
first bar in the score tokenizer's order -- as if the score had been written from there. A family the first
bar sets at position 0 itself keeps the bar's own value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..tokens.markings import DIRECTION_TOKENS, DYNAMIC_LEVELS
from ..tokens.specials import BAR

# families of the markings carried, in the order they are written at a position: Tempo, then directions by id
METRONOME, TEMPO_WORD, DYNAMIC = 1, 2, 3
FAMILIES = (METRONOME, TEMPO_WORD, DYNAMIC)
MAX_CARRIED_TOKENS = len(FAMILIES) + 1  # and a Position_0 where the bar had none


def _family_of(token: str) -> int:
    kind, _, value = token.partition("_")
    if kind == "Tempo":
        return METRONOME
    if kind == "TempoWord":
        return TEMPO_WORD
    if kind == "Dyn" and value in DYNAMIC_LEVELS:
        return DYNAMIC
    return 0


@dataclass(frozen=True)
class MarkingsInForce:
    """Picklable (DataLoader workers): per-id tables built once from the vocabulary's token names."""

    family: np.ndarray  # (V,) 0, or the family a carried marking belongs to
    direction: np.ndarray  # (V,) bool: a position-level marking (written after the Tempo, sorted by id)
    time_signature: np.ndarray  # (V,) bool
    position_zero: int

    @classmethod
    def build(cls, tokens: Sequence[str], vocab_size: int | None = None) -> MarkingsInForce:
        """From the token names of a score-markings tokenizer; UserError for a vocabulary without them."""
        size = max(len(tokens), vocab_size or 0)
        family = np.zeros(size, dtype=np.int8)
        direction = np.zeros(size, dtype=bool)
        time_signature = np.zeros(size, dtype=bool)
        directions = set(DIRECTION_TOKENS)
        for i, token in enumerate(tokens):
            family[i] = _family_of(token)
            direction[i] = token in directions
            time_signature[i] = token.startswith("TimeSig_")
        if "Position_0" not in tokens or not (family == TEMPO_WORD).any():
            raise UserError("--carry-markings: the tokenizer writes no score markings (no TempoWord tokens or no "
                            "Position_0); tokenize with this project's score tokenizer")
        return cls(family, direction, time_signature, list(tokens).index("Position_0"))

    def in_force(self, score: np.ndarray | Sequence[int], upto: int) -> list[int]:
        """The last id of each family in ``score[:upto]``, in the order they are written."""
        before = np.asarray(score[:upto], dtype=np.int64)
        families = self.family[before]
        carried = []
        for fam in FAMILIES:
            where = np.flatnonzero(families == fam)
            if where.size:
                carried.append(int(before[where[-1]]))
        return carried

    def open_bar(self, bar: Sequence[int], carried: Sequence[int]) -> list[int]:
        """``bar`` (a score bar's ids) with the ``carried`` markings at its position 0."""
        bar = [int(t) for t in bar]
        if not carried:
            return bar
        head = 1 if bar and self.time_signature[bar[0]] else 0
        if head < len(bar) and bar[head] == self.position_zero:
            # Position_0 [Tempo] direction*: merge the carried markings into this header
            end = head + 1
            while end < len(bar) and (self.family[bar[end]] == METRONOME or self.direction[bar[end]]):
                end += 1
            present = bar[head + 1 : end]
        else:
            end, present = head, []
        own = {int(self.family[t]) for t in present}
        merged = present + [t for t in carried if int(self.family[t]) not in own]
        tempo = [t for t in merged if self.family[t] == METRONOME]
        rest = sorted(t for t in merged if self.family[t] != METRONOME)
        return bar[:head] + [self.position_zero, *tempo, *rest] + bar[end:]

    def carry_into(self, score: np.ndarray | Sequence[int], start: int, window: Sequence[int]) -> list[int]:
        """``window`` (tokens of ``score`` from index ``start``, a bar start) with the markings in force before
        ``start`` written into its first bar."""
        window = [int(t) for t in window]
        carried = self.in_force(score, start) if start > 0 else []
        if not carried:
            return window
        first_end = window.index(BAR) + 1 if BAR in window else len(window)
        return self.open_bar(window[:first_end], carried) + window[first_end:]
