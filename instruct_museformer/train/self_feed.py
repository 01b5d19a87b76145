"""Training on the history a render writes: the model's own expected bins as the decoder input.

Teacher-forced, the model reads the pianist's tempo and velocity before each prediction. A render with the
default decoding (`imf render --ordinal mean`) writes, for each Tempo and Velocity token, the bin nearest the
mean of the model's distribution, and reads that back: a history flatter than any performance, which the model
continues (docs/model.md, section 9: the level is set in the first notes and kept). ``--self-feed P`` trains on
that history: a first pass without gradients takes the model's own expected bins, which replace a share P of
the decoder input's Tempo/Velocity tokens; the second pass learns the pianist's tokens from that input (parallel
scheduled sampling, Duckworth et al. 2019, with the render's pick instead of a sample).

Fixed-shape tensor work only, so the whole step can still be captured as a CUDA graph; the first pass runs in
training mode (dropout on), as the graph records it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from ..data.augment import ordered_ids
from ..data.batch import Batch
from ..errors import UserError
from ..tokens.tokenizer import token_value

SELF_FEED_KINDS = ("Tempo", "Velocity")
RENDER_TOP_K = 8  # `imf render`'s default --sampling-topk: its mean is taken over the top 8 bins


@dataclass(frozen=True)
class SelfFeed:
    probability: float
    kind: torch.Tensor  # (V,) long: 0 other, k >= 1: kinds[k - 1]
    value: torch.Tensor  # (V,) float: a bin's value as the render orders it (log qpm, velocity; 0 for others)
    members: torch.Tensor  # (K + 1, V) bool: row k the ids of kind k (row 0 empty)
    top_k: int = RENDER_TOP_K

    @staticmethod
    def check(probability: float) -> None:
        """Refuses a probability outside [0, 1] (callable before anything is loaded)."""
        if not 0.0 <= probability <= 1.0:
            raise UserError(f"--self-feed {probability}: expected a probability in [0, 1]")

    @classmethod
    def build(cls, tokens: Sequence[str], vocab_size: int, *, probability: float,
              kinds: Sequence[str] = SELF_FEED_KINDS) -> SelfFeed | None:
        """The self-feed of the ``kinds`` tokens the vocabulary has, or None for probability 0."""
        cls.check(probability)
        if probability == 0:
            return None
        kind = torch.zeros(vocab_size, dtype=torch.long)
        value = torch.zeros(vocab_size)
        members = torch.zeros(len(kinds) + 1, vocab_size, dtype=torch.bool)
        for k, name in enumerate(kinds, start=1):
            ids, _ = ordered_ids(tokens[:vocab_size], name)
            ids_t = torch.from_numpy(ids)
            kind[ids_t], members[k, ids_t] = k, True
            value[ids_t] = torch.tensor([token_value(tokens[i]) for i in ids])
        if not bool(kind.any()):
            raise UserError(f"--self-feed: the vocabulary has no {' or '.join(kinds)} tokens")
        return cls(probability, kind, value, members)

    def to(self, device: torch.device) -> SelfFeed:
        return replace(self, kind=self.kind.to(device), value=self.value.to(device),
                       members=self.members.to(device))

    def expected_bins(self, logits: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
        """(B, T) ids: at each position, of that kind's top-k bins in ``logits`` (B, T, V), the one nearest
        their mean value, as `imf render --ordinal mean` picks it; arbitrary where ``kinds`` is 0."""
        own = self.members[kinds]  # (B, T, V)
        x = logits.float().masked_fill(~own, float("-inf"))
        top, at = x.topk(min(self.top_k, x.shape[-1]), dim=-1)  # (B, T, k)
        probs = torch.softmax(top, dim=-1).nan_to_num(0.0)  # a row of -inf (kind 0) gives NaN: zeroed
        values = self.value[at]  # (B, T, k)
        mean = (probs * values).sum(-1, keepdim=True)
        distance = (values - mean).abs().masked_fill(top == float("-inf"), float("inf"))
        return at.gather(-1, distance.argmin(-1, keepdim=True)).squeeze(-1)

    def feed(self, batch: Batch, logits: torch.Tensor) -> Batch:
        """``batch`` with a share of its decoder input's Tempo/Velocity tokens replaced by the model's expected
        bins from ``logits`` (the first pass over ``batch``); targets, source and layouts unchanged."""
        prev, target = batch.prev_output.tokens, batch.target  # (B, T) each
        kinds = self.kind[target]
        # target t is read as input t + 1; only where the input is that target (a chunk's first token is not)
        chosen = (kinds[:, :-1] > 0) & (prev[:, 1:] == target[:, :-1])
        chosen &= torch.rand(chosen.shape, device=chosen.device) < self.probability
        picked = self.expected_bins(logits[:, :-1], kinds[:, :-1])
        tokens = prev.clone()
        tokens[:, 1:] = torch.where(chosen, picked, prev[:, 1:])
        return replace(batch, prev_output=replace(batch.prev_output, tokens=tokens))
