"""The model shipped in the package: found without --checkpoint, a one-line error when missing or incomplete,
and the bundled example rendered with it (when its weights are present)."""

import shutil
import time
from pathlib import Path

import pytest
from render_helpers import make_checkpoint, write_score_midi

import instruct_museformer
from instruct_museformer.cli import main as imf
from instruct_museformer.render import default_model
from instruct_museformer.render.default_model import DEFAULT_MODEL_DIR, DEFAULT_MODEL_FILES, default_model_dir
from instruct_museformer.render.pipeline import load_renderer, render_files, write_midi

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "minuet_in_g_bwv_anh114.musicxml"


@pytest.fixture(scope="module")
def score(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("score") / "a.mid"
    write_score_midi(path, bars=2, notes_per_bar=2)
    return path


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> Path:
    """A tiny checkpoint laid out as the packaged model: only the inference files."""
    ckpt = make_checkpoint(tmp_path_factory.mktemp("ckpt"))
    target = tmp_path_factory.mktemp("assets") / "default_model"
    target.mkdir()
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        shutil.copy2(ckpt / name, target / name)
    for name in ("dict.score.txt", "dict.perf.txt"):  # the tiny data-bin has no dictionaries; names suffice
        (target / name).write_text("", encoding="utf-8")
    return target


def test_default_model_lives_in_the_package():
    assert DEFAULT_MODEL_DIR == Path(instruct_museformer.__file__).resolve().parent / "assets" / "default_model"
    assert DEFAULT_MODEL_FILES[0] == "model.safetensors"


def test_render_without_checkpoint_uses_the_packaged_model(packaged, score, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(default_model, "DEFAULT_MODEL_DIR", packaged)
    assert default_model_dir() == packaged
    assert load_renderer(device="cpu").checkpoint == packaged
    out = tmp_path / "a-perf.mid"
    assert imf(["render", str(score), "-o", str(out), "--device", "cpu"]) == 0, capsys.readouterr().err
    assert out.stat().st_size > 0


def _missing_model_error(score: Path, tmp_path: Path, capsys) -> str:
    out = tmp_path / "out.mid"
    code = imf(["render", str(score), "-o", str(out), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "pass --checkpoint" in err, err
    assert not out.exists()
    return err


def test_missing_default_model_is_a_one_line_error(score, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(default_model, "DEFAULT_MODEL_DIR", tmp_path / "default_model")
    assert "no default model in this installation" in _missing_model_error(score, tmp_path, capsys)


def test_incomplete_default_model_is_a_one_line_error(packaged, score, tmp_path, monkeypatch, capsys):
    partial = tmp_path / "default_model"
    shutil.copytree(packaged, partial)
    (partial / "model.safetensors").unlink()
    (partial / "dict.perf.txt").unlink()
    monkeypatch.setattr(default_model, "DEFAULT_MODEL_DIR", partial)
    assert "lacks model.safetensors, dict.perf.txt" in _missing_model_error(score, tmp_path, capsys)


@pytest.mark.skipif(not (DEFAULT_MODEL_DIR / "model.safetensors").is_file(),
                    reason="the packaged default model's weights (assets/default_model/model.safetensors) are absent")
def test_bundled_example_renders_with_the_packaged_model(tmp_path):
    """The README's quick start: the bundled minuet (16 bars, ~10 s on one CPU thread) with the shipped model."""
    from instruct_museformer.render.decode import SamplingOptions

    renderer = load_renderer(device="cpu")
    start = time.perf_counter()
    (rendering,) = render_files(renderer, [EXAMPLE], SamplingOptions(8, None, 1.0), seed=1)
    elapsed = time.perf_counter() - start
    assert rendering.match.bars_score == rendering.match.bars_performance == 16
    assert write_midi(rendering.tokens, renderer.tokenizer, tmp_path / "minuet.mid") > 0
    print(f"{len(rendering.tokens)} tokens in {elapsed:.1f} s, score notes present "
          f"{100 * rendering.match.fraction_present:.1f}%")
