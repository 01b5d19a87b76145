"""The score encoder: a non-causal Museformer over the source bars, with one summary per source bar.

Its schemes are ``src_con2con`` / ``src_con2sum`` (offsets on both sides, e.g. ``-4, 4``), with the
decoder's ``*_self`` options and its ``sum2con`` / ``sum2sum``. The output *memory* is
``[final summaries ; final regular states]``, both through the encoder's final LayerNorm; the decoder's
cross-attention reads it (final-layer summaries, shared by all decoder layers).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..data.batch import BarTokens
from .attention import prepare_layouts, resolve_impl
from .config import MuseformerConfig
from .embeddings import BarEmbeddings
from .layers import MuseformerLayer
from .masks import BarLayout, pad_bar_tokens
from .planning import StackLayouts, check_layouts, encoder_layers, encoder_schemes, pad_multiple, stack_layouts


@dataclass
class EncoderOut:
    """memory: (B, S_src + R_src, d) = [summaries ; regular states]; side: the source's bar layout."""

    memory: torch.Tensor
    side: BarLayout


def make_layers(cfg: MuseformerConfig, num_layers: int, cross: bool) -> nn.ModuleList:
    return nn.ModuleList(
        MuseformerLayer(
            cfg.attention_embed_dim,
            cfg.num_attention_heads,
            cfg.ffn_embed_dim,
            cfg.dropout,
            cfg.attention_dropout,
            cfg.activation_fn,
            cfg.normalize_before,
            cfg.attention_impl,
            cfg.block_size,
            cross=cross,
            compile_blocks=cfg.compile_blocks,
        )
        for _ in range(num_layers)
    )


def make_embeddings(cfg: MuseformerConfig) -> BarEmbeddings:
    return BarEmbeddings(
        cfg.vocab_size,
        cfg.attention_embed_dim,
        cfg.num_summary_tokens_each_chunk,
        cfg.bar_abs_pos_embed_dim,
        cfg.beat_abs_pos_embed_dim,
        use_bar=cfg.use_bar_abs_pos,
        use_beat=cfg.use_beat_abs_pos,
        scale_embedding=not cfg.no_scale_embedding,
        dropout=cfg.dropout,
    )


class MuseformerEncoder(nn.Module):
    def __init__(self, cfg: MuseformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.schemes = encoder_schemes(cfg)
        self.embed = make_embeddings(cfg)
        self.layers = make_layers(cfg, encoder_layers(cfg), cross=False)
        self.final_norm = nn.LayerNorm(cfg.attention_embed_dim)

    def forward(self, source: BarTokens, layouts: StackLayouts | None = None) -> EncoderOut:
        """``layouts``: built beforehand (``planning.LayoutPlanner``, the data loader); else built here, from
        the host copy of ``source`` where it has one (nothing is read back from the device)."""
        cfg = self.cfg
        device = source.tokens.device
        impl = resolve_impl(cfg.attention_impl, device)
        multiple = pad_multiple(cfg, impl)
        if layouts is None:
            num_summary = cfg.num_summary_tokens_each_chunk
            layouts = stack_layouts(
                source.on_host(), self.schemes, len(self.layers), num_summary=num_summary, multiple=multiple,
                causal=False,
            )  # fmt: skip
        layouts = layouts.to(device)
        side = layouts.side
        source = pad_bar_tokens(source, multiple)
        check_layouts(side, source)
        r = self.embed.regular(source.tokens, source.bar_ids, source.beat_ids)  # (B, R, d)
        s = self.embed.summaries(side.sum_ids, side.sum_bar)  # (B, S, d)
        num_sum = s.shape[1]
        x = torch.cat([s.to(r.dtype), r], dim=1)  # (B, S+R, d)
        for i, layer in enumerate(self.layers):
            sx, rx = layouts.layers[i]
            prepare_layouts((sx, rx), impl, cfg.block_size)
            if cfg.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, num_sum, sx, rx, use_reentrant=False)
            else:
                x = layer(x, num_sum, sx, rx)
        memory = self.final_norm(x)  # (B, S+R, d) = [summaries ; regular states]
        return EncoderOut(memory, side)
