"""Random bar-structured batches and small configurations for the model tests."""

from __future__ import annotations

import torch

from instruct_museformer.data.batch import BEAT_INHERIT, BEAT_ZERO, Batch, collate_bar_tokens
from instruct_museformer.model.config import MuseformerConfig
from instruct_museformer.tokens.specials import BAR, EOS, NUM_SPECIALS, PAD

VOCAB = 40


def beat_table(vocab: int = VOCAB) -> torch.Tensor:
    """Ids 5..12 are onset positions 1..8, id 13 a change token (beat 0), the rest inherit."""
    table = torch.full((vocab,), BEAT_INHERIT)
    table[: NUM_SPECIALS + 1] = BEAT_ZERO
    table[5:13] = torch.arange(1, 9)
    table[13] = BEAT_ZERO
    return table


def bar_sequence(gen: torch.Generator, bar_lengths: list[int], truncated_last: bool = False) -> torch.Tensor:
    """Tokens of bars with the given lengths (Bar token included; 1 = an empty bar).

    With ``truncated_last`` the last bar lacks its closing Bar token (an incomplete bar).
    """
    parts = []
    for i, n in enumerate(bar_lengths):
        body = torch.randint(NUM_SPECIALS + 1, VOCAB, (n - 1,), generator=gen)
        close = not (truncated_last and i == len(bar_lengths) - 1)
        parts.append(torch.cat([body, torch.tensor([BAR])]) if close else torch.cat([body, body[:1]]))
    return torch.cat(parts)


def make_batch(targets: list[torch.Tensor], sources: list[torch.Tensor] | None = None) -> Batch:
    """A Batch from unpadded performance token sequences (and score sequences for translation)."""
    table = beat_table()
    prev = collate_bar_tokens([torch.cat([torch.tensor([EOS]), t]) for t in targets], table)
    tgt = torch.full(prev.tokens.shape, PAD)
    for i, t in enumerate(targets):
        full = torch.cat([t, torch.tensor([EOS])])
        tgt[i, : len(full)] = full
    source = None
    if sources is not None:
        source = collate_bar_tokens([torch.cat([s, torch.tensor([EOS])]) for s in sources], table)
    ntokens = int(sum(len(t) + 1 for t in targets))
    return Batch(prev, tgt, source, ntokens, torch.arange(len(targets)))


def random_layout_batch(seed: int, translation: bool = False) -> Batch:
    """Two or three sequences with uneven, empty and truncated bars and padding."""
    gen = torch.Generator().manual_seed(seed)
    specs = [
        ([5, 1, 9, 3, 12, 1, 4, 7], False),  # uneven bars with empty bars
        ([6, 11, 2, 8, 5], True),  # truncated (incomplete) last bar
        ([3, 1, 1, 14], False),  # shorter: padding
    ]
    targets = [bar_sequence(gen, lens, trunc) for lens, trunc in specs]
    sources = None
    if translation:
        sources = [
            bar_sequence(gen, [max(1, n + int(torch.randint(-2, 3, (1,), generator=gen))) for n in lens])
            for lens, _ in specs
        ]
    return make_batch(targets, sources)


def small_config(task: str = "language_modeling", **overrides: object) -> MuseformerConfig:
    values: dict[str, object] = dict(
        vocab_size=VOCAB,
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
        # near bars fine-grained, far ones through summaries, so that both paths matter on short pieces
        con2con="((((-1, 0),),),)",
        con2sum="((((None, -1),),),)",
        src_con2con="((((-1, 2),),),)",
        src_con2sum="((((None, -1), (2, None)),),)",
    )
    values.update(overrides)
    return MuseformerConfig(**values)  # type: ignore[arg-type]
