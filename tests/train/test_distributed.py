"""Two gloo processes give the loss curve of one process with the same global batch (update-freq 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch.distributed as dist

from instruct_museformer.train.options import parse_train_args
from instruct_museformer.train.run import Hooks, train
from instruct_museformer.train.trainer import StepResult


class _Recorder:
    """Appends (update, loss, ntokens) of rank 0 to a JSON-lines file (works inside spawned processes)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, num_updates: int, result: StepResult) -> None:
        if dist.is_initialized() and dist.get_rank() != 0:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps([num_updates, result.loss, result.ntokens, result.gnorm]) + "\n")


def _curve(path: Path) -> list[list[float]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("ddp_backend", ["c10d", "legacy_ddp"])
def test_two_processes_equal_one_process_with_update_freq_2(data_bin: Path, tmp_path: Path, ddp_backend: str) -> None:
    common = [str(data_bin), "--arch", "museformer_tiny", "--batch-size", "2", "--lr", "5e-3", "--warmup-updates", "2",
              "--max-update", "4", "--dropout", "0", "--attention-dropout", "0", "--cpu", "--num-workers", "0",
              "--no-save", "--disable-validation", "--log-format", "none", "--seed", "5", "--ddp-backend", ddp_backend]
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    train(parse_train_args(common + ["--update-freq", "2"]), Hooks(on_update=[_Recorder(one)]))
    train(parse_train_args(common + ["--distributed-world-size", "2"]), Hooks(on_update=[_Recorder(two)]))
    a, b = _curve(one), _curve(two)
    assert [row[0] for row in a] == [row[0] for row in b] == [1, 2, 3, 4]
    for (_, loss_a, tok_a, gnorm_a), (_, loss_b, tok_b, gnorm_b) in zip(a, b, strict=True):
        assert tok_a == tok_b  # the same global batch
        assert loss_b == pytest.approx(loss_a, rel=1e-5, abs=1e-6)
        assert gnorm_b == pytest.approx(gnorm_a, rel=1e-4, abs=1e-6)
