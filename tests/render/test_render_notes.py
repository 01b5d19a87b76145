"""Score-constrained rendering: performance bar k plays exactly score bar k's notes, onsets within tolerance."""

from collections import Counter
from pathlib import Path

import pytest
import torch
from render_helpers import make_checkpoint, tiny_translation_renderer, write_score_midi

from instruct_museformer.render.decode import SamplingOptions
from instruct_museformer.render.grammar import (
    T_PITCH,
    T_POSITION,
    GrammarState,
    TokenGrammar,
    score_bar_notes,
)
from instruct_museformer.render.windows import WindowStats, render_token_bars, score_match, split_bars
from instruct_museformer.tokens.score import tokenize_score
from instruct_museformer.tokens.specials import BAR, EOS

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MOZART = FIXTURES / "partitura_mozart_k265_var1/tests/data/musicxml/mozart_k265_var1.musicxml"
BACH = FIXTURES / "nasap/Bach/Prelude/bwv_854/xml_score.musicxml"


@pytest.fixture(scope="module")
def setup():
    tokenizer, model, grammar, table = tiny_translation_renderer()
    scores = {"mozart": tokenize_score(MOZART, tokenizer), "bach": tokenize_score(BACH, tokenizer)}
    return tokenizer, model, grammar, table, scores


def _bar_events(bar: list[int], grammar: TokenGrammar) -> list[tuple[int, int]]:
    """(position, Pitch id) of every note of a bar, in token order (not de-duplicated)."""
    pos, out = 0, []
    for t in bar:
        if grammar.host_types[t] == T_POSITION:
            pos = grammar.host_position[t]
        elif grammar.host_types[t] == T_PITCH:
            out.append((pos, t))
    return out


def assert_follows_score(score: list[int], perf: list[int], grammar: TokenGrammar, tol: int) -> None:
    """Same bars; per bar the score's (de-duplicated) pitch multiset; each onset within ``tol`` of its note."""
    s_bars, p_bars = split_bars(score), split_bars(perf)
    assert perf[-1] == EOS and perf.count(EOS) == 1
    assert len(p_bars) == len(s_bars)
    for k, (s_bar, p_bar, notes) in enumerate(zip(s_bars, p_bars, score_bar_notes(s_bars, grammar), strict=True)):
        assert p_bar[0] == s_bar[0], k  # the score bar's TimeSig
        events = _bar_events(p_bar, grammar)
        assert Counter(t for _, t in events) == Counter(t for _, t in notes), k
        open_notes = list(notes)
        for pos, pitch in events:  # the grammar's matching: the open note of that pitch with the earliest onset
            match = min((n for n in open_notes if n[1] == pitch), key=lambda n: n[0])
            assert abs(pos - match[0]) <= tol, (k, pos, match)
            open_notes.remove(match)


def test_fixture_score_plays_its_notes(setup):
    _, model, grammar, table, scores = setup
    score = scores["mozart"]
    out = render_token_bars(model, [score], table, grammar, SamplingOptions(topk=8), torch.Generator().manual_seed(0))
    assert_follows_score(score, out[0], grammar, 24)
    m = score_match(score, out[0], grammar)
    assert m.fraction_present == 1.0 and m.bars_performance == m.bars_score == 24


