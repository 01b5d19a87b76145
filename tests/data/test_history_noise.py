"""History noise: the decoder input's Tempo/Velocity/Duration tokens move a few bins; targets never do."""

from __future__ import annotations

import pickle

import numpy as np
import torch

from instruct_museformer.data.batch import collate_bar_tokens
from instruct_museformer.data.dataset import Sample, collate
from instruct_museformer.data.history_noise import HistoryNoise
from instruct_museformer.tokens.tokenizer import beat_table, build_tokenizer, token_value, vocab_tokens

TOKENIZER = build_tokenizer()
TOKENS = vocab_tokens(TOKENIZER)
IDS = {t: i for i, t in enumerate(TOKENS)}
TABLE = beat_table(TOKENIZER, False)


def _ordered(kind: str) -> list[str]:
    return sorted((t for t in TOKENS if t.startswith(kind + "_")), key=token_value)


TEMPOS, VELOCITIES, DURATIONS = _ordered("Tempo"), _ordered("Velocity"), _ordered("Duration")


def _batch(bars: int = 6):
    side = []
    for b in range(bars):
        side += [IDS["Position_0"], IDS[TEMPOS[60 + b]]]
        for k, p in enumerate((60, 64, 67)):
            side += [IDS[f"Position_{12 * k}"], IDS[f"Pitch_{p}"], IDS[VELOCITIES[10 + k]], IDS[DURATIONS[20]]]
        side.append(4)
    side.append(2)
    return collate([Sample(0, torch.tensor(side), torch.tensor(side))], TABLE)


def test_only_the_history_moves_within_its_kind_and_range():
    batch = _batch()
    noise = HistoryNoise.build(TOKENS, len(TOKENS), probability=0.5, bins=2, seed=1)
    out = noise(batch, 0)
    assert torch.equal(out.target, batch.target) and torch.equal(out.source.tokens, batch.source.tokens)
    for field in ("bar_ids", "beat_ids", "padding_mask"):
        assert torch.equal(getattr(out.prev_output, field), getattr(batch.prev_output, field))
    before, after = batch.prev_output.tokens[0].tolist(), out.prev_output.tokens[0].tolist()
    moved = 0
    for old, new in zip(before, after, strict=True):
        if old == new:
            continue
        moved += 1
        kind = TOKENS[old].partition("_")[0]
        assert kind in ("Tempo", "Velocity", "Duration") and TOKENS[new].partition("_")[0] == kind
        bins = {"Tempo": TEMPOS, "Velocity": VELOCITIES, "Duration": DURATIONS}[kind]
        assert 1 <= abs(bins.index(TOKENS[new]) - bins.index(TOKENS[old])) <= 2
    noisy_kinds = sum(TOKENS[t].partition("_")[0] in ("Tempo", "Velocity", "Duration") for t in before)
    assert 0.25 * noisy_kinds < moved < 0.75 * noisy_kinds  # about half of them
    # the beat ids a collation would compute from the noisy tokens are the ones kept
    assert torch.equal(collate_bar_tokens([out.prev_output.tokens[0]], TABLE).beat_ids, out.prev_output.beat_ids)


def test_clamped_at_the_ends_deterministic_per_batch_and_picklable():
    noise = HistoryNoise.build(TOKENS, len(TOKENS), probability=1.0, bins=3, seed=2)
    top = torch.tensor([[IDS[VELOCITIES[-1]], IDS[TEMPOS[0]], IDS["Pitch_60"], 4, 2]])
    for index in range(10):
        names = [TOKENS[i] for i in noise.corrupt(top.numpy(), np.random.default_rng(index))[0]]
        assert names[0] in VELOCITIES[-4:] and names[1] in TEMPOS[:4]
        assert names[2:] == ["Pitch_60", "Bar_None", "EOS_None"]
    batch = _batch()
    first = noise.for_epoch(3)(batch, 5).prev_output.tokens
    again = pickle.loads(pickle.dumps(noise.for_epoch(3)))(batch, 5).prev_output.tokens
    assert torch.equal(first, again)
    assert not torch.equal(first, noise.for_epoch(4)(batch, 5).prev_output.tokens)
    assert HistoryNoise.build(TOKENS, len(TOKENS), probability=0.0) is None
