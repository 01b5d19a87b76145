"""Killing training and re-running the same command continues the same loss curve, to the bit."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from train_helpers import tiny_model

from instruct_museformer.data.batch import Batch
from instruct_museformer.errors import UserError
from instruct_museformer.train.feed import DataBinSource
from instruct_museformer.train.options import parse_train_args
from instruct_museformer.train.run import Hooks, train
from instruct_museformer.train.trainer import StepResult, Trainer


class Killed(Exception):
    """Stands in for SIGKILL / Ctrl-C in the middle of training."""


def _argv(data_bin: Path, save_dir: Path, *extra: str) -> list[str]:
    return [str(data_bin), "--arch", "museformer_tiny", "--batch-size", "2", "--lr", "5e-3", "--warmup-updates", "3",
            "--max-update", "9", "--save-dir", str(save_dir), "--save-interval-updates", "2", "--log-interval", "1",
            "--num-workers", "0", "--cpu", "--fp16", "--dropout", "0.1", "--seed", "3", "--log-format", "simple",
            "--weight-decay", "0.01", "--adam-betas", "(0.9, 0.98)", *extra]


def _run(argv: list[str], kill_at: int | None = None) -> list[tuple[int, float]]:
    curve: list[tuple[int, float]] = []

    def record(num_updates: int, result: StepResult) -> None:
        curve.append((num_updates, result.loss))
        if num_updates == kill_at:
            raise Killed

    try:
        train(parse_train_args(argv), Hooks(on_update=[record]))
    except Killed:
        pass
    return curve


def test_resume_continues_the_same_loss_curve(data_bin: Path, tmp_path: Path) -> None:
    full = _run(_argv(data_bin, tmp_path / "full"))
    assert [n for n, _ in full] == list(range(1, 10))
    argv = _argv(data_bin, tmp_path / "killed")
    first = _run(argv, kill_at=5)  # the last checkpoint is from update 4, mid-epoch
    assert [n for n, _ in first] == [1, 2, 3, 4, 5]
    second = _run(argv, kill_at=7)  # the same command again: resumes from checkpoint_last (update 4)
    assert [n for n, _ in second] == [5, 6, 7]
    third = _run(argv)  # resumes from update 6, saved at the end of epoch 1 (6 batches of 2 samples)
    assert [n for n, _ in third] == [7, 8, 9]
    assert first[:4] + second[:2] + third == full  # exact equality, mid-epoch and at the epoch boundary
    assert full[-1][1] < full[0][1]


def test_reset_dataloader_restarts_the_epoch(data_bin: Path, tmp_path: Path) -> None:
    argv = _argv(data_bin, tmp_path / "ck", "--max-update", "2")
    _run(argv)
    again = _run(_argv(data_bin, tmp_path / "ck", "--max-update", "3", "--reset-dataloader", "--reset-optimizer"))
    assert [n for n, _ in again] == [3]
    with pytest.raises(UserError, match="model flags differ from the checkpoint's \\(num_layers\\)"):
        _run(_argv(data_bin, tmp_path / "ck", "--max-update", "4", "--num-layers", "3"))
    assert [n for n, _ in _run(_argv(data_bin, tmp_path / "ck", "--max-update", "4", "--dropout", "0.3"))] == [4]


def test_fp16_overflow_skips_the_update_and_halves_the_scale(data_bin: Path) -> None:
    args = parse_train_args(_argv(data_bin, Path("unused")))
    source = DataBinSource(data_bin, task="translation", source_lang="score", target_lang="perf")
    split = source.load("train", None)
    batch: Batch = split.collate([split.dataset[0], split.dataset[1]])
    from instruct_museformer.model.config import MuseformerConfig

    trainer = Trainer(args, tiny_model(MuseformerConfig(vocab_size=source.vocab_size, attention_embed_dim=16)),
                      device=torch.device("cpu"))
    trainer.set_num_updates(5)
    assert trainer.scaler is not None
    trainer.scaler.scale = 2.0**127  # the scaled loss overflows float32: inf gradients
    before = [p.detach().clone() for p in trainer.params]
    result = trainer.train_step([(False, batch)])
    assert result.overflow and trainer.num_updates == 5 and trainer.scaler.scale == 2.0**126
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.params, strict=True))
    assert not trainer.optimizer.state  # no Adam step was taken
    trainer.scaler.scale = 128.0
    result = trainer.train_step([(False, batch)])
    assert not result.overflow and trainer.num_updates == 6 and result.loss == pytest.approx(result.loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.params, strict=True))


def test_resume_with_the_expressive_levers_continues_the_same_loss_curve(data_bin: Path, tmp_path: Path) -> None:
    """Soft ordinal targets, class weights, augmentation and history noise are part of the reproducible run
    (seeded per batch)."""
    levers = ("--ordinal-smoothing", "1.0", "--class-loss-weights", "Velocity=2,Tempo=2", "--augment-transpose", "3",
              "--augment-velocity", "2", "--augment-tempo", "2", "--history-noise", "0.3", "--max-update", "5")
    full = _run(_argv(data_bin, tmp_path / "full", *levers))
    argv = _argv(data_bin, tmp_path / "killed", *levers)
    first = _run(argv, kill_at=3)
    second = _run(argv)
    assert first[:2] + second == full
    plain = _run(_argv(data_bin, tmp_path / "plain", "--max-update", "5"))
    assert plain != full  # the levers change the run
    quiet = _run(_argv(data_bin, tmp_path / "quiet", *levers[:-4], "--max-update", "5"))
    assert quiet[0] != full[0]  # the history noise changes even the first step's loss


def test_carried_markings_change_the_chunks_resume_exactly_and_are_recorded(data_bin: Path, tmp_path: Path) -> None:
    from instruct_museformer.train.checkpoint import read_config

    chunks = ("--chunk-train", "--truncate-train", "24", "--max-update", "5")
    full = _run(_argv(data_bin, tmp_path / "full", *chunks, "--carry-markings"))
    argv = _argv(data_bin, tmp_path / "killed", *chunks, "--carry-markings")
    first = _run(argv, kill_at=3)
    assert first[:2] + _run(argv) == full
    assert _run(_argv(data_bin, tmp_path / "plain", *chunks)) != full  # later chunks read the markings
    assert read_config(tmp_path / "full" / "checkpoint_last")["args"]["carry_markings"] is True
    relative = _run(_argv(data_bin, tmp_path / "relative", *chunks, "--carry-markings", "--tempo-relative-to-mark"))
    assert relative != full  # the Tempo tokens are read relative to the score's
    assert read_config(tmp_path / "relative" / "checkpoint_last")["args"]["tempo_relative_to_mark"] is True
    with pytest.raises(UserError, match="--chunk-train"):
        train(parse_train_args(_argv(data_bin, tmp_path / "unchunked", "--carry-markings")))


def test_sigterm_stops_with_a_checkpoint_and_resumes_exactly(data_bin: Path, tmp_path: Path) -> None:
    import os
    import signal

    full = _run(_argv(data_bin, tmp_path / "full"))
    argv = _argv(data_bin, tmp_path / "term", "--save-interval-updates", "0")
    curve: list[tuple[int, float]] = []

    def record(num_updates: int, result: StepResult) -> None:
        curve.append((num_updates, result.loss))
        if num_updates == 4:
            os.kill(os.getpid(), signal.SIGTERM)  # a time limit: the run ends after the next update, saved

    previous = signal.getsignal(signal.SIGTERM)
    assert train(parse_train_args(argv), Hooks(on_update=[record])) == 0
    assert signal.getsignal(signal.SIGTERM) is previous  # the handlers are put back
    assert [n for n, _ in curve] == [1, 2, 3, 4, 5]
    rest = _run(argv)  # no interval checkpoints: only the signal's checkpoint lets it resume at update 6
    assert curve + rest == full
