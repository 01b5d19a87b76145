"""Tempo relative to the metronome mark: in every bar, both sides' Tempo tokens moved so that the mark in force
sits at one fixed bin.

Why: the models up to L4 infer a piece's tempo from its notes and do not read its mark. Teacher-forced, moving a
score's mark by +-8 bins moves their expected opening tempo by -0.12 to -0.07 of that, and their expected
opening tempo is off the pianist's by a factor of 1.5 (mean |log2| 0.58-0.71), where the mark alone is off by
1.18 (0.235); training with the mark in every chunk (``--carry-markings``) or with tempo augmentation of +-6
bins did not change that (docs/model.md, section 7). With ``--tempo-relative-to-mark`` the model instead
predicts the tempo as a ratio to the mark in force (a Tempo bin = a fixed ratio: the bins are log-spaced), and
the renderer multiplies it back: a marked piece is played around its mark, and a new mark (an Adagio after an
Allegro) changes the tempo at its bar without the model having to read it.

The mark in force at bar k: the Tempo at position 0 of bar k, else the last score Tempo before it (a score's
first bar always has one: its first mark, or the tokenizer's stand-in for a score without one,
``DEFAULT_SCORE_TEMPO``, which is the reference bin, so a score without marks is left as it is). Bins past
either end of the range are clamped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UserError
from ..tokens.specials import BAR


@dataclass(frozen=True)
class MarkRelativeTempo:
    """Picklable (DataLoader workers): Tempo ranks by value, built once from the vocabulary's token names."""

    rank: np.ndarray  # (V,) index of a Tempo id among the Tempo ids sorted by value, -1 for other tokens
    ids: np.ndarray  # Tempo ids sorted by value
    reference: int  # rank of the reference bin (the score tokenizer's tempo for a score without a mark)
    position_zero: int
    time_signature: np.ndarray  # (V,) bool

    @classmethod
    def build(cls, tokens: Sequence[str], vocab_size: int | None = None) -> MarkRelativeTempo:
        from ..tokens.score import DEFAULT_SCORE_TEMPO
        from ..tokens.tokenizer import nearest_tempo_bin
        from .augment import ordered_ids  # (augment imports the dataset, which imports this module)

        ids, values = ordered_ids(tokens, "Tempo")
        if ids.size < 2 or "Position_0" not in tokens:
            raise UserError("--tempo-relative-to-mark: the vocabulary has no Tempo tokens or no Position_0")
        size = max(len(tokens), vocab_size or 0)
        rank = np.full(size, -1, dtype=np.int64)
        rank[ids] = np.arange(len(ids))
        reference = nearest_tempo_bin(values, DEFAULT_SCORE_TEMPO)
        time_signature = np.zeros(size, dtype=bool)
        time_signature[[i for i, t in enumerate(tokens) if t.startswith("TimeSig_")]] = True
        return cls(rank, ids, reference, list(tokens).index("Position_0"), time_signature)

    def bar_shifts(self, score: np.ndarray | Sequence[int]) -> np.ndarray:
        """(bars,) the rank shift of each bar of ``score`` (a bar ends with Bar; a trailing unclosed one counts):
        the reference minus the rank of the mark in force at its start (0 before any mark)."""
        s = np.asarray(score, dtype=np.int64)
        starts = np.concatenate([[0], np.flatnonzero(s == BAR) + 1])
        starts = starts[(starts < len(s)) | (starts == 0)]
        is_tempo = self.rank[s] >= 0
        # the last Tempo token at or before each index (-1: none yet)
        last = np.maximum.accumulate(np.where(is_tempo, np.arange(len(s)), -1)) if len(s) else s
        shifts = np.zeros(len(starts), dtype=np.int64)
        for k, j in enumerate(starts.tolist()):
            head = j + 1 if j < len(s) and self.time_signature[s[j]] else j
            if head + 1 < len(s) and s[head] == self.position_zero and is_tempo[head + 1]:
                at = head + 1  # a mark at this bar's position 0
            else:
                at = int(last[j - 1]) if j > 0 else -1
            if at >= 0:
                shifts[k] = self.reference - self.rank[s[at]]
        return shifts

    def move(self, tokens: Sequence[int], shifts: np.ndarray, sign: int = 1) -> list[int]:
        """``tokens`` (bars in order, bar j of them shifted by ``sign * shifts[j]``; tokens after the last shift's
        bar take the last shift) with every Tempo token moved: +1 mark -> relative, -1 relative -> mark."""
        t = np.asarray(tokens, dtype=np.int64)
        if not len(t) or not len(shifts):
            return t.tolist()
        bar = np.concatenate([[0], np.cumsum(t[:-1] == BAR)]).clip(max=len(shifts) - 1)
        rank = self.rank[t]
        moved = self.ids[np.clip(rank + sign * np.asarray(shifts)[bar], 0, len(self.ids) - 1)]
        return np.where(rank >= 0, moved, t).tolist()
