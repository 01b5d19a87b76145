"""One Museformer layer: v2s1 self-attention over both streams, optional cross-attention, shared FFN."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .attention import CrossAttention, V2S1Attention
from .masks import AttentionLayout


class FeedForward(nn.Module):
    """fc2(act(fc1(x))), no activation dropout (as the original); shared by the two streams."""

    def __init__(self, dim: int, hidden: int, activation: str) -> None:
        super().__init__()
        acts = {"gelu": nn.GELU, "relu": nn.ReLU}
        if activation not in acts:
            raise ValueError(f"activation_fn {activation!r} is not one of {', '.join(acts)}")
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), acts[activation](), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class MuseformerLayer(nn.Module):
    """Pre-LN (or post-LN) layer over the joint stream ``[summaries ; regular]`` (B, S+R, d).

    self-attention (v2s1) -> [cross-attention, regular rows only] -> FFN. LayerNorms and FFN are shared
    by the two streams (``share_*`` True in the original), so they run once on the joint tensor.
    Summaries do not cross-attend: they read their bar's regular tokens, which carry the source
    information from the layer below.

    With ``compile_blocks`` (CUDA only), the tensor-only stretches between the attention kernels -- norm +
    Q/K/V projection, out-proj + residual, norm + FFN + residual -- run ``torch.compile``d (dynamic
    shapes): a few fused kernels each instead of dozens of eager ops, less GPU time and memory. Each
    compiled call costs host time of its own (guards, autograd wrappers), so it pays where the step is
    GPU-bound (65k tokens) and not at 15k (docs/benchmarks.md). The attention calls themselves stay eager
    (their plans and block masks are per-batch Python objects).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float,
        attention_dropout: float,
        activation: str,
        normalize_before: bool,
        impl: str,
        block_size: int,
        cross: bool = False,
        compile_blocks: bool = False,
    ) -> None:
        super().__init__()
        self.normalize_before = normalize_before
        self.compile_blocks = compile_blocks
        self._compiled: dict[str, Callable[..., Any]] = {}
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = V2S1Attention(dim, num_heads, attention_dropout, impl, block_size)
        self.cross_norm = nn.LayerNorm(dim) if cross else None
        self.cross = CrossAttention(dim, num_heads, attention_dropout, impl, block_size) if cross else None
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, ffn_dim, activation)
        self.dropout = nn.Dropout(dropout)

    def _pre(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return norm(x) if self.normalize_before else x

    def _post(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return x if self.normalize_before else norm(x)

    def _block(self, fn: Callable[..., torch.Tensor], x: torch.Tensor) -> Callable[..., torch.Tensor]:
        """``fn`` itself, or (``compile_blocks`` on CUDA) its compiled version, made on first use."""
        if not (self.compile_blocks and x.is_cuda):
            return fn
        if fn.__name__ not in self._compiled:
            self._compiled[fn.__name__] = torch.compile(fn, dynamic=True)
        return self._compiled[fn.__name__]

    def _attn_in(self, x: torch.Tensor, num_sum: int) -> torch.Tensor:
        return self.attn.qkv_rows(self._pre(self.attn_norm, x), num_sum)

    def _attn_out(self, x: torch.Tensor, s2: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
        return self._post(self.attn_norm, x + self.dropout(self.attn.output(s2, r2)))

    def _ffn_out(self, x: torch.Tensor) -> torch.Tensor:
        return self._post(self.ffn_norm, x + self.dropout(self.ffn(self._pre(self.ffn_norm, x))))

    def forward(
        self,
        x: torch.Tensor,
        num_sum: int,
        sx: AttentionLayout,
        rx: AttentionLayout,
        cross_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        cross_layout: AttentionLayout | None = None,
    ) -> torch.Tensor:
        """x = [summaries ; regular] (B, S+R, d), the first ``num_sum`` rows summaries -> same shape."""
        qkv = self._block(self._attn_in, x)(x, num_sum)  # (B, S+R, 3d)
        s2, r2 = self.attn.mix(qkv, num_sum, sx, rx)
        x = self._block(self._attn_out, x)(x, s2, r2)
        if self.cross is not None and self.cross_norm is not None:
            if cross_kv is None or cross_layout is None:
                raise ValueError("this layer has cross-attention: pass the encoder memory and its layout")
            r = x[:, num_sum:]
            c = self.cross(self._pre(self.cross_norm, r), cross_kv[0], cross_kv[1], cross_layout)
            r = self._post(self.cross_norm, r + self.dropout(c))
            x = torch.cat([x[:, :num_sum], r], dim=1)
        return self._block(self._ffn_out, x)(x)
