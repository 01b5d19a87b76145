"""`imf train` with the user's seed command (small model flags, CPU) and `imf validate` on its checkpoint."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from train_helpers import SEED_COMMAND

from instruct_museformer.cli import main


def test_seed_command_trains_saves_logs_and_validates(data_bin: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    argv = shlex.split(SEED_COMMAND)
    argv[0] = str(data_bin)
    small = (f"--num-layers 2 --attention-embed-dim 32 --num-attention-heads 2 --ffn-embed-dim 64 "
             f"--bar-abs-pos-embed-dim 16 --beat-abs-pos-embed-dim 8 --truncate-train 64 --truncate-valid 48 "
             f"--max-update 4 --warmup-updates 2 --save-interval-updates 2 --log-interval 1 --num-workers 1 "
             f"--save-dir {tmp_path / 'ck'} --tensorboard-logdir {tmp_path / 'tb'} --cpu "
             f"--source-lang score --target-lang perf")
    assert main(["train", *argv, *shlex.split(small)]) == 0
    out = capsys.readouterr().out
    assert "training the translation task (museformer_translation) instead" in out
    assert "--user-dir museformer: not needed" in out
    params = re.search(r"num\. model params: (\d+) \(num\. trained: (\d+)\)", out)
    assert params and int(params.group(1)) == int(params.group(2)) > 0
    inner = re.findall(r"train_inner \| epoch 001:\s+(\d+) / (\d+) loss=([\d.]+), ppl=([\d.]+), wps=\d+, ups=[\d.]+, "
                       r"wpb=[\d.]+, bsz=[\d.]+, num_updates=(\d+), lr=[\de.-]+, gnorm=[\d.]+, loss_scale=128, "
                       r"train_wall=\d+, wall=\d+", out)
    assert [int(m[4]) for m in inner] == [1, 2, 3, 4]
    valid = re.findall(r"valid \| epoch 001 \| valid on 'valid' subset \| loss ([\d.]+) \| ppl ([\d.]+) \| .*"
                       r"num_updates (\d+) \| best_loss ([\d.]+)", out)
    assert [int(v[2]) for v in valid] == [2, 4]
    for loss, ppl, _, _ in valid:
        assert float(ppl) == pytest.approx(2 ** float(loss), rel=2e-3)
    ck = tmp_path / "ck"
    assert {p.name for p in ck.iterdir()} >= {"checkpoint_last", "checkpoint_best", "checkpoint_1_2", "checkpoint_1_4"}
    assert list((tmp_path / "tb" / "train_inner").glob("events.out.tfevents.*"))
    assert list((tmp_path / "tb" / "valid").glob("events.out.tfevents.*"))

    # fairseq-validate on the last checkpoint reproduces the last validation loss of training (and reports
    # its progress on a long subset: here after every batch)
    monkeypatch.setattr("instruct_museformer.train.run.VALID_PROGRESS_SECONDS", 0.0)
    assert main(["validate", str(data_bin), "--user-dir", "museformer", "--task", "museformer_language_modeling",
                 "--path", str(ck / "checkpoint_last.pt"), "--batch-size", "1", "--valid-subset", "valid,test",
                 "--truncate-valid", "48", "--truncate-test", "10240", "--cpu"]) == 0
    out = capsys.readouterr().out
    assert "from the checkpoint's training flags: --beat-mask-ts True" in out  # as fairseq-validate does
    line = re.search(r"valid on 'valid' subset \| loss ([\d.]+) \| ppl ([\d.]+)", out)
    assert line and float(line.group(1)) == pytest.approx(float(valid[-1][0]), abs=1e-3)
    assert re.search(r"valid on 'test' subset \| loss [\d.]+ \| ppl [\d.]+", out)
    assert re.search(r"valid on 'test': 1 of \d+ batches, \d+ target tokens, \d+ s", out)
    # the backend switch (flex on a GPU) gives the same loss; on the CPU flex runs eagerly
    results = tmp_path / "out" / "ppl.json"
    assert main(["validate", str(data_bin), "--path", str(ck / "checkpoint_last"), "--batch-size", "1",
                 "--truncate-valid", "48", "--attention-impl", "flex", "--results-json", str(results), "--cpu"]) == 0
    again = re.search(r"valid on 'valid' subset \| loss ([\d.]+)", capsys.readouterr().out)
    assert again and float(again.group(1)) == pytest.approx(float(line.group(1)), abs=1e-3)
    # the JSON result is what imf evaluate --perplexity-json merges
    from instruct_museformer.evaluate.runner import merge_perplexity

    report: dict = {}
    merge_perplexity(report, results)
    valid_result = report["perplexity"]["subsets"]["valid"]
    assert valid_result["loss"] == pytest.approx(float(line.group(1)), abs=1e-3)
    assert valid_result["ppl"] == pytest.approx(2 ** valid_result["loss"], abs=0.006)  # ppl is rounded to 0.01
    assert valid_result["truncate"] == 48 and report["perplexity"]["num_updates"] > 0


def test_cli_errors_are_one_line(data_bin: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(data_bin), "--batch-size", "1", "--warmup-update", "3"]) == 2
    assert "did you mean '--warmup-updates'?" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "nope"), "--batch-size", "1", "--cpu"]) == 2
    assert "no such data-bin directory" in capsys.readouterr().err
    assert main(["validate", str(data_bin), "--path", str(tmp_path / "none"), "--cpu"]) == 2
    assert "no checkpoint there" in capsys.readouterr().err
