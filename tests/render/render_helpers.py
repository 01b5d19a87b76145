"""Tiny random-weight models and bar-structured token sequences for the render tests."""

from __future__ import annotations

import torch

from instruct_museformer.data.batch import BEAT_INHERIT, BEAT_ZERO
from instruct_museformer.model.config import MuseformerConfig
from instruct_museformer.tokens.specials import BAR, NUM_SPECIALS

VOCAB = 40


def toy_beat_table(vocab: int = VOCAB) -> torch.Tensor:
    """Ids 5..12 are onset positions 1..8, id 13 a change token (beat 0), the rest inherit."""
    table = torch.full((vocab,), BEAT_INHERIT)
    table[: NUM_SPECIALS + 1] = BEAT_ZERO
    table[5:13] = torch.arange(1, 9)
    table[13] = BEAT_ZERO
    return table


def bar_sequence(gen: torch.Generator, bar_lengths: list[int], vocab: int = VOCAB) -> torch.Tensor:
    """Tokens of closed bars with the given lengths (Bar token included; 1 = an empty bar)."""
    parts = []
    for n in bar_lengths:
        body = torch.randint(NUM_SPECIALS + 1, vocab, (n - 1,), generator=gen)
        parts.append(torch.cat([body, torch.tensor([BAR])]))
    return torch.cat(parts)


def tiny_config(task: str = "language_modeling", vocab: int = VOCAB, **overrides: object) -> MuseformerConfig:
    """Width 32, 2 layers, reference attention; near bars fine-grained, far bars through summaries."""
    values: dict[str, object] = dict(
        vocab_size=vocab,
        task=task,
        num_layers=2,
        attention_embed_dim=32,
        num_attention_heads=4,
        ffn_embed_dim=64,
        bar_abs_pos_embed_dim=16,
        beat_abs_pos_embed_dim=8,
        dropout=0.0,
        attention_dropout=0.0,
        attention_impl="reference",
        block_size=16,
        con2con="((((-1, 0),),),)",
        con2sum="((((None, -1),),),)",
        src_con2con="((((-1, 2),),),)",
        src_con2sum="((((None, -1), (2, None)),),)",
    )
    values.update(overrides)
    return MuseformerConfig(**values)  # type: ignore[arg-type]
