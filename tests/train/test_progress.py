"""Log line formats (fairseq's simple and json), the tqdm bar, and TensorBoard scalars."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from instruct_museformer.train.progress import ProgressLogger, perplexity, round_stats

STATS = {"loss": 9.12345, "ppl": perplexity(9.12345), "wps": 1234.6, "ups": 0.456, "wpb": 85.0, "bsz": 2.0,
         "num_updates": 10, "lr": 3.125e-07, "gnorm": 2.34567, "loss_scale": 128.0, "train_wall": 12.4, "wall": 20.6}


def test_simple_lines_match_fairseq(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    progress = ProgressLogger("simple", str(tmp_path / "tb"))
    with caplog.at_level(logging.INFO):
        progress.log_inner(STATS, epoch=1, position=10, total=123, step=10)
        progress.log_summary({"loss": 8.9, "ppl": perplexity(8.9), "num_updates": 10, "best_loss": 8.9}, tag="valid",
                             epoch=1, step=10, prefix="valid on 'valid' subset")
    progress.close()
    assert caplog.records[0].name == "train_inner"
    assert caplog.records[0].getMessage() == (
        "epoch 001:  10 / 123 loss=9.123, ppl=557.74, wps=1235, ups=0.46, wpb=85, bsz=2, num_updates=10, "
        "lr=3.125e-07, gnorm=2.346, loss_scale=128, train_wall=12, wall=21"
    )
    assert caplog.records[1].getMessage() == (
        "epoch 001 | valid on 'valid' subset | loss 8.9 | ppl 477.71 | num_updates 10 | best_loss 8.9"
    )
    assert list((tmp_path / "tb" / "train_inner").glob("events.out.tfevents.*"))
    assert list((tmp_path / "tb" / "valid").glob("events.out.tfevents.*"))


def test_json_and_tqdm_formats(caplog: pytest.LogCaptureFixture) -> None:
    progress = ProgressLogger("json")
    with caplog.at_level(logging.INFO):
        progress.log_inner(STATS, epoch=2, position=5, total=10, step=15)
    record = json.loads(caplog.records[0].getMessage())
    assert record["epoch"] == 2 and record["update"] == 1.5 and record["loss"] == 9.123
    bar = ProgressLogger("tqdm")
    bar.start_epoch(1, 10)
    bar.advance()
    bar.log_inner(STATS, epoch=1, position=1, total=10, step=1)
    assert bar._bar is not None and bar._bar.n == 1
    bar.close()
    assert bar._bar is None


def test_rounding_and_disabled_ranks(caplog: pytest.LogCaptureFixture) -> None:
    assert round_stats({"wps": 12.6, "loss": 1.23456, "lr": 1e-9}) == {"wps": 13, "loss": 1.235, "lr": 1e-9}
    assert perplexity(1e6) == float("inf")
    with caplog.at_level(logging.INFO):
        ProgressLogger("simple", enabled=False).log_inner(STATS, epoch=1, position=1, total=1, step=1)
    assert not caplog.records
