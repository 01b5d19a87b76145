"""Training objectives beyond plain cross-entropy, for the expressive (ordinal) token classes.

Tempo, velocity, position (timing) and duration bins are ordered: a velocity 72 predicted for a 76 is
nearly right, a 20 is wrong, but cross-entropy scores both as the same miss. Two levers:

* ``--ordinal-smoothing SIGMA``: the target of an ordinal token is a discrete Gaussian over the bins of its
  class (same token type), centred on the true bin with standard deviation SIGMA bins, cut at 3 SIGMA --
  label smoothing that knows which bins are neighbours. Other tokens keep one-hot targets.
* ``--class-loss-weights Tempo=2,Velocity=2``: each target token's loss is multiplied by the weight of its
  class (default 1), so that the few expressive tokens are not drowned by the many score-note copies.

The reported loss is always the plain next-token NLL, so runs with and without these levers compare; only
the gradient follows the objective. Everything is fixed-shape tensor work (a neighbour table gathered per
target), so a CUDA-graphed step can record it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..tokens.specials import PAD
from ..tokens.tokenizer import token_value

# the classes a weight may name: a token's class is the part of its name before "_" (Pedal and PedalOff are Pedal)
WEIGHT_CLASSES = ("Tempo", "Velocity", "Position", "Duration", "Pedal", "Pitch", "Bar", "TimeSig")
ORDINAL_KINDS = ("Tempo", "Velocity", "Position", "Duration")


def token_class(token: str) -> str:
    kind = token.partition("_")[0]
    return "Pedal" if kind == "PedalOff" else kind


def parse_class_weights(spec: str | None) -> dict[str, float]:
    """``"Tempo=2,Velocity=1.5"`` -> {"Tempo": 2.0, "Velocity": 1.5}; a one-line UserError otherwise."""
    if not spec:
        return {}
    out: dict[str, float] = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, sep, value = part.partition("=")
        if not sep or name not in WEIGHT_CLASSES:
            raise UserError(f"--class-loss-weights {spec!r}: expected CLASS=WEIGHT pairs with CLASS in "
                            f"{', '.join(WEIGHT_CLASSES)}")
        try:
            weight = float(value)
        except ValueError:
            raise UserError(f"--class-loss-weights {spec!r}: {value!r} is not a number") from None
        if not weight >= 0.0:
            raise UserError(f"--class-loss-weights {spec!r}: weights must be >= 0")
        out[name] = weight
    return out


@dataclass
class Objective:
    """Per vocabulary id: the ids of its target distribution and their weights, and its class weight."""

    neighbours: torch.Tensor  # (V, K) long: target ids of each id's soft target (padded with the id itself)
    neighbour_weights: torch.Tensor  # (V, K) float: their probabilities (0 for padding), rows sum to 1
    class_weight: torch.Tensor  # (V,) float

    @classmethod
    def build(cls, tokens: Sequence[str], vocab_size: int, sigma: float = 0.0,
              class_weights: dict[str, float] | None = None) -> Objective:
        class_weights = class_weights or {}
        reach = max(int(math.ceil(3 * sigma)), 0) if sigma > 0 else 0
        width = 2 * reach + 1
        neighbours = torch.arange(vocab_size).unsqueeze(1).repeat(1, width)
        weights = torch.zeros(vocab_size, width)
        weights[:, 0] = 1.0
        weight = torch.ones(vocab_size)
        by_class: dict[str, list[tuple[float, int]]] = {}
        for i, token in enumerate(tokens):
            name = token_class(token)
            weight[i] = class_weights.get(name, 1.0)
            key = token_value(token)  # ordered within a class; NaN for non-ordinal tokens
            if name in ORDINAL_KINDS and not math.isnan(key):
                by_class.setdefault(name, []).append((key, i))
        if reach:
            for members in by_class.values():
                ids = [i for _, i in sorted(members)]
                for rank, i in enumerate(ids):
                    lo, hi = max(rank - reach, 0), min(rank + reach, len(ids) - 1)
                    near = ids[lo : hi + 1]
                    w = torch.tensor([math.exp(-0.5 * ((r - rank) / sigma) ** 2) for r in range(lo, hi + 1)])
                    neighbours[i, : len(near)] = torch.tensor(near)
                    neighbours[i, len(near) :] = i
                    weights[i] = 0.0
                    weights[i, : len(near)] = w / w.sum()
        return cls(neighbours, weights, weight)

    @property
    def is_plain(self) -> bool:
        return self.neighbours.shape[1] == 1 and bool((self.class_weight == 1.0).all())

    def to(self, device: torch.device) -> Objective:
        return Objective(self.neighbours.to(device), self.neighbour_weights.to(device), self.class_weight.to(device))

    def __call__(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(objective, NLL), both summed in nats over non-pad targets of ``logits`` (B, T, V), ``target`` (B, T)."""
        logp = F.log_softmax(logits.float().reshape(-1, logits.size(-1)), dim=-1)  # (N, V)
        flat = target.reshape(-1)
        keep = flat != PAD
        safe = flat.masked_fill(~keep, 0)
        nll = -logp.gather(1, safe[:, None])[:, 0] * keep
        soft = -(logp.gather(1, self.neighbours[safe]) * self.neighbour_weights[safe]).sum(-1)  # (N,)
        objective = (soft * self.class_weight[safe] * keep).sum()
        return objective, nll.sum()


def build_objective(args, tokens: Sequence[str] | None, vocab_size: int) -> Objective | None:
    """The objective ``--ordinal-smoothing`` / ``--class-loss-weights`` ask for; None for plain cross-entropy."""
    sigma = float(getattr(args, "ordinal_smoothing", 0.0) or 0.0)
    weights = parse_class_weights(getattr(args, "class_loss_weights", None))
    if sigma < 0:
        raise UserError(f"--ordinal-smoothing {sigma}: must be >= 0 (bins)")
    if sigma == 0 and not weights:
        return None
    if tokens is None:
        raise UserError("--ordinal-smoothing / --class-loss-weights need token names: a tokenizer.json in the "
                        "data-bin (imf preprocess copies it there)")
    objective = Objective.build(tokens, vocab_size, sigma, weights)
    return None if objective.is_plain else objective
