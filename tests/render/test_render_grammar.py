"""Constrained sampling: every rendering is grammatical, decodes, and has the score's bars; windows."""

import pytest
import torch
from render_helpers import tiny_config, tiny_translation_renderer

from instruct_museformer.model import build_model
from instruct_museformer.render.decode import DecodeRequest, SamplingOptions, decode, sample_next
from instruct_museformer.render.grammar import GrammarState, TokenGrammar
from instruct_museformer.render.windows import WindowStats, render_token_bars, score_match, split_bars
from instruct_museformer.tokens.performance import decode_performance
from instruct_museformer.tokens.specials import BAR, EOS
from instruct_museformer.tokens.tokenizer import Vocab


@pytest.fixture(scope="module")
def setup():
    return tiny_translation_renderer()


def _score(tokenizer, bars: int, seed: int) -> list[int]:
    """A deadpan-like score: TimeSig, a few positions with notes, Bar (varied signatures)."""
    ids = Vocab(tokenizer).ids
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(bars):
        num = int(torch.randint(2, 7, (1,), generator=gen))
        out.append(ids[f"TimeSig_{num}/4"])
        for pos in sorted(set(torch.randint(0, num * 48, (3,), generator=gen).tolist())):
            out.append(ids[f"Position_{pos}"])
            out += [ids[f"Pitch_{int(torch.randint(40, 90, (1,), generator=gen))}"], ids["Velocity_71"],
                    ids["Duration_1.0.16"]]
        out.append(BAR)
    return out


def _assert_grammatical(tokens: list[int], score: list[int], grammar: TokenGrammar) -> None:
    timesigs = [bar[0] for bar in split_bars(score)]
    state = GrammarState.start(grammar, [len(timesigs)], [timesigs], 10**6)
    for t in tokens:
        assert bool(state.allowed()[0, t]), (t, tokens)
        state.advance(torch.tensor([t]))
    assert bool(state.done[0])


def test_sampled_renderings_follow_the_score(setup):
    tokenizer, model, grammar, table = setup
    scores = [_score(tokenizer, n, seed) for n, seed in ((3, 0), (5, 1), (1, 2), (4, 3))]
    outs = render_token_bars(model, scores, table, grammar, SamplingOptions(topk=8),
                             torch.Generator().manual_seed(0), window_tokens=4096, bar_budget_factor=1.0)
    for score, out in zip(scores, outs, strict=True):
        assert out[-1] == EOS and out.count(EOS) == 1
        assert out.count(BAR) == score.count(BAR)
        _assert_grammatical(out, score, grammar)
        midi = decode_performance(out, tokenizer)
        assert len(midi.time_signatures) >= 1
        m = score_match(score, out, grammar)
        assert m.bars_performance == m.bars_score == score.count(BAR)
        assert 0.0 <= m.fraction_present <= 1.0 and m.extra_notes >= 0


def test_sampling_is_seeded(setup):
    tokenizer, model, grammar, table = setup
    score = _score(tokenizer, 3, 5)
    runs = [render_token_bars(model, [score], table, grammar, SamplingOptions(topk=0, topp=0.9, temperature=1.3),
                              torch.Generator().manual_seed(7), bar_budget_factor=1.0) for _ in range(2)]
    assert runs[0] == runs[1]


