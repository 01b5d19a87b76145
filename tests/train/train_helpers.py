"""Helpers for tests/train: a tiny translation data-bin (fairseq mmap files, numeric dictionaries, tokenizer).

The pieces are synthetic but shaped like our REMI data: per bar ``TimeSig Tempo (Position Pitch Velocity
Duration)* Bar``; the performance of a bar is its score with velocities that depend on the pitch, so a
model can learn the mapping and its perplexity falls quickly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from instruct_museformer.data.batch import Batch
from instruct_museformer.data.dictionary import Dictionary
from instruct_museformer.data.indexed import write_dataset
from instruct_museformer.model.config import MuseformerConfig
from instruct_museformer.tokens.specials import BAR
from instruct_museformer.tokens.tokenizer import build_tokenizer, save_tokenizer, vocab_tokens

# The user's fairseq-train command as the issue gives it (wrapped lines, also inside quotes).
SEED_COMMAND = """data-bin/instruct_museformer --user-dir museformer --task museformer_language_modeling --arch
    museformer_lm_v2s1 --con2con '((((-2, 0), -4, -8, -12, -16, -24, -32),),)' --con2sum '((((None, -32), (-31, -24),
    (-23, -16), (-15, -12), (-11, -8), (-7, -4), -3,),),)' --num-layers 4 --tokens-per-sample 100000 --truncate-train
    15360 --truncate-valid 10240 --batch-size 1 --update-freq 1 --optimizer adam --adam-betas '(0.9, 0.98)' --adam-eps
    1e-9 --weight-decay 0.01 --lr 5e-4 --lr-scheduler inverse_sqrt --warmup-updates 16000 --max-update 1000000
    --validate-interval 1000000000 --save-interval 1000000000 --save-interval-updates 5000 --fp16 --log-interval 10
    --tensorboard-logdir tb_log/museformer_instruct --num-workers 8 --save-dir checkpoints/museformer_instruct
    --beat-mask-ts True --take-bos-as-bar True --log-format simple"""


def _piece(rng: np.random.Generator, ids: dict[str, int], bars: int) -> tuple[list[int], list[int]]:
    score: list[int] = []
    perf: list[int] = []
    for _ in range(bars):
        head = [ids["TimeSig_4/4"], ids[next(t for t in ids if t.startswith("Tempo_"))]]
        score += head
        perf += head
        for position in sorted(rng.choice(16, size=int(rng.integers(1, 4)), replace=False).tolist()):
            pitch = int(rng.integers(48, 72))
            note = [ids[f"Position_{position * 4}"], ids[f"Pitch_{pitch}"]]
            score += note + [ids["Velocity_63"], ids["Duration_0.24.48"]]
            perf += note + [ids[f"Velocity_{3 + 4 * ((pitch * 5) % 32)}"], ids["Duration_0.24.48"]]
        score.append(BAR)
        perf.append(BAR)
    return score, perf


def make_data_bin(root: Path, *, n_train: int = 12, n_valid: int = 3, n_test: int = 3, seed: int = 0) -> Path:
    """Write a data-bin as `imf preprocess --source-lang score --target-lang perf` would (EOS appended)."""
    tokenizer = build_tokenizer()
    tokens = vocab_tokens(tokenizer)
    ids = {t: i for i, t in enumerate(tokens)}
    data_bin = root / "data-bin"
    data_bin.mkdir(parents=True)
    save_tokenizer(tokenizer, data_bin / "tokenizer.json")
    for lang in ("score", "perf"):
        Dictionary.numeric(len(tokens)).save(data_bin / f"dict.{lang}.txt")
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        pairs = [_piece(rng, ids, int(rng.integers(2, 6))) for _ in range(count)]
        for lang, side in (("score", 0), ("perf", 1)):
            write_dataset(data_bin / f"{split}.score-perf.{lang}", [p[side] + [2] for p in pairs], len(tokens))
    return data_bin


class TinyTranslator(nn.Module):
    """Stand-in with the model's call signature: logits (B, T, V) from prev_output tokens and a source summary.

    Causal by construction (a GRU over the decoder input), with dropout so RNG handling is exercised.
    """

    def __init__(self, cfg: MuseformerConfig) -> None:
        super().__init__()
        width = cfg.attention_embed_dim
        self.embed = nn.Embedding(cfg.vocab_size, width, padding_idx=0)
        self.rnn = nn.GRU(width, width, batch_first=True)
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(width, cfg.vocab_size)

    def forward(self, batch: Batch) -> torch.Tensor:
        x = self.dropout(self.embed(batch.prev_output.tokens))
        if batch.source is not None:
            src = self.embed(batch.source.tokens) * (~batch.source.padding_mask).unsqueeze(-1)
            x = x + src.sum(1, keepdim=True) / batch.source.lengths.clamp(min=1).view(-1, 1, 1)
        hidden, _ = self.rnn(x)
        return self.out(self.dropout(hidden)).float()


def tiny_model(cfg: MuseformerConfig) -> nn.Module:
    return TinyTranslator(cfg)
