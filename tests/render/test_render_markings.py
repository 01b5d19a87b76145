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
