"""Checkpoint directories: round trip, self-containedness, atomicity under a crash mid-save."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from instruct_museformer.errors import UserError
from instruct_museformer.model.config import MuseformerConfig
from instruct_museformer.tokens.tokenizer import build_tokenizer, vocab_tokens
from instruct_museformer.train import checkpoint as ckpt
from instruct_museformer.train.checkpoint import (
    CheckpointContents,
    capture_rng,
    load_checkpoint_model,
    load_model_weights,
    load_training_state,
    prune_checkpoints,
    read_config,
    resolve_checkpoint,
    restore_rng,
    save_checkpoint,
)

CFG = MuseformerConfig(vocab_size=979, task="translation", num_layers=1, attention_embed_dim=16, num_attention_heads=2,
                       ffn_embed_dim=32, bar_abs_pos_embed_dim=8, beat_abs_pos_embed_dim=8, block_size=16)


def _contents(model: torch.nn.Module, data_bin: Path | None, updates: int) -> CheckpointContents:
    rng_tensors, rng_py = capture_rng()
    return CheckpointContents(
        model=model, cfg=CFG, args={"lr": 5e-4, "adam_betas": [0.9, 0.98]},
        trainer_state={"num_updates": updates, "epoch": 1, "iterations_in_epoch": updates, "rng": rng_py},
        optimizer_tensors={"exp_avg.w": torch.full((2,), float(updates))}, rng_tensors=rng_tensors,
        data_bin=data_bin,
    )


def _model() -> torch.nn.Module:
    from instruct_museformer.model.museformer import build_model

    return build_model(CFG)


def test_round_trip_is_self_contained(tmp_path: Path, data_bin: Path) -> None:
    torch.manual_seed(0)
    model = _model()
    contents = _contents(model, data_bin, 7)
    expected = torch.rand(3)  # drawn right after the RNG state was captured
    written = save_checkpoint(tmp_path / "ck", ["checkpoint_last", "checkpoint_best"], contents)
    assert [p.name for p in written] == ["checkpoint_last", "checkpoint_best"]
    for directory in written:
        names = {p.name for p in directory.iterdir()}
        assert {"model.safetensors", "config.json", "trainer_state.json", "optimizer.safetensors", "rng.safetensors",
                "dict.score.txt", "dict.perf.txt", "tokenizer.json"} <= names
    loaded, cfg, meta = load_checkpoint_model(tmp_path / "ck" / "checkpoint_best.pt")  # fairseq-style name works
    assert cfg == CFG and meta["num_updates"] == 7 and not loaded.training
    assert meta["tokenizer"]["tokenization"] == "REMI"
    vocab = len(vocab_tokens(build_tokenizer()))  # the data-bin's tokenizer (score markings on: 1,085)
    assert len(meta["dictionaries"]["dict.perf.txt"]) == vocab and meta["args"]["adam_betas"] == [0.9, 0.98]
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    state, optimizer, rng = load_training_state(written[0])
    assert state["iterations_in_epoch"] == 7 and torch.equal(optimizer["exp_avg.w"], torch.full((2,), 7.0))
    torch.manual_seed(123)
    restore_rng(rng, state["rng"])
    assert torch.equal(torch.rand(3), expected)  # the saved RNG state continues where it was captured


def test_crash_mid_save_leaves_old_checkpoint_loadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    save_dir = tmp_path / "ck"
    save_checkpoint(save_dir, ["checkpoint_last"], _contents(model, None, 1))

    def crash(*_: object, **__: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", crash)  # dies half-way through writing the new directory
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(save_dir, ["checkpoint_last"], _contents(model, None, 2))
    monkeypatch.undo()
    assert read_config(save_dir / "checkpoint_last")["num_updates"] == 1
    assert [p.name for p in save_dir.iterdir()] == ["checkpoint_last"]  # no temporary left behind


def test_crash_between_renames_falls_back_to_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    save_dir = tmp_path / "ck"
    save_checkpoint(save_dir, ["checkpoint_last"], _contents(model, None, 1))
    real_rename = ckpt.os.rename
    calls = []

    def rename(src: object, dst: object) -> None:
        calls.append(dst)
        if len(calls) == 2:  # old moved aside, new not yet in place
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(ckpt.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(save_dir, ["checkpoint_last"], _contents(model, None, 2))
    monkeypatch.undo()
    assert not (save_dir / "checkpoint_last").exists()
    assert resolve_checkpoint(save_dir / "checkpoint_last").name == "checkpoint_last.previous"
    assert read_config(save_dir / "checkpoint_last")["num_updates"] == 1
    load_model_weights(_model(), save_dir / "checkpoint_last")
    save_checkpoint(save_dir, ["checkpoint_last"], _contents(model, None, 3))  # the next save repairs the layout
    assert sorted(p.name for p in save_dir.iterdir()) == ["checkpoint_last"]
    assert read_config(save_dir / "checkpoint_last")["num_updates"] == 3


def test_bad_checkpoints_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no checkpoint there"):
        resolve_checkpoint(tmp_path / "missing")
    (tmp_path / "model.pt").write_bytes(b"\x80\x04pickle")
    with pytest.raises(UserError, match="fairseq .pt files are not read"):
        resolve_checkpoint(tmp_path / "model.pt")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.safetensors").write_bytes(b"")
    (bad / "config.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(UserError, match="not an instruct-museformer checkpoint"):
        read_config(bad)


def test_prune_keeps_newest(tmp_path: Path) -> None:
    for name in ("checkpoint_1_5", "checkpoint_1_10", "checkpoint_2_15", "checkpoint1", "checkpoint2", "checkpoint3"):
        (tmp_path / name).mkdir()
    prune_checkpoints(tmp_path, keep_interval_updates=2, keep_last_epochs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint3", "checkpoint_1_10", "checkpoint_2_15"]
