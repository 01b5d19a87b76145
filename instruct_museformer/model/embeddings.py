"""Museformer's input embeddings: token, bar and beat concatenated and projected; summary tokens alike.

There is no per-token position: order inside a bar comes from the causal mask and the beat (onset)
sinusoid, bars are told apart by the bar sinusoid, as in the original (``museformer_lm_v2s1``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..tokens.specials import PAD


def sinusoid(ids: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sinusoidal embedding of integer ids (any shape) -> (..., dim); id 0 gives the zero vector.

    ``[sin(p * w_k) ; cos(p * w_k)]`` with ``w_k = exp(-k ln(10000) / (dim/2 - 1))``, the original's
    ``SinusoidalEmbedding``; computed on the fly, so any id is valid (the original grew a table).
    """
    half = dim // 2
    scale = math.log(10000.0) / max(half - 1, 1)
    freqs = torch.exp(torch.arange(half, device=ids.device, dtype=torch.float32) * -scale)
    angles = ids.to(torch.float32)[..., None] * freqs
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2:
        emb = nn.functional.pad(emb, (0, 1))
    return emb * (ids != 0)[..., None].to(emb.dtype)


class BarEmbeddings(nn.Module):
    """Regular: Linear([E_tok * sqrt(d) ; PE_bar ; PE_beat]); summaries: Linear([E_sum * sqrt(d) ; PE_bar])."""

    def __init__(
        self,
        vocab_size: int,
        dim: int,
        num_summary: int,
        bar_dim: int,
        beat_dim: int,
        use_bar: bool = True,
        use_beat: bool = True,
        scale_embedding: bool = True,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.bar_dim = bar_dim if use_bar else 0
        self.beat_dim = beat_dim if use_beat else 0
        self.scale = math.sqrt(dim) if scale_embedding else 1.0
        # PyTorch's default N(0, 1) init with the padding row zeroed, as the original.
        self.tokens = nn.Embedding(vocab_size, dim, padding_idx=PAD)
        self.reg_proj = nn.Linear(dim + self.bar_dim + self.beat_dim, dim)
        self.summary = nn.Embedding(max(num_summary, 0) + 1, dim, padding_idx=0) if num_summary > 0 else None
        self.sum_proj = nn.Linear(dim + self.bar_dim, dim) if num_summary > 0 else None
        self.dropout = nn.Dropout(dropout)

    def regular(self, tokens: torch.Tensor, bar_ids: torch.Tensor, beat_ids: torch.Tensor) -> torch.Tensor:
        """(B, R) ids -> (B, R, d)."""
        parts = [self.tokens(tokens) * self.scale]
        if self.bar_dim:
            parts.append(sinusoid(bar_ids, self.bar_dim))
        if self.beat_dim:
            parts.append(sinusoid(beat_ids, self.beat_dim))
        x = torch.cat(parts, dim=-1)
        return self.dropout(self.reg_proj(x))

    def summaries(self, sum_ids: torch.Tensor, sum_bar: torch.Tensor) -> torch.Tensor:
        """(B, S) summary ids (0 = unused slot) and bars -> (B, S, d)."""
        if self.summary is None or self.sum_proj is None:
            return torch.zeros(*sum_ids.shape, self.dim, device=sum_ids.device)
        parts = [self.summary(sum_ids) * self.scale]
        if self.bar_dim:
            parts.append(sinusoid(torch.where(sum_ids > 0, sum_bar, torch.zeros_like(sum_bar)), self.bar_dim))
        return self.dropout(self.sum_proj(torch.cat(parts, dim=-1)))
