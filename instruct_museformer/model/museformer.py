"""The two models and ``build_model``: score -> performance translation, and the original decoder-only LM.

Both take a ``data.batch.Batch`` and return float32 logits (B, T, V) for the ``prev_output`` positions;
the loss is the trainer's. Options (MuseformerConfig, fairseq flag names):

* decoder: ``con2con``, ``con2sum``, ``sum2con``, ``sum2sum`` and their ``*_self``, ``con2con_causal``,
  ``pref2pref_mode`` -- the original's grammar and defaults (museformer_lm_v2s1);
* encoder (translation): ``src_con2con``, ``src_con2sum`` (non-causal, offsets on both sides), with the
  decoder's ``*_self``, ``sum2con`` and ``sum2sum``; ``encoder_layers`` (None = ``num_layers``);
* cross-attention (translation): ``cross_con2con`` (target bar j reads source bars j+offset token by
  token) and ``cross_con2sum`` (and the final-layer encoder summaries of source bars j+offset); all
  target tokens also read the source's specials (its EOS);
* ``attention_impl``: ``auto`` (gather on CUDA, reference elsewhere), ``gather``, ``flex`` or ``reference``;
  ``block_size``: FlexAttention tile size (sequences are padded to a multiple of it on the fast paths).
"""

from __future__ import annotations

import torch
from torch import nn

from ..data.batch import Batch
from ..errors import UserError
from .attention import IMPLS
from .config import MuseformerConfig
from .decoder import MuseformerDecoder
from .encoder import MuseformerEncoder
from .scheme import SELF_MODES

TASKS = ("translation", "language_modeling")


class MuseformerLM(nn.Module):
    """The original decoder-only Museformer language model."""

    def __init__(self, cfg: MuseformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.decoder = MuseformerDecoder(cfg, cross=False)

    def forward(self, batch: Batch) -> torch.Tensor:
        layouts = batch.layouts
        return self.decoder(batch.prev_output, layouts=None if layouts is None else layouts.decoder)


class MuseformerTranslation(nn.Module):
    """Score encoder + performance decoder with bar-organised cross-attention."""

    def __init__(self, cfg: MuseformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = MuseformerEncoder(cfg)
        self.decoder = MuseformerDecoder(cfg, cross=True)

    def forward(self, batch: Batch) -> torch.Tensor:
        if batch.source is None:
            raise ValueError("the translation model needs batch.source (the score tokens)")
        layouts = batch.layouts
        if layouts is None or layouts.encoder is None:
            return self.decoder(batch.prev_output, self.encoder(batch.source))
        memory = self.encoder(batch.source, layouts.encoder)
        return self.decoder(batch.prev_output, memory, layouts.decoder)


def build_model(cfg: MuseformerConfig) -> nn.Module:
    """The model for ``cfg.task``; scheme strings are parsed here, so bad options fail early (UserError)."""
    if cfg.vocab_size <= 0:
        raise UserError(f"model config: vocab_size must be positive, got {cfg.vocab_size}")
    if cfg.task not in TASKS:
        raise UserError(f"model config: task {cfg.task!r} is not one of {', '.join(TASKS)}")
    if cfg.attention_impl not in IMPLS:
        raise UserError(f"model config: attention_impl {cfg.attention_impl!r} is not one of {', '.join(IMPLS)}")
    for part in ("con2con", "con2sum", "sum2con", "sum2sum"):
        mode = getattr(cfg, f"{part}_self")
        if mode not in SELF_MODES:
            raise UserError(f"model config: --{part}-self must be one of {', '.join(SELF_MODES)}, got {mode!r}")
    if cfg.attention_embed_dim % cfg.num_attention_heads:
        raise UserError(
            f"model config: attention_embed_dim {cfg.attention_embed_dim} is not divisible by "
            f"num_attention_heads {cfg.num_attention_heads}"
        )
    if cfg.block_size < 16 or cfg.block_size & (cfg.block_size - 1):
        raise UserError(f"model config: block_size must be a power of two >= 16, got {cfg.block_size}")
    if cfg.task == "language_modeling":
        return MuseformerLM(cfg)
    return MuseformerTranslation(cfg)


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (shared tensors counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
