"""Training objectives for ordinal tokens: soft targets over neighbouring bins, class weights."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from instruct_museformer.errors import UserError
from instruct_museformer.train.objective import Objective, parse_class_weights
from instruct_museformer.train.options import parse_train_args

TOKENS = ["PAD_None", "BOS_None", "EOS_None", "MASK_None", "Bar_None", "Velocity_40", "Velocity_20", "Velocity_60",
          "Velocity_80", "Pitch_60", "Pitch_62"]


def test_plain_objective_is_fairseq_cross_entropy():
    objective = Objective.build(TOKENS, len(TOKENS))
    logits = torch.randn(2, 5, len(TOKENS), generator=torch.Generator().manual_seed(0))
    target = torch.tensor([[5, 9, 4, 2, 0], [6, 7, 8, 10, 2]])
    loss, nll = objective(logits, target)
    expected = F.cross_entropy(logits.reshape(-1, len(TOKENS)), target.reshape(-1), ignore_index=0, reduction="sum")
    assert torch.allclose(loss, expected) and torch.allclose(nll, expected)
    assert objective.is_plain


def _target_distribution(objective: Objective, token_id: int) -> dict[int, float]:
    out: dict[int, float] = {}
    ids, weights = objective.neighbours[token_id].tolist(), objective.neighbour_weights[token_id].tolist()
    for i, w in zip(ids, weights, strict=True):
        out[i] = out.get(i, 0.0) + w
    return {i: w for i, w in out.items() if w > 0}


def test_ordinal_smoothing_spreads_over_neighbouring_bins_of_the_same_class_in_value_order():
    objective = Objective.build(TOKENS, len(TOKENS), sigma=1.0)
    # Velocity_40 (id 5) sits between 20 (id 6) and 60 (id 7); 80 (id 8) is two bins away
    row = _target_distribution(objective, 5)
    g1, g2 = math.exp(-0.5), math.exp(-2.0)
    total = 1 + 2 * g1 + g2
    assert row[5] == pytest.approx(1 / total) and row[6] == pytest.approx(g1 / total)
    assert row[7] == pytest.approx(g1 / total) and row[8] == pytest.approx(g2 / total)
    assert set(row) <= {5, 6, 7, 8}  # never a Pitch or a special
    assert _target_distribution(objective, 9) == {9: 1.0}  # non-ordinal tokens keep one-hot targets
    logits = torch.zeros(1, 1, len(TOKENS))
    logits[0, 0, 6] = 3.0  # confident in the neighbouring bin
    far = logits.clone()
    far[0, 0, 8] = 3.0 - logits[0, 0, 6]
    far[0, 0, 6] = 0.0
    far[0, 0, 10] = 3.0  # as confident, in a Pitch
    near_loss, near_nll = objective(logits, torch.tensor([[5]]))
    far_loss, far_nll = objective(far, torch.tensor([[5]]))
    assert near_nll == pytest.approx(float(far_nll))  # plain NLL cannot tell them apart
    assert near_loss < far_loss  # the objective can


def test_class_weights_scale_each_targets_loss():
    objective = Objective.build(TOKENS, len(TOKENS), class_weights={"Velocity": 3.0})
    logits = torch.randn(1, 2, len(TOKENS), generator=torch.Generator().manual_seed(1))
    loss, nll = objective(logits, torch.tensor([[5, 9]]))
    logp = torch.log_softmax(logits[0], -1)
    assert float(loss) == pytest.approx(float(-3 * logp[0, 5] - logp[1, 9]), rel=1e-5)
    assert float(nll) == pytest.approx(float(-logp[0, 5] - logp[1, 9]), rel=1e-5)


def test_bad_class_weights_are_one_line_errors():
    assert parse_class_weights("Tempo=2, Velocity=1.5") == {"Tempo": 2.0, "Velocity": 1.5}
    for spec in ("Loudness=2", "Tempo", "Tempo=x", "Tempo=-1"):
        with pytest.raises(UserError, match="--class-loss-weights"):
            parse_class_weights(spec)
    args = parse_train_args(["data-bin", "--batch-size", "1", "--ordinal-smoothing", "1",
                             "--class-loss-weights", "Tempo=2"])
    assert args.ordinal_smoothing == 1.0 and args.class_loss_weights == "Tempo=2"
