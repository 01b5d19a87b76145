"""Optimisation as fairseq 0.10.2 does it: its Adam, inverse_sqrt, dynamic loss scaling, grad-norm clipping.

These are re-derived from fairseq's documented behaviour, not copied. They differ from torch's stock
classes in small ways that change a loss curve, which is why they are here:

* fairseq's Adam adds ``eps`` to ``sqrt(v)`` *before* bias correction and applies weight decay as
  ``p -= lr * wd * p`` (decoupled, on the old weights) -- torch.optim.AdamW divides by ``sqrt(v_hat)+eps``.
* inverse_sqrt warms up linearly from ``--warmup-init-lr`` (0 when negative) and the first update runs
  at that initial rate, because fairseq sets the rate for update ``n + 1`` after update ``n``.
* The loss scaler halves on overflow (the update is skipped) and doubles after ``scale_window``
  consecutive good steps; fairseq's window defaults to ``2**14 / world_size / update_freq``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


class FairseqAdam(torch.optim.Optimizer):
    """Adam with fairseq's update rule and decoupled weight decay (``p -= lr * wd * p``)."""

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: D401 - torch's signature
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float()
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = exp_avg_sq.sqrt().add_(eps)
                bias1 = 1 - beta1 ** state["step"]
                bias2 = 1 - beta2 ** state["step"]
                step_size = lr * math.sqrt(bias2) / bias1
                data = p.data.float() if p.dtype != torch.float32 else p.data
                if wd != 0:
                    data.add_(data, alpha=-wd * lr)
                data.addcdiv_(exp_avg, denom, value=-step_size)
                if data is not p.data:
                    p.data.copy_(data)
        return loss

    def set_lr(self, lr: float) -> None:
        for group in self.param_groups:
            group["lr"] = lr

    def get_lr(self) -> float:
        return float(self.param_groups[0]["lr"])

    def state_tensors(self, names: dict[torch.nn.Parameter, str]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """(moment tensors keyed 'exp_avg.<param>' / 'exp_avg_sq.<param>', step counts keyed by param name)."""
        tensors: dict[str, torch.Tensor] = {}
        steps: dict[str, int] = {}
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if not state:
                    continue
                name = names[p]
                tensors[f"exp_avg.{name}"] = state["exp_avg"].detach().cpu().contiguous()
                tensors[f"exp_avg_sq.{name}"] = state["exp_avg_sq"].detach().cpu().contiguous()
                steps[name] = int(state["step"])
        return tensors, steps

    def load_state_tensors(
        self, tensors: dict[str, torch.Tensor], steps: dict[str, int], params: dict[str, torch.nn.Parameter]
    ) -> None:
        """Inverse of :meth:`state_tensors`; parameters without saved state start fresh."""
        self.state.clear()
        for name, step in steps.items():
            p = params[name]
            self.state[p] = {
                "step": int(step),
                "exp_avg": tensors[f"exp_avg.{name}"].to(p.device, torch.float32).clone(),
                "exp_avg_sq": tensors[f"exp_avg_sq.{name}"].to(p.device, torch.float32).clone(),
            }


class InverseSqrtSchedule:
    """fairseq's inverse_sqrt: linear warm-up to ``lr``, then ``lr * sqrt(warmup / num_updates)``.

    ``lr_at(n)`` is the rate used by the update that follows ``n`` completed updates.
    """

    def __init__(self, lr: float, warmup_updates: int, warmup_init_lr: float = -1.0) -> None:
        self.lr = lr
        self.warmup_updates = warmup_updates
        if warmup_init_lr < 0:
            warmup_init_lr = 0.0 if warmup_updates > 0 else lr
        self.warmup_init_lr = warmup_init_lr
        self.lr_step = (lr - warmup_init_lr) / warmup_updates if warmup_updates > 0 else 0.0
        self.decay_factor = lr * math.sqrt(max(warmup_updates, 0))

    def lr_at(self, num_updates: int) -> float:
        if num_updates < self.warmup_updates:
            return self.warmup_init_lr + num_updates * self.lr_step
        if self.warmup_updates <= 0:
            # fairseq's formula gives 0 here (sqrt(0) * ...); decay from lr instead.
            return self.lr / math.sqrt(max(num_updates, 1))
        return self.decay_factor * num_updates**-0.5


class FixedSchedule:
    """fairseq's ``fixed`` scheduler without per-epoch lists or shrinking: a constant rate (with warm-up)."""

    def __init__(self, lr: float, warmup_updates: int = 0) -> None:
        self.lr = lr
        self.warmup_updates = warmup_updates

    def lr_at(self, num_updates: int) -> float:
        if self.warmup_updates > 0 and num_updates < self.warmup_updates:
            return self.lr * (num_updates + 1) / self.warmup_updates
        return self.lr


class DynamicLossScaler:
    """fairseq's DynamicLossScaler: multiply the loss by ``scale``; on overflow skip the step and halve.

    After ``scale_window`` iterations without overflow the scale doubles. ``tolerance`` is the
    fraction of overflowing iterations since the last rescale that is tolerated before halving
    (0 = halve on every overflow). Falling below ``min_scale`` raises FloatingPointError, as fairseq's
    "Minimum loss scale reached" does.
    """

    def __init__(
        self,
        init_scale: float = 2.0**7,
        scale_factor: float = 2.0,
        scale_window: int = 2000,
        tolerance: float = 0.0,
        threshold: float | None = None,
        min_scale: float = 1e-4,
    ) -> None:
        self.scale = float(init_scale)
        self.scale_factor = scale_factor
        self.scale_window = scale_window
        self.tolerance = tolerance
        self.threshold = threshold
        self.min_scale = min_scale
        self.iter = 0
        self.last_overflow_iter = -1
        self.last_rescale_iter = 0
        self.overflows_since_rescale = 0

    @staticmethod
    def has_overflow(grad_norm: float | torch.Tensor) -> bool:
        value = float(grad_norm)
        return math.isinf(value) or math.isnan(value)

    def update(self, overflow: bool) -> None:
        """Record one iteration's outcome and adapt the scale (call after every optimizer attempt)."""
        since_rescale = self.iter - self.last_rescale_iter
        if overflow:
            self.last_overflow_iter = self.iter
            self.overflows_since_rescale += 1
            if self.overflows_since_rescale / max(since_rescale, 1) >= self.tolerance:
                self.scale /= self.scale_factor
                if self.threshold is not None:
                    self.scale = max(self.scale, self.threshold)
                self.last_rescale_iter = self.iter
                self.overflows_since_rescale = 0
        elif (self.iter - self.last_overflow_iter) % self.scale_window == 0:
            self.scale *= self.scale_factor
            self.last_rescale_iter = self.iter
        self.iter += 1
        if overflow and self.scale < self.min_scale:
            raise FloatingPointError(
                f"minimum loss scale reached ({self.min_scale}); the loss is probably exploding "
                "(lower --lr or use --bf16)"
            )

    def state_dict(self) -> dict[str, float | int]:
        return {
            "scale": self.scale,
            "iter": self.iter,
            "last_overflow_iter": self.last_overflow_iter,
            "last_rescale_iter": self.last_rescale_iter,
            "overflows_since_rescale": self.overflows_since_rescale,
        }

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.scale = float(state["scale"])
        self.iter = int(state["iter"])
        self.last_overflow_iter = int(state["last_overflow_iter"])
        self.last_rescale_iter = int(state["last_rescale_iter"])
        self.overflows_since_rescale = int(state["overflows_since_rescale"])


def default_scale_window(world_size: int, update_freq: int) -> int:
    """fairseq: ``2**14 / world_size / update_freq`` when --fp16-scale-window is not given."""
    return max(1, int(2**14 / world_size / update_freq))


def grad_norm_and_clip(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Total L2 norm of the gradients (inf/nan on overflow); clip in place to ``max_norm`` when > 0."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]))
    if max_norm > 0 and torch.isfinite(norm):
        coef = (max_norm / (norm + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.to(g.dtype))
    return norm
