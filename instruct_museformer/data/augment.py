"""Augmentation on tokens in the data loader: transposition, global tempo and global dynamics shifts.

A pianist plays a piece a semitone higher, a little faster or a little louder in much the same way, so each
training sample may be moved, on both sides at once (score and performance stay a consistent pair):

* ``transpose``: every Pitch token by s semitones, s uniform in [-N, N], narrowed so that no note leaves the
  vocabulary's pitch range;
* ``tempo``: every Tempo token by t bins (the bins are log-spaced, so a bin is a fixed ratio), clamped at
  the ends of the range;
* ``velocity``: every Velocity token by v bins, clamped.

The shifts are drawn from (seed, epoch, batch index), so a resumed run sees the same samples.
Language-model samples (no source) are shifted the same way on their one side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..tokens.tokenizer import token_value
from .dataset import Sample


def ordered_ids(tokens: Sequence[str], kind: str) -> tuple[np.ndarray, np.ndarray]:
    """(ids sorted by value, values) of the ``kind_value`` tokens; a Duration's value is its length in beats."""
    found = []
    for i, token in enumerate(tokens):
        name, _, value = token.partition("_")
        if name != kind:
            continue
        try:
            number = float(value)
        except ValueError:
            number = token_value(token)  # "beats.pos.res" of a Duration; NaN for what has no value
            if math.isnan(number):
                continue
        found.append((number, i))
    found.sort()
    return np.array([i for _, i in found], dtype=np.int64), np.array([v for v, _ in found], dtype=np.float64)


@dataclass(frozen=True)
class TokenAugmentation:
    """Picklable (DataLoader workers): shift tables built once from the vocabulary's token names."""

    transpose: int
    tempo: int
    velocity: int
    seed: int
    rank: np.ndarray  # (V,) index of an id within its kind's sorted ids, -1 for other tokens
    kind: np.ndarray  # (V,) 0 other, 1 Pitch, 2 Tempo, 3 Velocity
    ids_by_kind: tuple[np.ndarray, ...]  # per kind 1..3: ids sorted by value
    pitch_values: np.ndarray  # (V,) MIDI pitch of Pitch ids, else 0
    epoch: int = 0

    @classmethod
    def build(cls, tokens: Sequence[str], vocab_size: int, *, transpose: int = 0, tempo: int = 0, velocity: int = 0,
              seed: int = 1) -> TokenAugmentation | None:
        if not (transpose or tempo or velocity):
            return None
        rank = np.full(vocab_size, -1, dtype=np.int64)
        kind = np.zeros(vocab_size, dtype=np.int64)
        pitch_values = np.zeros(vocab_size, dtype=np.int64)
        ids_by_kind = []
        for k, name in enumerate(("Pitch", "Tempo", "Velocity"), start=1):
            ids, values = ordered_ids(tokens, name)
            rank[ids] = np.arange(len(ids))
            kind[ids] = k
            if name == "Pitch":
                pitch_values[ids] = values.astype(np.int64)
            ids_by_kind.append(ids)
        return cls(transpose, tempo, velocity, seed, rank, kind, tuple(ids_by_kind), pitch_values)

    def for_epoch(self, epoch: int) -> TokenAugmentation:
        return replace(self, epoch=epoch)

    def __call__(self, samples: list[Sample], batch_index: int) -> list[Sample]:
        rng = np.random.default_rng([self.seed, self.epoch, batch_index])
        return [self._shift(s, rng) for s in samples]

    def _shift(self, sample: Sample, rng: np.random.Generator) -> Sample:
        sides = [sample.target] if sample.source is None else [sample.source, sample.target]
        arrays = [side.numpy() for side in sides]
        pitch_ids = self.ids_by_kind[0]
        shifts = [0, 0, 0]
        if self.transpose and len(pitch_ids):
            pitches = np.concatenate([self.pitch_values[a[self.kind[a] == 1]] for a in arrays])
            if len(pitches):
                low, high = self.pitch_values[pitch_ids[0]], self.pitch_values[pitch_ids[-1]]
                lo = max(-self.transpose, int(low - pitches.min()))
                hi = min(self.transpose, int(high - pitches.max()))
                shifts[0] = int(rng.integers(lo, hi + 1)) if lo <= hi else 0
        shifts[1] = int(rng.integers(-self.tempo, self.tempo + 1)) if self.tempo else 0
        shifts[2] = int(rng.integers(-self.velocity, self.velocity + 1)) if self.velocity else 0
        if not any(shifts):
            return sample
        out = [torch.from_numpy(self._apply(a, shifts)) for a in arrays]
        return Sample(sample.id, None if sample.source is None else out[0], out[-1])

    def _apply(self, ids: np.ndarray, shifts: Sequence[int]) -> np.ndarray:
        out = ids.copy()
        for k, shift in enumerate(shifts, start=1):
            if not shift:
                continue
            table = self.ids_by_kind[k - 1]
            where = self.kind[ids] == k
            ranks = self.rank[ids[where]] + shift
            out[where] = table[np.clip(ranks, 0, len(table) - 1)]
        return out
