"""The tokenizer configuration: fixed ids, save/load identity, beat table."""

from __future__ import annotations

import json

import pytest
import torch

from instruct_museformer.data.batch import BEAT_INHERIT, BEAT_ZERO
from instruct_museformer.errors import UserError
from instruct_museformer.tokens import specials
from instruct_museformer.tokens.tokenizer import beat_table, load_tokenizer, save_tokenizer, vocab_tokens


def test_special_and_bar_ids(tokenizer):
    vocab = tokenizer.vocab
    assert vocab["PAD_None"] == specials.PAD == 0
    assert vocab["BOS_None"] == specials.BOS == 1
    assert vocab["EOS_None"] == specials.EOS == 2
    assert vocab["MASK_None"] == specials.MASK == 3
    assert vocab["Bar_None"] == specials.BAR == 4
    assert tokenizer.special_tokens_ids == [0, 1, 2, 3]


def test_vocabulary_is_moderate_and_dense(tokenizer):
    tokens = vocab_tokens(tokenizer)
    assert len(tokens) == len(tokenizer) < 1500
    assert tokens[4] == "Bar_None"
    kinds = {t.split("_")[0] for t in tokens}
    assert {"Position", "Tempo", "TimeSig", "Velocity", "Duration", "Pitch", "Pedal", "PedalOff"} <= kinds
    assert sum(t.startswith("Velocity_") for t in tokens) >= 32


def test_save_load_gives_identical_ids(tokenizer, tmp_path):
    path = tmp_path / "tok" / "tokenizer.json"
    save_tokenizer(tokenizer, path)
    loaded = load_tokenizer(path)
    assert loaded.vocab == tokenizer.vocab
    assert vocab_tokens(loaded) == vocab_tokens(tokenizer)
    assert load_tokenizer(path.parent).vocab == tokenizer.vocab  # a directory works too
    assert not list(path.parent.glob(".tok-*"))  # no temp leftovers


@pytest.mark.parametrize("content", ["not json", "[]", json.dumps({"tokenization": "MIDILike", "config": {}})])
def test_load_bad_file_names_it(tmp_path, content):
    path = tmp_path / "tokenizer.json"
    path.write_text(content)
    with pytest.raises(UserError, match="tokenizer.json"):
        load_tokenizer(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_tokenizer(tmp_path / "nope.json")


@pytest.mark.parametrize("beat_mask_ts", [True, False])
def test_beat_table(tokenizer, beat_mask_ts):
    table = beat_table(tokenizer, beat_mask_ts=beat_mask_ts)
    vocab = tokenizer.vocab
    assert table.dtype == torch.long and table.shape == (len(vocab),)
    assert table[vocab["Position_0"]] == 1
    assert table[vocab["Position_17"]] == 18
    assert all(table[i] == BEAT_ZERO for i in range(specials.NUM_SPECIALS))
    assert table[specials.BAR] == BEAT_ZERO
    assert table[vocab["Pitch_60"]] == BEAT_INHERIT
    assert table[vocab["Velocity_63"]] == BEAT_INHERIT
    assert table[vocab["Pedal_0"]] == BEAT_INHERIT
    ts, tempo = vocab["TimeSig_4/4"], vocab[f"Tempo_{tokenizer.tempos[0]}"]
    assert table[ts] == (BEAT_ZERO if beat_mask_ts else BEAT_INHERIT)
    assert table[tempo] == (BEAT_INHERIT if beat_mask_ts else BEAT_ZERO)


def test_loaded_tokenizer_tokenizes_identically(tokenizer, tmp_path):
    from pathlib import Path

    from instruct_museformer.tokens.score import tokenize_score

    score = Path(__file__).resolve().parents[1] / "fixtures" / "nasap" / "Beethoven" / "Piano_Sonatas" / "21-2"
    save_tokenizer(tokenizer, tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert tokenize_score(score / "midi_score.mid", loaded) == tokenize_score(score / "midi_score.mid", tokenizer)