def test_long_score_renders_in_windows(setup):
    tokenizer, model, grammar, table = setup
    score = _score(tokenizer, 14, 9)
    stats = WindowStats()
    window = 120
    out = render_token_bars(model, [score, score[: len(score) // 3]], table, grammar, SamplingOptions(),
                            torch.Generator().manual_seed(1), window_tokens=window, context_bars=2,
                            bar_budget_factor=0.5, stats=stats)
    assert stats.per_score_windows[0] > 2 and stats.rounds >= stats.per_score_windows[0]
    assert stats.max_encoder_tokens <= window
    longest_bar = max(len(b) for b in split_bars(out[0]))
    assert stats.max_decoder_tokens <= window + longest_bar + 1
    assert out[0].count(BAR) == 14 and out[1].count(BAR) == score[: len(score) // 3].count(BAR)
    for o, s in zip(out, [score, score[: len(score) // 3]], strict=True):
        assert [b[0] for b in split_bars(o)] == [b[0] for b in split_bars(s)]  # bar k has score bar k's TimeSig


def test_language_model_min_and_max_len(setup):
    tokenizer, _, grammar, table = setup
    torch.manual_seed(1)
    lm = build_model(tiny_config("language_modeling", vocab=len(tokenizer.vocab))).eval()
    res = decode(lm, [DecodeRequest(None), DecodeRequest(None)], table, grammar, SamplingOptions(),
                 torch.Generator().manual_seed(0), min_len=10, max_len=60)
    for r in res:
        assert r.tokens[-1] == EOS and 10 <= len(r.tokens) <= 61


def test_topk_and_topp_restrict_the_choice():
    logits = torch.tensor([[5.0, 4.0, 3.0, 0.0, -1.0]])
    allowed = torch.tensor([[False, True, True, True, True]])
    gen = torch.Generator().manual_seed(0)
    picks = {int(sample_next(logits, allowed, SamplingOptions(topk=2), gen)) for _ in range(50)}
    assert picks == {1, 2}
    picks = {int(sample_next(logits, allowed, SamplingOptions(topk=0, topp=0.5), gen)) for _ in range(50)}
    assert picks == {1}


def test_static_caches_decode_like_growing_ones(setup):
    """The fixed-size layout (used for CUDA graphs) samples the same tokens as the growing caches."""
    tokenizer, model, grammar, table = setup
    score = _score(tokenizer, 3, 11)
    requests = [DecodeRequest(source=score + [EOS], target_bars=3, timesigs=[b[0] for b in split_bars(score)],
                              bar_budget=40, stop_at=400)]
    runs = [decode(model, requests * 2, table, grammar, SamplingOptions(), torch.Generator().manual_seed(4),
                   static=static) for static in (False, True)]
    assert [r.tokens for r in runs[0]] == [r.tokens for r in runs[1]]
    assert all(r.bars == 3 and r.finished for r in runs[1])


def test_compiled_step_decodes_like_the_eager_one_and_compiles_once(setup):
    """``compile_step``: the same tokens as the eager static step, and windows of other sizes (score length,
    bars, notes, a rendered prefix as the context) reuse the compiled step instead of recompiling it."""
    from torch._dynamo.utils import counters

    tokenizer, model, grammar, table = setup

    def requests(bars: int, seed: int, prefix_of: list[int] | None = None) -> list[DecodeRequest]:
        score = _score(tokenizer, bars, seed)
        prefix = split_bars(prefix_of)[0] if prefix_of else []  # a window's context: its first bar, rendered
        return [DecodeRequest(source=score + [EOS], prefix=prefix, target_bars=bars,
                              timesigs=[b[0] for b in split_bars(score)], bar_budget=40, stop_at=400)] * 2

    def run(reqs: list[DecodeRequest], seed: int, compiled: bool) -> list[list[int]]:
        out = decode(model, reqs, table, grammar, SamplingOptions(), torch.Generator().manual_seed(seed),
                     static=True, compile_step=compiled)
        return [r.tokens for r in out]

    torch._dynamo.reset()
    counters.clear()
    first = run(requests(3, 11), 4, True)
    assert first == run(requests(3, 11), 4, False)
    assert run(requests(5, 12), 5, True) == run(requests(5, 12), 5, False)
    assert run(requests(3, 11, first[0]), 6, True) == run(requests(3, 11, first[0]), 6, False)
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("static", [False, True])
def test_prefilled_context_decodes_like_forced_steps(setup, monkeypatch, static):
    """A window's context (the prefix) through one forward samples the same tokens as feeding it step by step,
    also when the sequences' prefixes differ in length (the common part is prefilled, the rest forced)."""
    import instruct_museformer.render.decode as decode_module

    tokenizer, model, grammar, table = setup
    score = _score(tokenizer, 6, 21)
    timesigs = [b[0] for b in split_bars(score)]
    whole = decode(model, [DecodeRequest(source=score + [EOS], target_bars=6, timesigs=timesigs, bar_budget=40,
                                         stop_at=400)], table, grammar, SamplingOptions(),
                   torch.Generator().manual_seed(2), static=static)[0].tokens
    bars = split_bars(whole)
    prefixes = [[t for b in bars[:3] for t in b], [t for b in bars[:4] for t in b]]
    assert min(len(p) for p in prefixes) >= decode_module.PREFILL_MIN_TOKENS
    requests = [DecodeRequest(source=score + [EOS], prefix=p, target_bars=6, timesigs=timesigs, bar_budget=40,
                              stop_at=400) for p in prefixes]

    def run() -> list[list[int]]:
        out = decode(model, requests, table, grammar, SamplingOptions(), torch.Generator().manual_seed(3),
                     static=static)
        return [r.tokens for r in out]

    prefilled = run()
    monkeypatch.setattr(decode_module, "PREFILL_MIN_TOKENS", 10**9)
    assert prefilled == run()
    assert all(out[: len(p)] == p and out.count(BAR) == 6 for out, p in zip(prefilled, prefixes, strict=True))


def _ordinal_grammar() -> TokenGrammar:
    tokens = ["PAD_None", "BOS_None", "EOS_None", "MASK_None", "Bar_None", "Velocity_40", "Velocity_20",
              "Velocity_60", "Pitch_60", "Tempo_100.0", "Tempo_80.0"]
    return TokenGrammar(tokens, len(tokens), 48)


def test_ordinal_pick_takes_the_median_or_mean_bin_of_the_drawn_type():
    from instruct_museformer.render.decode import ordinal_pick

    grammar = _ordinal_grammar()
    # velocities 20 (id 6): 0.2, 40 (id 5): 0.25, 60 (id 7): 0.55 -> median 60; mean 20*.2+40*.25+60*.55 = 47 -> 40
    probs = torch.tensor([0, 0, 0, 0, 0, 0.25, 0.2, 0.55, 0, 0, 0])
    x = torch.log(probs).unsqueeze(0).expand(2, -1)
    sampled = torch.tensor([6, 6])
    types = torch.zeros(11, dtype=torch.bool)
    types[grammar.types[5]] = True
    assert ordinal_pick(x, sampled, grammar, types, "median").tolist() == [7, 7]
    assert ordinal_pick(x, sampled, grammar, types, "mean").tolist() == [5, 5]
    # a drawn token of another type (or of a type not asked for) is kept as drawn
    pitch_row = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 0, 1.0, 0, 0]]).log()
    assert ordinal_pick(pitch_row, torch.tensor([8]), grammar, types, "median").tolist() == [8]
    assert ordinal_pick(x[:1], sampled[:1], grammar, torch.zeros(11, dtype=torch.bool), "median").tolist() == [6]


def test_ordinal_temperature_sharpens_the_bins_and_keeps_the_type_probability():
    from instruct_museformer.render.decode import SamplingOptions, temper_within_types, tempered_groups

    grammar = _ordinal_grammar()
    probs = torch.tensor([0, 0, 0, 0, 0.1, 0.25, 0.2, 0.15, 0.1, 0.12, 0.08])  # Bar, 3 velocities, pitch, 2 tempos
    x = torch.log(probs).unsqueeze(0)
    opts = SamplingOptions(ordinal_types=("velocity",), ordinal_temperature=0.5)
    groups = tempered_groups(opts, grammar, x.device)
    assert groups.shape == (1, 11) and groups[0].nonzero().flatten().tolist() == [5, 6, 7]
    out = torch.softmax(temper_within_types(x, groups, 0.5), dim=-1)[0]
    torch.testing.assert_close(out[5:8].sum(), torch.tensor(0.6))  # the velocity type keeps its mass
    squared = probs[5:8] ** 2
    torch.testing.assert_close(out[5:8], 0.6 * squared / squared.sum())  # its bins at temperature 0.5
    torch.testing.assert_close(out[[4, 8, 9, 10]], probs[[4, 8, 9, 10]])  # other types untouched
    # a row where the type is filtered out entirely stays as it was (no NaN)
    none = x.clone()
    none[0, 5:8] = float("-inf")
    torch.testing.assert_close(temper_within_types(none, groups, 0.5), none)
    assert tempered_groups(SamplingOptions(), grammar, x.device) is None  # off by default


def test_ordinal_temperature_needs_sampling():
    from instruct_museformer.errors import UserError
    from instruct_museformer.render.decode import SamplingOptions

    with pytest.raises(UserError, match="--ordinal-temperature"):
        SamplingOptions(ordinal="median", ordinal_temperature=0.5).check()
    with pytest.raises(UserError, match="must be > 0"):
        SamplingOptions(ordinal_temperature=0.0).check()


def test_ordinal_decoding_renders_grammatically_and_steadier(setup):
    """Median velocities vary less than sampled ones on the same model, and the rendering stays grammatical."""
    tokenizer, model, grammar, table = setup
    score = _score(tokenizer, 4, 5)
    vocab = Vocab(tokenizer)
    spreads = {}
    for mode in ("sample", "median", "tempered"):
        ordinal, cold = ("sample", 0.02) if mode == "tempered" else (mode, 1.0)  # tiny model: near-flat logits
        opts = SamplingOptions(topk=0, temperature=1.5, ordinal=ordinal, ordinal_types=("velocity",),
                               ordinal_temperature=cold)
        (out,) = render_token_bars(model, [score], table, grammar, opts, torch.Generator().manual_seed(0))
        _assert_grammatical(out, score, grammar)
        velocities = [int(vocab.tokens[t].split("_")[1]) for t in out if vocab.tokens[t].startswith("Velocity_")]
        spreads[mode] = torch.tensor(velocities, dtype=torch.float).std().item()
    assert spreads["median"] < spreads["sample"] and spreads["tempered"] < spreads["sample"]


def test_feed_drawn_needs_a_picked_ordinal_type():
    from instruct_museformer.errors import UserError

    SamplingOptions(ordinal_types=("tempo", "velocity"), ordinal="mean", feed_drawn=("velocity",)).check()
    with pytest.raises(UserError, match="expected some of tempo, velocity"):
        SamplingOptions(ordinal="mean", feed_drawn=("duration",)).check()
    with pytest.raises(UserError, match="needs --ordinal median or mean"):
        SamplingOptions(ordinal="sample", feed_drawn=("velocity",)).check()
    with pytest.raises(UserError, match="needs --ordinal median or mean"):
        SamplingOptions(ordinal="mean", ordinal_types=("tempo",), feed_drawn=("velocity",)).check()


def test_feed_drawn_plays_the_picked_bins_along_a_drawn_path(setup):
    """With the velocity fed back as drawn, the model reads exactly what it reads when the velocity is sampled
    (same seed), and the output differs from that only in its Velocity tokens, which are the picked bins."""
    tokenizer, model, grammar, table = setup
    vocab = Vocab(tokenizer)
    score = _score(tokenizer, 6, 7)
    kwargs = dict(topk=0, temperature=1.5, ordinal="mean")
    sampled_velocity = SamplingOptions(ordinal_types=("tempo",), **kwargs)
    fed_drawn = SamplingOptions(ordinal_types=("tempo", "velocity"), feed_drawn=("velocity",), **kwargs)
    picked = SamplingOptions(ordinal_types=("tempo", "velocity"), **kwargs)
    outs = {}
    for name, opts in (("sampled", sampled_velocity), ("fed", fed_drawn), ("picked", picked)):
        opts.check()
        (outs[name],) = render_token_bars(model, [score], table, grammar, opts, torch.Generator().manual_seed(0),
                                          window_tokens=64)  # several windows: their context is what was read
        _assert_grammatical(outs[name], score, grammar)
    assert len(outs["fed"]) == len(outs["sampled"])
    is_velocity = [vocab.tokens[t].startswith("Velocity_") for t in outs["sampled"]]
    differs = [a != b for a, b in zip(outs["fed"], outs["sampled"], strict=True)]
    assert all(v for v, d in zip(is_velocity, differs, strict=True) if d)  # only velocities differ
    assert any(differs)
    assert all(vocab.tokens[t].startswith("Velocity_") for t, v in zip(outs["fed"], is_velocity, strict=True) if v)
    assert outs["fed"] != outs["picked"]  # the path is not the picked one


def test_decode_reports_what_the_model_read(setup):
    tokenizer, model, grammar, table = setup
    score = _score(tokenizer, 3, 8)
    request = DecodeRequest(score, target_bars=3, timesigs=[bar[0] for bar in split_bars(score)], bar_budget=400)
    opts = SamplingOptions(topk=0, temperature=1.5, ordinal="mean", feed_drawn=("velocity",))
    (plain,) = decode(model, [request], table, grammar, SamplingOptions(topk=0, ordinal="mean"),
                      torch.Generator().manual_seed(1))
    (fed,) = decode(model, [request], table, grammar, opts, torch.Generator().manual_seed(1))
    assert plain.context is None
    assert fed.context is not None and len(fed.context) == len(fed.tokens)
