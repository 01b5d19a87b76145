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


def tiny_translation_renderer():
    """(tokenizer, random tiny translation model, grammar, beat table) over the real REMI vocabulary."""
    from instruct_museformer.model import build_model
    from instruct_museformer.render.grammar import TokenGrammar
    from instruct_museformer.tokens.tokenizer import beat_table, build_tokenizer

    tokenizer = build_tokenizer()
    v = len(tokenizer.vocab)
    torch.manual_seed(0)
    model = build_model(tiny_config("translation", vocab=v)).eval()
    return tokenizer, model, TokenGrammar.for_tokenizer(tokenizer, v), beat_table(tokenizer, False)


def write_score_midi(path, bars: int, notes_per_bar: int = 4, numerator: int = 4, seed: int = 0) -> None:
    """A synthetic score MIDI: ``bars`` bars of numerator/4 with a few notes each."""
    import random

    from symusic import Note, Score, Tempo, TimeSignature, Track

    rng = random.Random(seed)
    tpq = 480
    score = Score(tpq)
    score.time_signatures.append(TimeSignature(0, numerator, 4))
    score.tempos.append(Tempo(0, 100.0))
    track = Track(name="Piano", program=0, is_drum=False)
    bar_ticks = numerator * tpq
    for b in range(bars):
        for k in range(notes_per_bar):
            onset = b * bar_ticks + k * bar_ticks // notes_per_bar
            track.notes.append(Note(onset, bar_ticks // notes_per_bar, rng.randint(48, 84), 72))
    score.tracks.append(track)
    score.dump_midi(str(path))


def make_checkpoint(root, vocab: int | None = None, task: str = "translation", seed: int = 0):
    """A tiny random-weight checkpoint directory with the project tokenizer, as imf train writes it."""
    from pathlib import Path

    from instruct_museformer.model import build_model
    from instruct_museformer.tokens.tokenizer import build_tokenizer, save_tokenizer
    from instruct_museformer.train.checkpoint import CheckpointContents, save_checkpoint

    root = Path(root)
    tokenizer = build_tokenizer()
    data_bin = root / "data-bin"
    data_bin.mkdir(parents=True, exist_ok=True)
    save_tokenizer(tokenizer, data_bin / "tokenizer.json")
    torch.manual_seed(seed)
    cfg = tiny_config(task, vocab=vocab or len(tokenizer.vocab))
    model = build_model(cfg).eval()
    contents = CheckpointContents(model, cfg, {"beat_mask_ts": False, "tokens_per_sample": 1024}, {}, data_bin=data_bin)
    return save_checkpoint(root / "checkpoints", ["checkpoint_last"], contents)[0]
