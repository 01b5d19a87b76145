"""imf render end to end on a tiny random checkpoint: outputs, reports, and bad inputs (exit 2, no file)."""

import json
import shutil

import pytest
from render_helpers import make_checkpoint, write_score_midi

from instruct_museformer.cli import main as imf
from instruct_museformer.tokens.score import read_midi


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    root = tmp_path_factory.mktemp("scores")
    write_score_midi(root / "a.mid", bars=3, notes_per_bar=2)
    write_score_midi(root / "b.mid", bars=2, notes_per_bar=3, numerator=3, seed=1)
    return root


def test_render_one_score(ckpt, scores, tmp_path, capsys):
    out = tmp_path / "a-perf.mid"
    report = tmp_path / "report.json"
    code = imf(["render", str(scores / "a.mid"), "-o", str(out), "--checkpoint", str(ckpt), "--seed", "3",
                "--device", "cpu", "--report", str(report), "--plot", str(tmp_path / "a.png"), "--compile"])
    assert code == 0
    midi = read_midi(out, "tick")
    assert sum(len(t.notes) for t in midi.tracks) >= 0 and midi.tempos
    rows = json.loads(report.read_text())
    assert rows[0]["bars_performance"] == rows[0]["bars_score"] == 3
    assert (tmp_path / "a.png").stat().st_size > 1000
    printed = capsys.readouterr()
    assert "score notes present" in printed.out
    assert "--compile: only on CUDA" in printed.err  # said once, then ignored
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_render_folder_with_samples(ckpt, scores, tmp_path):
    out = tmp_path / "out"
    code = imf(["render", str(scores), "-o", str(out), "--checkpoint", str(ckpt), "--num-samples", "2",
                "--device", "cpu", "--window-tokens", "64", "--context-bars", "1"])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "a.sample1.mid", "a.sample2.mid", "b.sample1.mid", "b.sample2.mid"]


@pytest.mark.skipif(shutil.which("fluidsynth") is None, reason="fluidsynth is not installed")
def test_render_wav(ckpt, scores, tmp_path):
    wav = tmp_path / "a.wav"
    assert imf(["render", str(scores / "b.mid"), "-o", str(tmp_path / "b.mid"), "--checkpoint", str(ckpt),
                "--wav", str(wav), "--device", "cpu"]) == 0
    assert wav.read_bytes()[:4] == b"RIFF"


def _bad(args, tmp_path, capsys, needle):
    out = tmp_path / "out.mid"
    code = imf(["render", *args, "-o", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert needle in err and len(err.splitlines()) == 1, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_bad_inputs(ckpt, scores, tmp_path, capsys):
    c = ["--checkpoint", str(ckpt), "--device", "cpu"]
    _bad([str(tmp_path / "missing.mid"), *c], tmp_path, capsys, "missing.mid: file not found")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    _bad([str(text), *c], tmp_path, capsys, "unsupported score format")
    fake = tmp_path / "fake.mid"
    fake.write_bytes(b"not midi at all")
    _bad([str(fake), *c], tmp_path, capsys, "fake.mid: not a MIDI file")
    empty = tmp_path / "empty.mid"
    write_score_midi(empty, bars=0)
    _bad([str(empty), *c], tmp_path, capsys, "empty.mid: the score has no notes")
    _bad([str(scores / "a.mid"), *c, "--beam", "4"], tmp_path, capsys, "only --beam 1")
    _bad([str(scores / "a.mid"), "--checkpoint", str(tmp_path)], tmp_path, capsys, "no checkpoint there")


def test_vocab_mismatch(scores, tmp_path, capsys):
    bad = make_checkpoint(tmp_path / "bad", vocab=500)
    _bad([str(scores / "a.mid"), "--checkpoint", str(bad)], tmp_path, capsys, "does not match its tokenizer")


def test_language_model_checkpoint_is_refused(scores, tmp_path, capsys):
    lm = make_checkpoint(tmp_path / "lm", task="language_modeling")
    _bad([str(scores / "a.mid"), "--checkpoint", str(lm)], tmp_path, capsys, "language_modeling checkpoint")


def test_colliding_score_names_use_their_folders():
    from pathlib import Path

    from instruct_museformer.cli.render import _score_names

    a = Path("/data/nasap/Bach/Prelude/bwv_854/xml_score.musicxml")
    b = Path("/data/nasap/Beethoven/Piano_Sonatas/21-2/xml_score.musicxml")
    assert _score_names([a, b]) == {a: "Bach__Prelude__bwv_854", b: "Beethoven__Piano_Sonatas__21-2"}
    c, d = Path("/x/one.mid"), Path("/y/two.mid")
    assert _score_names([c, d]) == {c: "one", d: "two"}


def test_checkpoint_without_tokenizer_file_uses_its_config(ckpt, scores, tmp_path):
    copy = tmp_path / "ck"
    shutil.copytree(ckpt, copy)
    (copy / "tokenizer.json").unlink()  # config.json still embeds the tokenizer configuration
    out = tmp_path / "a.mid"
    assert imf(["render", str(scores / "a.mid"), "-o", str(out), "--checkpoint", str(copy), "--device", "cpu"]) == 0
    assert out.is_file()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the message when CUDA is absent")
def test_cuda_requested_without_gpu(ckpt, scores, tmp_path, capsys):
    _bad([str(scores / "a.mid"), "--checkpoint", str(ckpt), "--device", "cuda"], tmp_path, capsys,
         "CUDA is not available")
