"""Batch lists per epoch and per rank: too-long samples, disjoint shards, dummy padding, resume offsets."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from instruct_museformer.errors import UserError
from instruct_museformer.model import MuseformerConfig, build_model
from instruct_museformer.model.planning import BatchLayouts
from instruct_museformer.train.feed import (
    DataBinSource,
    _RankBatches,
    batch_stream,
    detect_task,
    epoch_batches,
    groups_per_epoch,
    lm_language,
)
from instruct_museformer.train.run import layout_planner


def test_too_long_samples_are_skipped_in_training_and_rejected_in_validation(
    data_bin: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = DataBinSource(data_bin, task="translation", source_lang="score", target_lang="perf")
    split = source.load("train", None)
    sizes = np.asarray(split.dataset.sizes)
    limit = int(np.sort(sizes)[-3])  # the two longest samples (or more, with ties) are too long
    kwargs = dict(max_positions=limit, batch_size=2, max_tokens=None, seed=1, epoch=1)
    with caplog.at_level(logging.WARNING):
        batches = epoch_batches(source, split, shuffle=True, skip_invalid=True, **kwargs)
    kept = sorted(i for b in batches for i in b)
    assert kept == sorted(np.flatnonzero(sizes <= limit).tolist())
    assert f"samples have invalid sizes and will be skipped, max_positions={limit}" in caplog.text
    with pytest.raises(UserError, match="--skip-invalid-size-inputs-valid-test"):
        epoch_batches(source, split, shuffle=False, skip_invalid=False, **kwargs)
    again = epoch_batches(source, split, shuffle=True, skip_invalid=True, **kwargs)
    other_epoch = epoch_batches(source, split, shuffle=True, skip_invalid=True, **(kwargs | {"epoch": 2}))
    assert again == batches and sorted(map(sorted, other_epoch)) == sorted(map(sorted, batches))


def test_ranks_take_disjoint_slices_padded_with_dummies(data_bin: Path) -> None:
    source = DataBinSource(data_bin, task="translation", source_lang="score", target_lang="perf")
    split = source.load("train", None)
    batches = [[0], [1], [2], [3], [4]]
    shards = [_RankBatches(split, batches, rank, 2, 0) for rank in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 3
    ids = [[shard[i][1].ids.tolist() for i in range(3)] for shard in shards]
    dummies = [[shard[i][0] for i in range(3)] for shard in shards]
    assert ids[0] == [[0], [2], [4]] and ids[1][:2] == [[1], [3]]
    assert dummies == [[False, False, False], [False, False, True]]  # rank 1 runs a zero-weight dummy
    resumed = _RankBatches(split, batches, 0, 2, 2)
    assert len(resumed) == 1 and resumed[0][1].ids.tolist() == [4]
    assert groups_per_epoch(5, 2, 1) == 3 and groups_per_epoch(5, 1, 2) == 3 and groups_per_epoch(6, 2, 2) == 2


def test_detect_task(data_bin: Path, tmp_path: Path) -> None:
    assert detect_task(data_bin, "score", "perf") == "translation"
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "train.idx").write_bytes(b"")
    assert detect_task(lm, "score", "perf") == "language_modeling"
    only_source = tmp_path / "only_source"
    only_source.mkdir()
    (only_source / "train.perf-None.perf.idx").write_bytes(b"")
    assert detect_task(only_source, "score", "perf") == "language_modeling"
    assert lm_language(only_source, "score") == "perf"
    with pytest.raises(UserError, match="no binarized data"):
        detect_task(tmp_path, "score", "perf")


@pytest.mark.parametrize("num_workers", [0, 1])
def test_batch_stream_attaches_the_models_layouts(data_bin: Path, num_workers: int) -> None:
    """The layouts are built where the batches are collated (the workers), and the model takes them."""
    source = DataBinSource(data_bin, task="translation", source_lang="score", target_lang="perf")
    split = source.load("train", None)
    cfg = MuseformerConfig(
        vocab_size=source.vocab_size, task="translation", num_layers=1, encoder_layers=1, attention_embed_dim=32,
        num_attention_heads=2, ffn_embed_dim=32, bar_abs_pos_embed_dim=8, beat_abs_pos_embed_dim=8,
    )
    model = build_model(cfg).eval()
    planner = layout_planner(model, torch.device("cpu"))
    stream = batch_stream(split, [[0, 1], [2]], rank=0, world_size=1, start=0, num_workers=num_workers,
                          prepare=planner.prepare)  # fmt: skip
    for dummy, batch in stream:
        assert not dummy and isinstance(batch.layouts, BatchLayouts)
        with torch.no_grad():
            prepared = model(batch)
            batch.layouts = None
            torch.testing.assert_close(prepared, model(batch), rtol=0, atol=0)
    assert layout_planner(torch.nn.Linear(2, 2), torch.device("cpu")) is None  # not a Museformer: nothing to plan


def test_batch_workers_outlive_a_stop_signal_to_the_process_group(data_bin: Path) -> None:
    """SIGTERM to every process of the job (a time limit): the trainer saves on it and needs its next batches,
    so the workers must not die of it."""
    import os
    import signal

    source = DataBinSource(data_bin, task="translation", source_lang="score", target_lang="perf")
    split = source.load("train", None)
    stream = batch_stream(split, [[0], [1], [2]], rank=0, world_size=1, start=0, num_workers=1)
    batches = iter(stream)
    next(batches)
    (worker,) = batches._workers  # the DataLoader's worker process (private, but the point of the test)
    os.kill(worker.pid, signal.SIGTERM)
    worker.join(timeout=1.0)
    assert worker.is_alive()
    assert len(list(batches)) == 2  # the remaining batches still arrive
