"""Cached decoding reproduces the model's full forward at every step (bars, summaries, batch > 1)."""

import pytest
import torch
from render_helpers import bar_sequence, tiny_config, toy_beat_table

from instruct_museformer.data.batch import collate_bar_tokens
from instruct_museformer.model import build_model
from instruct_museformer.render.incremental import IncrementalDecoder
from instruct_museformer.tokens.specials import EOS, PAD

SCHEMES = {
    "near-far": {},
    "original": {
        "con2con": "((((-2, 0), -4, -8, -12, -16, -24, -32),),)",
        "con2sum": "((((None, -32), (-31, -24), (-23, -16), (-15, -12), (-11, -8), (-7, -4), -3,),),)",
    },
    "per-layer": {
        "con2con": "((((-1, 0),),), (((-3, 0), -5),))",
        "con2sum": "((((None, -1),),), (((None, -5), -4),))",
        "sum2con": "((((-1, 1),),),)",
        "sum2sum": "((((-2, 1),),),)",
        "cross_con2con": "(((0,),), (((-1, 2),),))",
        "cross_con2sum": "((((None, 0), (1, None)),), (((None, -1), (2, None)),))",
        "num_summary_tokens_each_chunk": 2,
    },
    "no-summary": {"num_summary_tokens_each_chunk": 0},
}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


@pytest.mark.parametrize(
    ("task", "scheme", "seed"),
    [
        ("language_modeling", "near-far", 0),
        ("translation", "original", 1),
        ("translation", "per-layer", 2),
        ("language_modeling", "per-layer", 4),
        ("translation", "no-summary", 3),
    ],
)
@pytest.mark.parametrize(("static", "prefill"), [(False, 0), (True, 0), (False, 12), (True, 12)])
def test_cached_logits_equal_full_forward(task: str, scheme: str, seed: int, static: bool, prefill: int):
    """``prefill``: the first tokens go in through one full forward (IncrementalDecoder.prefill), the rest
    step by step; it ends mid-bar, after complete bars (and empty ones) in every sequence."""
    torch.manual_seed(seed)
    model = build_model(tiny_config(task, **SCHEMES[scheme])).eval()
    gen = torch.Generator().manual_seed(seed)
    table = toy_beat_table()
    # different lengths and bar layouts in one batch, with empty bars
    layouts = [[5, 1, 9, 3, 6, 1, 4, 2], [6, 11, 2, 8], [3, 1, 1, 7, 2, 2]]
    seqs = [torch.cat([torch.tensor([EOS]), bar_sequence(gen, lens)]) for lens in layouts]
    encoder_out = None
    if task == "translation":
        sources = [
            torch.cat([bar_sequence(gen, [max(1, n - 1) for n in lens]), torch.tensor([EOS])]) for lens in layouts
        ]
        encoder_out = model.encoder(collate_bar_tokens(sources, table))
    longest = max(len(s) for s in seqs)
    if static:  # fixed-size caches, attention over the whole capacity (the CUDA-graph layout)
        cached = IncrementalDecoder(model.decoder, len(seqs), table, encoder_out, capacity=longest + 3,
                                    static=True, max_bars=max(len(lens) for lens in layouts))
    else:
        cached = IncrementalDecoder(model.decoder, len(seqs), table, encoder_out, capacity=8)  # forces growth
    worst = 0.0
    with torch.no_grad():
        if prefill:
            cached.prefill(torch.stack([s[:prefill] for s in seqs]))
        for t in range(prefill, longest):
            active = torch.tensor([t < len(s) for s in seqs])
            step_tokens = torch.tensor([int(s[t]) if t < len(s) else PAD for s in seqs])
            logits = cached.step(step_tokens, active)
            full = model.decoder(collate_bar_tokens([s[: t + 1] for s in seqs], table), encoder_out)
            for b in range(len(seqs)):
                if active[b]:
                    worst = max(worst, _rel(logits[b], full[b, t]))
    assert cached.bars_closed.tolist() == [len(lens) for lens in layouts]
    assert worst < 1e-4, worst


def test_gathered_keys_equal_full_forward_over_many_bars():
    """The growing-cache step reads only the keys the scheme allows (gathered once per bar): still exact when
    far offsets (-4 .. -32 bars) and summaries of many bars are in play, sequences change bar at different
    steps, and one sequence stops early."""
    torch.manual_seed(5)
    model = build_model(tiny_config("translation", **SCHEMES["original"])).eval()
    gen = torch.Generator().manual_seed(5)
    table = toy_beat_table()
    layouts = [[int(n) for n in torch.randint(1, 6, (40,), generator=gen)], [3, 1, 4, 2] * 6]
    seqs = [torch.cat([torch.tensor([EOS]), bar_sequence(gen, lens)]) for lens in layouts]
    sources = [torch.cat([bar_sequence(gen, [2] * len(lens)), torch.tensor([EOS])]) for lens in layouts]
    encoder_out = model.encoder(collate_bar_tokens(sources, table))
    cached = IncrementalDecoder(model.decoder, len(seqs), table, encoder_out, capacity=16)
    worst = 0.0
    with torch.no_grad():
        full = model.decoder(collate_bar_tokens(seqs, table), encoder_out)  # causal: row t sees tokens <= t
        for t in range(max(len(s) for s in seqs)):
            active = torch.tensor([t < len(s) for s in seqs])
            logits = cached.step(torch.tensor([int(s[t]) if t < len(s) else PAD for s in seqs]), active)
            for b in range(len(seqs)):
                if active[b]:
                    worst = max(worst, _rel(logits[b], full[b, t]))
    assert worst < 1e-4, worst


@pytest.mark.parametrize("scheme", ["original", "per-layer"])
def test_blocked_reference_attention_equals_dense(monkeypatch, scheme: str):
    """Inference on the reference path in query blocks over the keys each block reads (the CPU encoder of
    long windows): encoder memory and decoder logits equal the dense path's."""
    import instruct_museformer.model.attention as attention

    torch.manual_seed(6)
    model = build_model(tiny_config("translation", **SCHEMES[scheme])).eval()
    gen = torch.Generator().manual_seed(6)
    table = toy_beat_table()
    layouts = [[int(n) for n in torch.randint(1, 7, (30,), generator=gen)], [2, 5, 1, 3] * 4, [4] * 9]
    sources = collate_bar_tokens([torch.cat([bar_sequence(gen, lens), torch.tensor([EOS])]) for lens in layouts], table)
    targets = collate_bar_tokens([torch.cat([torch.tensor([EOS]), bar_sequence(gen, lens)]) for lens in layouts], table)
    with torch.no_grad():
        dense_memory = model.encoder(sources)
        dense = model.decoder(targets, dense_memory)
        monkeypatch.setattr(attention, "BLOCKED_MIN_SCORES", 0)
        monkeypatch.setattr(attention, "BLOCKED_QUERIES", 8)
        blocked_memory = model.encoder(sources)
        blocked = model.decoder(targets, blocked_memory)
    assert _rel(blocked_memory.memory, dense_memory.memory) < 1e-5
    assert _rel(blocked, dense) < 1e-5
