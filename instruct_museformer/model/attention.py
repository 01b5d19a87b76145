"""Museformer's two-step v2s1 attention, bar-organised cross-attention, and the two kernels behind them.

``attend`` is the only place that computes attention. ``reference``: an explicit boolean mask from the
layout's predicate and a dense softmax (ground truth, any device, supports attention dropout).
``flex``: torch's FlexAttention with the layout's BlockMask (compiled on CUDA, eager elsewhere). Both read
the same ``AttentionLayout``, so they cannot disagree about who sees whom. FlexAttention has no dropout on
the attention probabilities, so on the flex path ``attention_dropout`` is not applied (a warning says so
once); residual and FFN dropout are unaffected.

K/V projections are separate methods (``reg_kv``, ``sum_kv2``, ``CrossAttention.memory_kv``) so that
cached decoding can reuse precomputed keys and values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .masks import AttentionLayout

_FLEX: dict[str, Callable[..., Any]] = {}
_WARNED_DROPOUT = False


def _flex_attention(device: torch.device) -> Callable[..., Any]:
    """flex_attention, compiled once per process for CUDA (eager elsewhere: tests on CPU)."""
    key = device.type
    if key not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention

        _FLEX[key] = torch.compile(flex_attention) if key == "cuda" else flex_attention
    return _FLEX[key]


def resolve_impl(impl: str, device: torch.device) -> str:
    """``auto`` -> ``flex`` on CUDA, ``reference`` elsewhere; explicit choices are kept."""
    if impl == "auto":
        return "flex" if device.type == "cuda" else "reference"
    if impl not in ("flex", "reference"):
        raise ValueError(f"unknown attention implementation {impl!r} (expected auto, flex or reference)")
    return impl


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: AttentionLayout,
    impl: str,
    block_size: int,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Masked attention. q (B, H, Q, dh), k and v (B, H, K, dh) -> (B, H, Q, dh); empty rows give 0."""
    impl = resolve_impl(impl, q.device)
    if impl == "reference":
        mask = layout.dense()  # (B, 1, Q, K) bool
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, Q, K)
        row_any = mask.any(dim=-1, keepdim=True)  # (B, 1, Q, 1)
        # Fully masked rows (padding, unused summary slots) get finite scores, then zero weights, so
        # neither the output nor its gradient is NaN.
        scores = scores.masked_fill(~mask, float("-inf")).masked_fill(~row_any, 0.0)
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype) * row_any
        if dropout_p > 0.0:
            probs = nn.functional.dropout(probs, p=dropout_p, training=True)
        return torch.matmul(probs, v)
    if impl == "flex":
        global _WARNED_DROPOUT
        if dropout_p > 0.0 and not _WARNED_DROPOUT:
            warnings.warn("FlexAttention path: attention_dropout is not applied", stacklevel=2)
            _WARNED_DROPOUT = True
        if q.shape[2] == 0:
            return q.new_zeros(q.shape)
        v = v.to(q.dtype)
        return _flex_attention(q.device)(q, k.to(q.dtype), v, block_mask=layout.block_mask(block_size))
    raise ValueError(f"unknown attention implementation {impl!r} (expected 'reference' or 'flex')")


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, d) -> (B, H, L, d/H)."""
    b, n, d = x.shape
    return x.view(b, n, num_heads, d // num_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, dh) -> (B, L, H*dh)."""
    b, h, n, dh = x.shape
    return x.transpose(1, 2).reshape(b, n, h * dh)


