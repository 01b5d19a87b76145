"""The Museformer decoder over the performance tokens (also the whole of the language model).

Input: the decoder side of a batch (``[EOS] + target[:-1]``) as BarTokens. The leading EOS is the prefix
(bar 0): it sees only itself, and every content token sees it. Bar 1 starts at index 1 in training as at
inference, which removes the original's first-bar leak (museformer.md 4.7). Summaries exist for the
complete bars only; a truncated last bar has none.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..data.batch import BarTokens
from .attention import FAST_IMPLS, prepare_layouts, resolve_impl
from .config import MuseformerConfig
from .encoder import EncoderOut, layer_schemes, make_embeddings, make_layers
from .masks import AttentionLayout, bar_layout, cross_layout, pad_bar_tokens, self_attention_layouts
from .scheme import parse_scheme


class MuseformerDecoder(nn.Module):
    def __init__(self, cfg: MuseformerConfig, cross: bool) -> None:
        super().__init__()
        if cfg.pref2pref_mode not in ("lt", "full", "none"):
            raise ValueError(f"pref2pref_mode {cfg.pref2pref_mode!r} is not one of lt, full, none")
        self.cfg = cfg
        n = cfg.num_layers
        self.schemes = layer_schemes(cfg, n, cfg.con2con, cfg.con2sum)
        if cross:
            self.schemes["cross_con2con"] = parse_scheme("cross_con2con", cfg.cross_con2con, n)
            self.schemes["cross_con2sum"] = parse_scheme("cross_con2sum", cfg.cross_con2sum, n)
        self.embed = make_embeddings(cfg)
        self.layers = make_layers(cfg, n, cross=cross)
        use_final = cfg.normalize_before and not cfg.no_final_norm
        self.final_norm = nn.LayerNorm(cfg.attention_embed_dim) if use_final else None
        self.output = nn.Linear(cfg.attention_embed_dim, cfg.vocab_size, bias=False)
        if cfg.share_input_output_embed:
            self.output.weight = self.embed.tokens.weight
        else:
            nn.init.normal_(self.output.weight, std=cfg.attention_embed_dim**-0.5)

    def forward(self, prev_output: BarTokens, encoder_out: EncoderOut | None = None) -> torch.Tensor:
        """prev_output (B, T) -> logits (B, T, V) in float32."""
        cfg = self.cfg
        length = prev_output.tokens.shape[1]
        impl = resolve_impl(cfg.attention_impl, prev_output.tokens.device)
        multiple = cfg.block_size if impl in FAST_IMPLS else 1
        tokens = pad_bar_tokens(prev_output, multiple)
        # the layouts come from the host copy where there is one (no waiting for the device), then move
        host = pad_bar_tokens(prev_output.on_host(), multiple)
        side = bar_layout(host, cfg.num_summary_tokens_each_chunk, multiple).to(tokens.tokens.device)
        r = self.embed.regular(tokens.tokens, tokens.bar_ids, tokens.beat_ids)  # (B, R, d)
        s = self.embed.summaries(side.sum_ids, side.sum_bar)  # (B, S, d)
        num_sum = s.shape[1]
        x = torch.cat([s.to(r.dtype), r], dim=1)  # (B, S+R, d): the joint stream the layers carry
        sc = self.schemes
        cache: dict[tuple, AttentionLayout] = {}
        for i, layer in enumerate(self.layers):
            sx, rx = self_attention_layouts(
                cache, side, sc, i, causal=cfg.con2con_causal, pref2pref=cfg.pref2pref_mode
            )
            extra: tuple = ()
            if layer.cross is not None:
                if encoder_out is None:
                    raise ValueError("the translation decoder needs the encoder output")
                kc = ("cross", sc["cross_con2con"][i], sc["cross_con2sum"][i])
                if kc not in cache:
                    cache[kc] = cross_layout(side, encoder_out.side, sc["cross_con2con"][i], sc["cross_con2sum"][i])
                extra = (layer.cross.memory_kv(encoder_out.memory), cache[kc])
            prepare_layouts((sx, rx, *extra[1:]), impl, cfg.block_size)
            if cfg.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, num_sum, sx, rx, *extra, use_reentrant=False)
            else:
                x = layer(x, num_sum, sx, rx, *extra)
        r = x[:, num_sum:]  # summary outputs are dropped after the last layer
        if self.final_norm is not None:
            r = self.final_norm(r)
        return self.output(r[:, :length]).float()
