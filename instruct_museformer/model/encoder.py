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
from .attention import FAST_IMPLS, prepare_layouts, resolve_impl
from .config import MuseformerConfig
from .embeddings import BarEmbeddings
from .layers import MuseformerLayer
from .masks import AttentionLayout, BarLayout, bar_layout, pad_bar_tokens, self_attention_layouts
from .scheme import OffsetSet, parse_scheme


@dataclass
class EncoderOut:
    """memory: (B, S_src + R_src, d) = [summaries ; regular states]; side: the source's bar layout."""

    memory: torch.Tensor
    side: BarLayout


def layer_schemes(cfg: MuseformerConfig, num_layers: int, con2con: str, con2sum: str, prefix: str = "") -> dict:
    """Parse the four self-attention schemes into per-layer offset sets (summaries off -> empty sets)."""
    names = {"con2con": con2con, "con2sum": con2sum, "sum2con": cfg.sum2con, "sum2sum": cfg.sum2sum}
    selfs = {
        "con2con": cfg.con2con_self,
        "con2sum": cfg.con2sum_self,
        "sum2con": cfg.sum2con_self,
        "sum2sum": cfg.sum2sum_self,
    }
    out: dict[str, list[OffsetSet]] = {}
    for part, text in names.items():
        label = prefix + part if part.startswith("con2") else part
        out[part] = parse_scheme(label, text, num_layers, selfs[part])
    if cfg.num_summary_tokens_each_chunk <= 0:  # the original forces the summary parts to ((None,),)
        for part in ("con2sum", "sum2con", "sum2sum"):
            out[part] = [OffsetSet(())] * num_layers
    return out


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
        n = cfg.encoder_layers if cfg.encoder_layers is not None else cfg.num_layers
        self.schemes = layer_schemes(cfg, n, cfg.src_con2con, cfg.src_con2sum, prefix="src_")
        self.embed = make_embeddings(cfg)
        self.layers = make_layers(cfg, n, cross=False)
        self.final_norm = nn.LayerNorm(cfg.attention_embed_dim)

    def forward(self, source: BarTokens) -> EncoderOut:
        cfg = self.cfg
        impl = resolve_impl(cfg.attention_impl, source.tokens.device)
        multiple = cfg.block_size if impl in FAST_IMPLS else 1
        host = pad_bar_tokens(source.on_host(), multiple)  # layouts from the host copy (see the decoder)
        source = pad_bar_tokens(source, multiple)
        side = bar_layout(host, cfg.num_summary_tokens_each_chunk, multiple).to(source.tokens.device)
        r = self.embed.regular(source.tokens, source.bar_ids, source.beat_ids)  # (B, R, d)
        s = self.embed.summaries(side.sum_ids, side.sum_bar)  # (B, S, d)
        num_sum = s.shape[1]
        x = torch.cat([s.to(r.dtype), r], dim=1)  # (B, S+R, d)
        cache: dict[tuple, AttentionLayout] = {}
        sc = self.schemes
        for i, layer in enumerate(self.layers):
            sx, rx = self_attention_layouts(cache, side, sc, i, causal=False)
            prepare_layouts((sx, rx), impl, cfg.block_size)
            if cfg.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, num_sum, sx, rx, use_reentrant=False)
            else:
                x = layer(x, num_sum, sx, rx)
        memory = self.final_norm(x)  # (B, S+R, d) = [summaries ; regular states]
        return EncoderOut(memory, side)