class V2S1Attention(nn.Module):
    """The "summarise, then update" self-attention of one layer (museformer.md 5.3).

    Q/K/V/out weights are shared by the two streams; each stream has its own Q/K/V biases; summaries
    get dedicated key2/value2 projections (no bias, as the released model effectively had).
    """

    def __init__(self, dim: int, num_heads: int, dropout: float, impl: str, block_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention_embed_dim {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.dropout, self.impl, self.block_size = num_heads, dropout, impl, block_size
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.out_proj = nn.Linear(dim, dim)
        self.key2 = nn.Linear(dim, dim, bias=False)
        self.value2 = nn.Linear(dim, dim, bias=False)
        self.q_bias_reg, self.k_bias_reg, self.v_bias_reg = (nn.Parameter(torch.zeros(dim)) for _ in range(3))
        self.q_bias_sum, self.k_bias_sum, self.v_bias_sum = (nn.Parameter(torch.zeros(dim)) for _ in range(3))
        gain = 1.0 / math.sqrt(2.0)
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.key2, self.value2):
            nn.init.xavier_uniform_(lin.weight, gain=gain)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def _p(self) -> float:
        return self.dropout if self.training else 0.0

    def reg_kv(self, r_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Regular-token keys and values (B, H, R, dh) from the normalised regular stream (B, R, d)."""
        k = self.k_proj(r_hat) + self.k_bias_reg
        v = self.v_proj(r_hat) + self.v_bias_reg
        return _heads(k, self.num_heads), _heads(v, self.num_heads)

    def summarize(self, s_hat: torch.Tensor, k_r: torch.Tensor, v_r: torch.Tensor, sx: AttentionLayout) -> torch.Tensor:
        """Step 1: summaries (B, S, d) read their bar -> s2 (B, S, d), heads merged, before out-proj."""
        h = self.num_heads
        q = _heads(self.q_proj(s_hat) + self.q_bias_sum, h)
        k = torch.cat([_heads(self.k_proj(s_hat) + self.k_bias_sum, h), k_r], dim=2)  # (B, H, S+R, dh)
        v = torch.cat([_heads(self.v_proj(s_hat) + self.v_bias_sum, h), v_r], dim=2)
        return _merge(attend(q, k, v, sx, self.impl, self.block_size, self._p()))

    def sum_kv2(self, s2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summary keys/values (B, H, S, dh) that regular tokens of later bars read (coarse-grained)."""
        return _heads(self.key2(s2), self.num_heads), _heads(self.value2(s2), self.num_heads)

    def update(
        self,
        r_hat: torch.Tensor,
        k_s2: torch.Tensor,
        v_s2: torch.Tensor,
        k_r: torch.Tensor,
        v_r: torch.Tensor,
        rx: AttentionLayout,
    ) -> torch.Tensor:
        """Step 2: regular tokens (B, R, d) read [fresh summaries ; regular tokens] -> r2 (B, R, d)."""
        q = _heads(self.q_proj(r_hat) + self.q_bias_reg, self.num_heads)
        k = torch.cat([k_s2, k_r], dim=2)  # (B, H, S+R, dh)
        v = torch.cat([v_s2, v_r], dim=2)
        return _merge(attend(q, k, v, rx, self.impl, self.block_size, self._p()))

    def forward(
        self, s_hat: torch.Tensor, r_hat: torch.Tensor, sx: AttentionLayout, rx: AttentionLayout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S, d), (B, R, d) normalised streams -> their attention outputs after out-proj."""
        k_r, v_r = self.reg_kv(r_hat)
        s2 = self.summarize(s_hat, k_r, v_r, sx)
        k_s2, v_s2 = self.sum_kv2(s2)
        r2 = self.update(r_hat, k_s2, v_s2, k_r, v_r, rx)
        return self.out_proj(s2), self.out_proj(r2)


class CrossAttention(nn.Module):
    """Target regular tokens over the encoder memory [source summaries ; source regular tokens]."""

    def __init__(self, dim: int, num_heads: int, dropout: float, impl: str, block_size: int) -> None:
        super().__init__()
        self.num_heads, self.dropout, self.impl, self.block_size = num_heads, dropout, impl, block_size
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        gain = 1.0 / math.sqrt(2.0)
        for lin in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values (B, H, S_src+R_src, dh) of the encoder memory (B, S_src+R_src, d); cacheable."""
        return _heads(self.k_proj(memory), self.num_heads), _heads(self.v_proj(memory), self.num_heads)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
        """x (B, R, d) normalised -> (B, R, d)."""
        q = _heads(self.q_proj(x), self.num_heads)
        p = self.dropout if self.training else 0.0
        return self.out_proj(_merge(attend(q, k, v, layout, self.impl, self.block_size, p)))
