"""Bar token and beat table of a data-bin's vocabulary: this project's tokenizer, another MidiTok one, none."""

from __future__ import annotations

import miditok
import pytest
import torch

from instruct_museformer.data.batch import beat_ids_of
from instruct_museformer.data.dictionary import Dictionary
from instruct_museformer.data.vocabulary import MIDITOK, NONE, PROJECT, token_layout
from instruct_museformer.errors import UserError
from instruct_museformer.tokens.tokenizer import beat_table, build_tokenizer, save_tokenizer


def _remi(**config) -> miditok.REMI:
    return miditok.REMI(miditok.TokenizerConfig(special_tokens=["PAD", "BOS", "EOS", "MASK"], **config))


def _dict(path, size, counts=None):
    Dictionary.numeric(size, counts).save(path)
    return path


def test_project_tokenizer_gives_todays_table_padded_to_the_dictionary(tmp_path):
    tokenizer = build_tokenizer()
    save_tokenizer(tokenizer, tmp_path / "tokenizer.json")
    n = len(tokenizer.vocab)
    padded = _dict(tmp_path / "dict.perf.txt", n + 3, [1] * n + [0] * 3)
    layout = token_layout(tmp_path / "tokenizer.json", [padded], n + 3, beat_mask_ts=True)
    assert layout.kind == PROJECT and layout.bar_token == 4
    assert torch.equal(layout.beat_table[:n], beat_table(tokenizer, beat_mask_ts=True))


def test_default_miditok_remi_gives_positions_and_the_bar_flag_names_a_token(tmp_path):
    tokenizer = _remi()
    tokenizer.save(tmp_path, filename="tokenizer.json")
    n = len(tokenizer.vocab)
    d = _dict(tmp_path / "dict.txt", n)
    layout = token_layout(tmp_path / "tokenizer.json", [d], n)
    assert layout.kind == MIDITOK and layout.has_beats and "8 per beat" in layout.description
    ids = tokenizer.vocab
    seq = torch.tensor([2, ids["Bar_None"], ids["Position_4"], ids["Pitch_60"], ids["Velocity_63"],
                        ids["Bar_None"], ids["Pitch_62"]])
    assert beat_ids_of(seq, layout.beat_table).tolist() == [0, 0, 5, 5, 5, 0, 5]
    named = token_layout(tmp_path / "tokenizer.json", [d], n, eob_token="Position_0")
    assert named.bar_token == ids["Position_0"]
    by_id = token_layout(tmp_path / "tokenizer.json", [d], n, eob_token=str(ids["Pitch_60"]))
    assert by_id.bar_token == ids["Pitch_60"]


def test_no_tokenizer_means_no_beats_and_the_flag_is_checked(tmp_path):
    d = _dict(tmp_path / "dict.txt", 40)
    layout = token_layout(None, [d], 40, eob_token="7")
    assert layout.kind == NONE and layout.bar_token == 7 and not layout.has_beats
    assert "bar structure only" in layout.description
    with pytest.raises(UserError, match="--eob-token 2: id 2 is not a content token"):
        token_layout(None, [d], 40, eob_token="2")
    with pytest.raises(UserError, match="--eob-token Bar: not a token id"):
        token_layout(None, [d], 40, eob_token="Bar")


def test_a_tokenizer_that_does_not_fit_the_dictionary_names_both_files(tmp_path):
    tokenizer = _remi(use_tempos=True)
    tokenizer.save(tmp_path, filename="tokenizer.json")
    d = _dict(tmp_path / "dict.score.txt", 357)
    with pytest.raises(UserError, match=r"tokenizer.json does not match .*dict.score.txt: the tokenizer has \d+ "
                                        r"tokens, the dictionary 357 entries"):
        token_layout(tmp_path / "tokenizer.json", [d], 357)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(UserError, match="bad.json: not a tokenizer JSON file"):
        token_layout(tmp_path / "bad.json", [d], 357)