def test_batch_of_different_scores_in_windows(setup):
    """Batch 3 (two fixtures and a prefix of one), small windows: constraints follow the windows' bars."""
    _, model, grammar, table, scores = setup
    batch = [scores["bach"], scores["mozart"], scores["mozart"][: len(scores["mozart"]) // 3]]
    stats = WindowStats()
    outs = render_token_bars(model, batch, table, grammar, SamplingOptions(topk=0, temperature=1.5),
                             torch.Generator().manual_seed(3), window_tokens=300, context_bars=2, stats=stats)
    assert stats.per_score_windows[0] > 3 and stats.per_score_windows[1] > 2
    for score, out in zip(batch, outs, strict=True):
        assert_follows_score(score, out, grammar, 24)


@pytest.mark.parametrize("tol", [0, 6])
def test_tight_tolerance_and_small_budget(setup, tol):
    """Tolerance 0 pins every onset to its score position; a tiny budget factor still finishes every bar."""
    _, model, grammar, table, scores = setup
    score = scores["bach"][: len(scores["bach"]) // 2]
    out = render_token_bars(model, [score], table, grammar, SamplingOptions(topk=0, temperature=2.0),
                            torch.Generator().manual_seed(tol), bar_budget_factor=0.0, note_tolerance=tol)
    assert_follows_score(score, out[0], grammar, tol)


def test_free_notes_is_unconstrained(setup):
    _, model, grammar, table, scores = setup
    score = scores["mozart"]
    out = render_token_bars(model, [score], table, grammar, SamplingOptions(topk=8), torch.Generator().manual_seed(0),
                            constrain_notes=False)
    assert out[0].count(BAR) == score.count(BAR)
    assert score_match(score, out[0], grammar).fraction_present < 1.0  # a random model drops notes


def test_grammar_never_empty_under_random_choices(setup):
    """Uniformly random allowed tokens (no model): every step has a choice and every bar closes."""
    _, _, grammar, _, scores = setup
    bars = split_bars(scores["bach"])[:6]
    gen = torch.Generator().manual_seed(5)
    for budget in (0, 10**6):
        state = GrammarState.start(grammar, [len(bars)] * 4, [[b[0] for b in bars]] * 4, budget,
                                   notes=[score_bar_notes(bars, grammar)] * 4, note_tolerance=12)
        for _ in range(20000):
            allowed = state.allowed()
            assert bool(allowed.any(dim=-1).all())
            if bool(state.done.all()):
                break
            pick = torch.multinomial(allowed.float(), 1, generator=gen)[:, 0]
            state.advance(pick)
        assert bool(state.done.all()) and state.bars_done.tolist() == [len(bars)] * 4


def test_cli_default_plays_the_score_and_free_notes_flag(tmp_path):
    import json

    from instruct_museformer.cli import main as imf

    ckpt = make_checkpoint(tmp_path / "ck")
    write_score_midi(tmp_path / "s.mid", bars=3, notes_per_bar=3)
    report = tmp_path / "r.json"
    assert imf(["render", str(tmp_path / "s.mid"), "-o", str(tmp_path / "o.mid"), "--checkpoint", str(ckpt),
                "--device", "cpu", "--report", str(report)]) == 0
    row = json.loads(report.read_text())[0]
    assert row["fraction_present"] == 1.0 and row["extra_notes"] == 0
    assert imf(["render", str(tmp_path / "s.mid"), "-o", str(tmp_path / "f.mid"), "--checkpoint", str(ckpt),
                "--device", "cpu", "--free-notes", "--note-tolerance", "0"]) == 0


def test_graph_step_semantics_on_cpu(setup, monkeypatch):
    """The CUDA path's loop on CPU: static caches, host checks every 32 steps (no-op steps past the end,
    writes clamped at the capacity) give the same tokens as the growing caches checked every step."""
    from instruct_museformer.render import decode as decode_module
    from instruct_museformer.render.decode import DecodeRequest, decode

    _, model, grammar, table, scores = setup
    bars = split_bars(scores["mozart"])[:5]
    source = [t for b in bars for t in b] + [EOS]
    notes = score_bar_notes(bars, grammar)
    requests = [DecodeRequest(source=source, target_bars=5, timesigs=[b[0] for b in bars], bar_budget=200,
                              stop_at=120, notes=notes if k != 1 else None, final=k != 2) for k in range(3)]
    growing = decode(model, requests, table, grammar, SamplingOptions(), torch.Generator().manual_seed(2),
                     static=False)
    monkeypatch.setattr(decode_module, "CPU_SYNC_EVERY", 32)
    static = decode(model, requests, table, grammar, SamplingOptions(), torch.Generator().manual_seed(2),
                    static=True)
    assert [r.tokens for r in static] == [r.tokens for r in growing]
    assert [r.finished for r in static] == [r.finished for r in growing]
    assert [r.logprobs for r in static][0][-3:] == pytest.approx([r.logprobs for r in growing][0][-3:], abs=1e-4)
    for r in static[:1]:
        assert all(Counter(t for _, t in _bar_events(b, grammar)) == Counter(t for _, t in n)
                   for b, n in zip(split_bars(r.tokens), notes, strict=False))
