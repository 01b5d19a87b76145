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
from .attention import prepare_layouts, resolve_impl
from .config import MuseformerConfig
from .encoder import EncoderOut, make_embeddings, make_layers
from .masks import pad_bar_tokens
from .planning import StackLayouts, check_layouts, decoder_schemes, pad_multiple, stack_layouts


class MuseformerDecoder(nn.Module):
    def __init__(self, cfg: MuseformerConfig, cross: bool) -> None:
        super().__init__()
        if cfg.pref2pref_mode not in ("lt", "full", "none"):
            raise ValueError(f"pref2pref_mode {cfg.pref2pref_mode!r} is not one of lt, full, none")
        self.cfg = cfg
        n = cfg.num_layers
        self.schemes = decoder_schemes(cfg, cross)
        self.embed = make_embeddings(cfg)
        self.layers = make_layers(cfg, n, cross=cross)
        use_final = cfg.normalize_before and not cfg.no_final_norm
        self.final_norm = nn.LayerNorm(cfg.attention_embed_dim) if use_final else None
        self.output = nn.Linear(cfg.attention_embed_dim, cfg.vocab_size, bias=False)
        if cfg.share_input_output_embed:
            self.output.weight = self.embed.tokens.weight
        else:
            nn.init.normal_(self.output.weight, std=cfg.attention_embed_dim**-0.5)

    def forward(
        self, prev_output: BarTokens, encoder_out: EncoderOut | None = None, layouts: StackLayouts | None = None
    ) -> torch.Tensor:
        """prev_output (B, T) -> logits (B, T, V) in float32.

        ``layouts``: built beforehand (``planning.LayoutPlanner``, the data loader); else built here, from the
        host copy of ``prev_output`` where it has one, so that nothing is read back from the device."""
        cfg = self.cfg
        length = prev_output.tokens.shape[1]
        device = prev_output.tokens.device
        impl = resolve_impl(cfg.attention_impl, device)
        multiple = pad_multiple(cfg, impl)
        cross = self.layers[0].cross is not None if len(self.layers) else False
        if cross and encoder_out is None:
            raise ValueError("the translation decoder needs the encoder output")
        if layouts is None:
            layouts = stack_layouts(
                prev_output.on_host(), self.schemes, len(self.layers), num_summary=cfg.num_summary_tokens_each_chunk,
                multiple=multiple, causal=cfg.con2con_causal, pref2pref=cfg.pref2pref_mode,
                source=encoder_out.side.on_host() if cross and encoder_out is not None else None,
            )  # fmt: skip
        layouts = layouts.to(device)
        side = layouts.side
        tokens = pad_bar_tokens(prev_output, multiple)
        check_layouts(side, tokens)
        r = self.embed.regular(tokens.tokens, tokens.bar_ids, tokens.beat_ids)  # (B, R, d)
        s = self.embed.summaries(side.sum_ids, side.sum_bar)  # (B, S, d)
        num_sum = s.shape[1]
        x = torch.cat([s.to(r.dtype), r], dim=1)  # (B, S+R, d): the joint stream the layers carry
        for i, layer in enumerate(self.layers):
            sx, rx, *cross_layouts = layouts.layers[i]
            extra: tuple = ()
            if layer.cross is not None and encoder_out is not None:
                extra = (layer.cross.memory_kv(encoder_out.memory), cross_layouts[0])
            prepare_layouts((sx, rx, *extra[1:]), impl, cfg.block_size)
            if cfg.gradient_checkpointing and self.training:
                x = checkpoint(layer, x, num_sum, sx, rx, *extra, use_reentrant=False)
            else:
                x = layer(x, num_sum, sx, rx, *extra)
        r = x[:, num_sum:]  # summary outputs are dropped after the last layer
        if self.final_norm is not None:
            r = self.final_norm(r)
        return self.output(r[:, :length]).float()
