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
