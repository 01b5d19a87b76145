"""A researcher's own tokens through the seed's workflow (issue #18): preprocess -> train -> resume -> validate
-> generate, with a default MidiTok REMI tokenizer.json, without any tokenizer, as a language model, with a bar
token other than 4, and with a tokenizer that does not fit the dictionary."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import symusic
from own_token_helpers import BACH, BARS, SEED_PREPROCESS, write_own_tokens
from train_helpers import SEED_COMMAND

from instruct_museformer.cli import main

# the seed's flags, then a tiny model, two updates, no worker processes (the last occurrence of a flag wins)
CKPT = "checkpoints/museformer_instruct/checkpoint_last"
SMALL = ("--num-layers 2 --attention-embed-dim 32 --num-attention-heads 2 --ffn-embed-dim 64 "
         "--bar-abs-pos-embed-dim 16 --beat-abs-pos-embed-dim 8 --truncate-train 128 --truncate-valid 128 "
         "--max-update 2 --num-workers 0 --cpu")


def _train(capsys: pytest.CaptureFixture[str], *extra: str, data: str = "data-bin/instruct_museformer") -> str:
    argv = shlex.split(SEED_COMMAND)
    argv[0] = data
    assert main(["train", *argv, *shlex.split(SMALL), *extra]) == 0
    return capsys.readouterr().out


def _generate(capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[str, str]:
    assert main(["generate", "data-bin/instruct_museformer", "--path", CKPT,
                 "--cpu", "--max-len-a", "0.1", "--max-len-b", "8", "--seed", "2", *extra]) == 0
    captured = capsys.readouterr()
    return captured.out, captured.err


@pytest.fixture
def own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_a_default_miditok_remi_through_the_seed_workflow(own: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_own_tokens(own)
    assert main(shlex.split(SEED_PREPROCESS)) == 0
    assert (own / "data-bin/instruct_museformer/tokenizer.json").is_file()
    out = _train(capsys)
    assert "MidiTok REMI tokenizer: beats from 96 Position tokens, 8 per beat" in out
    assert re.search(r"saved checkpoint checkpoints/museformer_instruct/checkpoint_last \(epoch 1 @ 2 updates", out)
    trained_with = json.loads((own / CKPT / "config.json").read_text())
    assert trained_with["tokenizer"]["tokenization"] == "REMI" and trained_with["args"]["eob_token"] is None
    out = _train(capsys, "--max-update", "3")  # resume
    assert "loaded checkpoint checkpoints/museformer_instruct/checkpoint_last" in out and "@ 3 updates" in out
    assert main(["validate", "data-bin/instruct_museformer", "--path", CKPT,
                 "--valid-subset", "valid,test", "--cpu"]) == 0
    assert re.search(r"valid on 'test' subset \| loss [\d.]+ \| ppl [\d.]+", capsys.readouterr().out)
    out, err = _generate(capsys, "--results-path", "gen")
    hypothesis = re.search(r"^H-0\t\S+\t([\d ]+)$", out, re.M)
    assert re.search(r"^S-0\t", out, re.M) and re.search(r"^T-0\t", out, re.M) and hypothesis
    assert "decoded 1 hypotheses to MIDI with MidiTok in gen/midi" in err
    midi = symusic.Score(str(own / "gen/midi/H-0.mid"))  # a real MIDI file, as MidiTok wrote it
    assert midi.ticks_per_quarter > 0
    # imf render cannot drive this tokenizer: one line pointing to imf generate
    assert main(["render", str(BACH / "midi_score.mid"), "-o", "r.mid", "--checkpoint",
                 CKPT, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MidiTok REMI tokenizer that imf render cannot drive" in err
    assert "imf generate" in err and not (own / "r.mid").exists()


def test_b_no_tokenizer_and_c_language_model(own: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_own_tokens(own, tokenizer_file=False)
    assert main(shlex.split(SEED_PREPROCESS)) == 0
    out = _train(capsys)
    assert out.count("no beats, training with bar structure only") == 1
    out, err = _generate(capsys, "--results-path", "gen")
    assert re.search(r"^H-0\t\S+\t[\d ]*$", out, re.M) and not (own / "gen/midi").exists()
    # (c) the original Museformer's language model on the performance side
    assert main(["preprocess", "--only-source", "--trainpref", "data/tokens/train.perf", "--validpref",
                 "data/tokens/val.perf", "--srcdict", "data/meta/our_dict.txt", "--destdir", "data-bin/lm"]) == 0
    out = _train(capsys, "--save-dir", "checkpoints/lm", data="data-bin/lm")
    assert "task: language_modeling" in out and "bar structure only" in out
    assert main(["generate", "data-bin/lm", "--path", "checkpoints/lm/checkpoint_last", "--task",
                 "museformer_language_modeling", "--num-samples", "2", "--max-len-b", "12", "--cpu"]) == 0
    lines = re.findall(r"^H-(\d)\t\S+\t([\d ]*)$", capsys.readouterr().out, re.M)
    assert [i for i, _ in lines] == ["0", "1"] and all(len(t.split()) <= 12 for _, t in lines)


def test_d_bar_token_named_with_the_flag(own: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from instruct_museformer.train.feed import DataBinSource

    write_own_tokens(own, tokenizer_file=False, relabel_bar=9)
    assert main([*shlex.split(SEED_PREPROCESS), "--eob-token", "9"]) == 0
    assert "Bar tokens" not in capsys.readouterr().err  # paired lines have as many bars (of token 9)
    out = _train(capsys, "--eob-token", "9")
    assert "bar token 9" in out
    trained_with = json.loads((own / CKPT / "config.json").read_text())
    assert trained_with["tokenizer"] is None and trained_with["args"]["eob_token"] == "9"
    source = DataBinSource(Path("data-bin/instruct_museformer"), task="translation", source_lang="score",
                           target_lang="perf", eob_token="9")
    split = source.load("train", None)
    batch = split.collate([split.dataset[i] for i in range(len(split.dataset))])
    # every piece has BARS bar tokens (id 9 here), each closing a bar for Museformer
    assert batch.source.num_complete_bars.tolist() == [BARS] * len(split.dataset)
    assert batch.prev_output.num_complete_bars.tolist() == [BARS] * len(split.dataset)
    assert main(["validate", "data-bin/instruct_museformer", "--path", CKPT,
                 "--cpu"]) == 0
    assert "--eob-token 9" in capsys.readouterr().out  # inherited from the checkpoint's training flags
    out, _ = _generate(capsys)
    assert re.search(r"^H-0\t", out, re.M)


def test_e_tokenizer_not_matching_the_dictionary(own: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import miditok

    write_own_tokens(own)
    other = miditok.REMI(miditok.TokenizerConfig(special_tokens=["PAD", "BOS", "EOS", "MASK"], use_tempos=True))
    other.save(own / "data/meta", filename="tokenizer.json")
    assert main(shlex.split(SEED_PREPROCESS)) == 0
    argv = shlex.split(SEED_COMMAND)
    assert main(["train", *argv, *shlex.split(SMALL)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert re.search(r"data-bin/instruct_museformer/tokenizer.json does not match data-bin/instruct_museformer/"
                     r"dict\.\w+\.txt: the tokenizer has \d+ tokens, the dictionary 357 entries", err)
