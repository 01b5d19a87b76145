"""Score markings at render time: read from the score side, never emitted on the performance side."""

from pathlib import Path

import torch
from render_helpers import tiny_translation_renderer
from test_render_notes import assert_follows_score

from instruct_museformer.render.decode import SamplingOptions
from instruct_museformer.render.pipeline import _checkpoint_tokenizer, tokenize_scores
from instruct_museformer.render.windows import render_token_bars
from instruct_museformer.tokens.markings import MARKING_TOKENS
from instruct_museformer.tokens.tokenizer import build_tokenizer

ROOT = Path(__file__).resolve().parents[2]
MARKED = ROOT / "tests" / "fixtures" / "markings" / "all_markings.musicxml"
SHIPPED = ROOT / "instruct_museformer" / "assets" / "default_model"
NOTES_ONLY_V1 = ROOT / "tests" / "fixtures" / "tokenizers" / "notes_only_v1.json"  # the first shipped model's


def test_marked_score_renders_its_notes_and_no_markings():
    tokenizer, model, grammar, table = tiny_translation_renderer()
    marking_ids = sorted(tokenizer[token] for token in MARKING_TOKENS)
    (score,) = tokenize_scores([MARKED], tokenizer)
    assert set(score) & set(marking_ids)
    assert not grammar.follow[:, marking_ids].any()  # no grammar state ever allows a marking token
    out = render_token_bars(model, [score], table, grammar, SamplingOptions(topk=0, temperature=1.5),
                            torch.Generator().manual_seed(0))
    assert not set(out[0]) & set(marking_ids)
    assert_follows_score(score, out[0], grammar, 8)


def test_a_notes_only_checkpoint_tokenizes_scores_as_before(tmp_path):
    """A checkpoint trained before the markings (its tokenizer has no score_markings option) gets the notes-only
    score tokens it was trained on."""
    (tmp_path / "tokenizer.json").write_bytes(NOTES_ONLY_V1.read_bytes())
    notes_only = _checkpoint_tokenizer(tmp_path, {})
    assert len(notes_only) == len(build_tokenizer(score_markings=False))
    assert tokenize_scores([MARKED], notes_only) == tokenize_scores([MARKED], build_tokenizer(score_markings=False))
    assert not set(tokenize_scores([MARKED], notes_only)[0]) & set(range(len(notes_only), 2 * len(notes_only)))


def test_the_shipped_checkpoint_reads_the_markings():
    shipped = _checkpoint_tokenizer(SHIPPED, {})
    (score,) = tokenize_scores([MARKED], shipped)
    assert {shipped[token] for token in MARKING_TOKENS} & set(score)


def test_windows_after_the_first_read_the_markings_in_force(monkeypatch):
    """A model trained with --carry-markings gets, in each later window's first score bar, the mark, tempo word
    and dynamic in force there (as its training chunks did); the first window reads the score as written."""
    from instruct_museformer.data.carried_markings import MarkingsInForce
    from instruct_museformer.render import windows as windows_module
    from instruct_museformer.render.decode import DecodeResult, SamplingOptions
    from instruct_museformer.render.grammar import TokenGrammar
    from instruct_museformer.tokens.specials import BAR
    from instruct_museformer.tokens.tokenizer import build_tokenizer, vocab_tokens

    tokenizer = build_tokenizer()
    names = vocab_tokens(tokenizer)
    ids = {t: i for i, t in enumerate(names)}
    note = ["Pitch_60", "Velocity_63", "Duration_1.0.16"]
    opening = ["TimeSig_4/4", "Position_0", "Tempo_70.86", "TempoWord_adagio", "Dyn_p", *note, "Bar_None"]
    middle = ["TimeSig_4/4", "Position_0", *note, "Bar_None"]
    score = [ids[t] for t in opening + middle * 30]
    sources = []

    def fake_decode(model, requests, *args, **kwargs):  # plays each score bar back as its performance
        out = []
        for request in requests:
            sources.append(request.source)
            bars = windows_module.split_bars(request.source)[: request.target_bars]
            out.append(DecodeResult([t for b in bars for t in b], len(bars), True))
        return out

    monkeypatch.setattr(windows_module, "decode", fake_decode)
    grammar = TokenGrammar.for_tokenizer(tokenizer, len(names))
    carry = MarkingsInForce.build(names)
    played = windows_module.render_token_bars(None, [score], None, grammar, SamplingOptions(), window_tokens=40,
                                              carry=carry, constrain_notes=False)[0]
    assert len(sources) > 2 and played.count(BAR) == score.count(BAR)
    assert sources[0][: len(opening)] == score[: len(opening)]
    for source in sources[1:]:
        assert [names[t] for t in source[:5]] == ["TimeSig_4/4", "Position_0", "Tempo_70.86", "TempoWord_adagio",
                                                  "Dyn_p"]
        assert len(source) <= 40


def test_a_model_of_mark_relative_tempo_reads_ratios_and_plays_the_marked_tempo(monkeypatch):
    """--tempo-relative-to-mark: the model reads the score and its own context with every Tempo moved so the mark
    in force is the reference bin, and what it writes is moved back; a model that plays the reference bin
    everywhere thus plays each section at its mark."""
    from instruct_museformer.data.mark_relative import MarkRelativeTempo
    from instruct_museformer.render import windows as windows_module
    from instruct_museformer.render.decode import DecodeResult, SamplingOptions
    from instruct_museformer.render.grammar import TokenGrammar
    from instruct_museformer.tokens.tokenizer import build_tokenizer, vocab_tokens

    tokenizer = build_tokenizer()
    names = vocab_tokens(tokenizer)
    ids = {t: i for i, t in enumerate(names)}
    relative = MarkRelativeTempo.build(names)
    reference = int(relative.ids[relative.reference])

    def bar(tempo):
        return ["TimeSig_4/4", "Position_0", *([tempo] if tempo else []), "Pitch_60", "Velocity_63", "Duration_1.0.16",
                "Bar_None"]

    marks = ["Tempo_70.86"] + [None] * 14 + ["Tempo_146.34"] + [None] * 14
    score = [ids[t] for m in marks for t in bar(m)]
    seen = []

    def fake_decode(model, requests, *args, **kwargs):  # every bar at the reference bin: "as marked"
        out = []
        for request in requests:
            seen.append(request)
            played = [t for _ in range(request.target_bars) for t in
                      [ids["TimeSig_4/4"], ids["Position_0"], reference, ids["Pitch_60"], ids["Velocity_63"],
                       ids["Duration_1.0.16"], 4]]
            out.append(DecodeResult(request.prefix + played[len(request.prefix):], request.target_bars, True))
        return out

    monkeypatch.setattr(windows_module, "decode", fake_decode)
    grammar = TokenGrammar.for_tokenizer(tokenizer, len(names))
    played = windows_module.render_token_bars(None, [score], None, grammar, SamplingOptions(), window_tokens=60,
                                              relative=relative, constrain_notes=False)[0]
    tempos = [names[t] for t in played if names[t].startswith("Tempo_")]
    assert tempos == ["Tempo_70.86"] * 15 + ["Tempo_146.34"] * 15
    assert len(seen) > 2
    for request in seen:  # the model reads marks and its own context at the reference bin
        assert {names[t] for t in request.source + request.prefix if names[t].startswith("Tempo_")} == {
            names[reference]}
