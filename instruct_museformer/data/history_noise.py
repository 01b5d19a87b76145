"""Noise in the history the decoder reads, never in the targets it learns.

Teacher-forced, the model reads the pianist's own tempo, velocity and duration tokens before each prediction,
and the cheapest way to predict the next one is to repeat the last (docs/model.md, "Where the expression is
lost": the previous value alone scores r 0.57 for tempo, 0.45 for velocity). Rendering, it reads its own
samples instead, a few bins off the pianist's, and what it leaned on carries each error into the notes after
it: teacher-forced velocity r 0.8 becomes 0.3 free-running. Moving a share of the ordinal tokens of the
decoder input by a few bins in training -- the targets stay the pianist's -- makes the history a weaker cue
and the score a stronger one; ``imf diagnose --history-noise P`` measures how much a model loses when its
history is off in the same way.

Only Tempo, Velocity and Duration tokens move, each within its own kind: a moved token keeps its bar and beat
ids (Position tokens, which set the beat ids, are left alone). The moves are drawn from (seed, epoch, batch
index), so a resumed run sees the same batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..errors import UserError
from .augment import ordered_ids
from .batch import Batch

NOISY_KINDS = ("Tempo", "Velocity", "Duration")


@dataclass(frozen=True)
class HistoryNoise:
    """Picklable (DataLoader workers): per vocabulary id, its kind and its rank among that kind's sorted ids."""

    probability: float
    bins: int
    seed: int
    kind: np.ndarray  # (V,) 0 other, k >= 1: NOISY_KINDS[k - 1]
    rank: np.ndarray  # (V,) index of an id within its kind's ids sorted by value, -1 for other tokens
    ids_by_kind: tuple[np.ndarray, ...]  # per kind: ids sorted by value
    epoch: int = 0

    @staticmethod
    def check(probability: float, bins: int) -> None:
        """Refuses a probability outside [0, 1] or fewer than 1 bin (callable before anything is loaded)."""
        if not 0.0 <= probability <= 1.0 or bins < 1:
            raise UserError(f"--history-noise {probability} --history-noise-bins {bins}: expected a probability "
                            "in [0, 1] and at least 1 bin")

    @classmethod
    def build(cls, tokens: Sequence[str], vocab_size: int, *, probability: float, bins: int = 2,
              seed: int = 1) -> HistoryNoise | None:
        """The noise, or None for probability 0 (after ``check``)."""
        cls.check(probability, bins)
        if probability == 0:
            return None
        kind = np.zeros(vocab_size, dtype=np.int64)
        rank = np.full(vocab_size, -1, dtype=np.int64)
        ids_by_kind = []
        for k, name in enumerate(NOISY_KINDS, start=1):
            ids, _ = ordered_ids(tokens[:vocab_size], name)
            kind[ids] = k
            rank[ids] = np.arange(len(ids))
            ids_by_kind.append(ids)
        return cls(probability, bins, seed, kind, rank, tuple(ids_by_kind))

    def for_epoch(self, epoch: int) -> HistoryNoise:
        return replace(self, epoch=epoch)

    def corrupt(self, tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A copy of ``tokens`` (any shape) with each noisy-kind token moved, with the probability, by 1 to
        ``bins`` bins up or down within its kind (clamped at the ends of the range)."""
        out = tokens.copy()
        kinds = self.kind[tokens]
        chosen = (kinds > 0) & (rng.random(tokens.shape) < self.probability)
        if not chosen.any():
            return out
        steps = rng.integers(1, self.bins + 1, size=int(chosen.sum())) * rng.choice((-1, 1), size=int(chosen.sum()))
        ranks = self.rank[tokens[chosen]] + steps
        chosen_kinds = kinds[chosen]
        moved = np.empty_like(ranks)
        for k, ids in enumerate(self.ids_by_kind, start=1):
            where = chosen_kinds == k
            moved[where] = ids[np.clip(ranks[where], 0, len(ids) - 1)]
        out[chosen] = moved
        return out

    def __call__(self, batch: Batch, batch_index: int) -> Batch:
        """``batch`` with its decoder input corrupted; targets, source and layouts unchanged."""
        rng = np.random.default_rng([self.seed, self.epoch, batch_index, 0x4E01])
        tokens = torch.from_numpy(self.corrupt(batch.prev_output.tokens.numpy(), rng))
        return replace(batch, prev_output=replace(batch.prev_output, tokens=tokens))
