"""fairseq's optimisation rules: inverse_sqrt values, its Adam update, the dynamic loss scaler."""

from __future__ import annotations

import math

import pytest
import torch

from instruct_museformer.train.optim import (
    DynamicLossScaler,
    FairseqAdam,
    InverseSqrtSchedule,
    default_scale_window,
    grad_norm_and_clip,
)


def test_inverse_sqrt_matches_fairseq_formula() -> None:
    s = InverseSqrtSchedule(5e-4, 16000)  # --warmup-init-lr -1 -> 0
    assert s.lr_at(0) == 0.0  # the first update runs at the initial rate, as in fairseq
    assert s.lr_at(8000) == pytest.approx(2.5e-4)
    assert s.lr_at(16000) == pytest.approx(5e-4)
    assert s.lr_at(64000) == pytest.approx(2.5e-4)  # lr * sqrt(16000 / 64000)
    assert s.lr_at(1_000_000) == pytest.approx(5e-4 * math.sqrt(16000 / 1e6))
    warm = InverseSqrtSchedule(1e-3, 10, warmup_init_lr=1e-7)
    assert warm.lr_at(0) == pytest.approx(1e-7) and warm.lr_at(5) == pytest.approx(1e-7 + 5 * (1e-3 - 1e-7) / 10)
    assert InverseSqrtSchedule(1e-3, 0).lr_at(4) == pytest.approx(5e-4)


def test_fairseq_adam_one_step_by_hand() -> None:
    p = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    p.grad = torch.tensor([0.5, 0.25])
    lr, (b1, b2), eps, wd = 0.1, (0.9, 0.98), 1e-9, 0.01
    FairseqAdam([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd).step()
    g = torch.tensor([0.5, 0.25])
    m, v = (1 - b1) * g, (1 - b2) * g * g
    step = lr * math.sqrt(1 - b2) / (1 - b1)
    old = torch.tensor([1.0, -2.0])
    expected = old - wd * lr * old - step * m / (v.sqrt() + eps)
    assert torch.allclose(p.detach(), expected, atol=1e-7)


def test_fairseq_adam_differs_from_adamw_eps_placement() -> None:
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a = FairseqAdam([a], lr=1e-2, betas=(0.9, 0.98), eps=1e-2, weight_decay=0.0)
    opt_b = torch.optim.AdamW([b], lr=1e-2, betas=(0.9, 0.98), eps=1e-2, weight_decay=0.0)
    for _ in range(3):
        g = torch.randn(5)
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    assert not torch.allclose(a, b)  # a large eps makes the eps placement visible


def test_adam_state_round_trip() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = FairseqAdam([p], lr=0.1)
    p.grad = torch.ones(3)
    opt.step()
    tensors, steps = opt.state_tensors({p: "w"})
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = FairseqAdam([q], lr=0.1)
    opt2.load_state_tensors(tensors, steps, {"w": q})
    p.grad, q.grad = torch.full((3,), 0.3), torch.full((3,), 0.3)
    opt.step()
    opt2.step()
    assert torch.equal(p, q)


def test_loss_scaler_overflow_halves_and_growth_after_window() -> None:
    scaler = DynamicLossScaler(init_scale=128, scale_window=3)
    assert scaler.has_overflow(float("inf")) and scaler.has_overflow(float("nan")) and not scaler.has_overflow(2.0)
    scaler.update(True)
    assert scaler.scale == 64
    scaler.update(False)
    scaler.update(False)
    assert scaler.scale == 64
    scaler.update(False)  # third good iteration since the overflow
    assert scaler.scale == 128
    for _ in range(3):
        scaler.update(False)
    assert scaler.scale == 256
    state = scaler.state_dict()
    other = DynamicLossScaler()
    other.load_state_dict(state)
    assert other.state_dict() == state


def test_loss_scaler_minimum_raises() -> None:
    scaler = DynamicLossScaler(init_scale=1.0, scale_window=100, min_scale=0.3)
    scaler.update(True)
    with pytest.raises(FloatingPointError, match="minimum loss scale"):
        scaler.update(True)


def test_default_window_and_grad_norm() -> None:
    assert default_scale_window(1, 1) == 16384 and default_scale_window(4, 2) == 2048
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    assert float(grad_norm_and_clip([p], 0.0)) == pytest.approx(5.0)
    assert torch.equal(p.grad, torch.tensor([3.0, 4.0]))
    assert float(grad_norm_and_clip([p], 1.0)) == pytest.approx(5.0)
    assert float(p.grad.norm()) == pytest.approx(1.0, rel=1e-5)
