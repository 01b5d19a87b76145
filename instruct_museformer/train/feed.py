"""Data feeding for training: which task a data-bin holds, its splits, and per-rank batch streams.

The data-bin is read through ``instruct_museformer.data.dataset`` (truncation at bar boundaries,
collation into :class:`~instruct_museformer.data.batch.Batch`). What this module adds is what fairseq's
trainer adds around a dataset: skipping samples longer than --tokens-per-sample, a deterministic batch
order per (seed, epoch), disjoint per-rank slices of the batch list grouped by --update-freq, resuming
inside an epoch, and DataLoader workers (--num-workers).
"""

from __future__ import annotations

import logging
import math
import re
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ..data.batch import Batch
from ..errors import UserError

logger = logging.getLogger("imf.train")


@dataclass
class SplitData:
    """One loaded split: the dataset (``__len__``, ``__getitem__``, ``sizes``) and its collater."""

    name: str
    dataset: Any
    collate: Callable[[list[Any]], Batch]


class DataSource(Protocol):
    """What training needs from data: the task, vocabulary size, splits and a batching rule."""

    task: str  # "translation" or "language_modeling"
    vocab_size: int
    data_bin: Path | None
    langs: tuple[str, ...]

    def load(self, split: str, truncate: int | None, chunk: bool = False, carry: Any = None,
             relative: Any = None) -> SplitData: ...

    def batch_indices(
        self, sizes: np.ndarray, *, batch_size: int | None, max_tokens: int | None, seed: int, epoch: int,
        shuffle: bool,
    ) -> list[list[int]]: ...


class _Collater:
    """Picklable ``collate(samples, beat_table, bar_token)`` closure for DataLoader workers."""

    def __init__(self, collate: Callable[..., Batch], beat_table: torch.Tensor, bar_token: int) -> None:
        self.collate = collate
        self.beat_table = beat_table
        self.bar_token = bar_token

    def __call__(self, samples: list[Any]) -> Batch:
        return self.collate(samples, self.beat_table, self.bar_token)


_LM_PAIR = re.compile(r"\.([^.]+)-None\.\1\.idx$")  # fairseq-preprocess --only-source -s LANG


def lm_language(data_bin: Path, preferred: str) -> str:
    """The LANG of ``{split}.LANG-None.LANG`` files in an LM data-bin (``preferred`` if present or none)."""
    found = sorted({m.group(1) for p in data_bin.iterdir() if (m := _LM_PAIR.search(p.name))})
    return preferred if preferred in found or not found else found[0]


def detect_task(data_bin: Path, source_lang: str, target_lang: str) -> str:
    """"translation" if the data-bin holds {split}.{src}-{tgt}.* files, "language_modeling" if {split}.bin."""
    if not data_bin.is_dir():
        raise UserError(f"{data_bin}: no such data-bin directory")
    pair = (f"{source_lang}-{target_lang}", f"{target_lang}-{source_lang}")
    names = [p.name for p in data_bin.iterdir()]
    if any(f".{p}.{target_lang}.idx" in n for n in names for p in pair):
        return "translation"
    if any(n.endswith(".idx") and (n.count(".") == 1 or _LM_PAIR.search(n)) for n in names):
        return "language_modeling"
    raise UserError(
        f"{data_bin}: no binarized data (expected {{split}}.{source_lang}-{target_lang}.{target_lang}.idx "
        "or {split}.idx from `imf preprocess`)"
    )


class DataBinSource:
    """A data-bin written by ``imf preprocess``, read with ``instruct_museformer.data.dataset``."""

    def __init__(
        self, data_bin: Path, *, task: str, source_lang: str, target_lang: str, beat_mask_ts: bool = False,
        eob_token: str | None = None,
    ) -> None:
        from ..data import dataset as data_api
        from ..data.dictionary import Dictionary
        from ..data.vocabulary import TOKENIZER_FILE, token_layout

        self._api = data_api
        self.data_bin = data_bin
        self.task = task
        if task == "language_modeling":
            lang = lm_language(data_bin, source_lang)
            if lang != source_lang:
                logger.info(f"{data_bin}: language-model data of language '{lang}' (from the file names)")
            source_lang = target_lang = lang
        self.source_lang, self.target_lang = source_lang, target_lang
        self.langs = (source_lang, target_lang)
        if task == "translation":
            dict_paths = [data_bin / f"dict.{target_lang}.txt", data_bin / f"dict.{source_lang}.txt"]
        else:
            dict_paths = [data_bin / f"dict.{lang}.txt" for lang in (None, source_lang, target_lang)]
            dict_paths[0] = data_bin / "dict.txt"
            dict_paths = [next((p for p in dict_paths if p.is_file()), dict_paths[0])]
        sizes = []
        for path in dict_paths:
            if not path.is_file():
                raise UserError(f"{path}: missing dictionary in the data-bin")
            sizes.append(len(Dictionary.load(path)))
        if len(set(sizes)) != 1:
            raise UserError(
                f"{data_bin}: source and target dictionaries differ in size ({sizes[1]} vs {sizes[0]}); "
                "the model shares one vocabulary (preprocess with the same --srcdict and --tgtdict)"
            )
        self.vocab_size = sizes[0]
        self.layout = token_layout(data_bin / TOKENIZER_FILE, dict_paths, self.vocab_size,
                                   beat_mask_ts=beat_mask_ts, eob_token=eob_token)
        self.beat_table, self.bar_token = self.layout.beat_table, self.layout.bar_token
        logger.info(f"tokens: {self.layout.description}")

    def load(self, split: str, truncate: int | None, chunk: bool = False, carry: Any = None,
             relative: Any = None) -> SplitData:
        """``carry`` / ``relative``: ``data.views`` (``--carry-markings``, ``--tempo-relative-to-mark``)."""
        kind = "translation" if self.task == "translation" else "lm"
        dataset = self._api.load_dataset(
            self.data_bin, split, task=kind, source_lang=self.source_lang, target_lang=self.target_lang,
            truncate=truncate, chunk=chunk, bar_token=self.bar_token, carry=carry, relative=relative,
        )
        return SplitData(split, dataset, _Collater(self._api.collate, self.beat_table, self.bar_token))

    def batch_indices(
        self, sizes: np.ndarray, *, batch_size: int | None, max_tokens: int | None, seed: int, epoch: int,
        shuffle: bool,
    ) -> list[list[int]]:
        return self._api.batch_indices(
            sizes, batch_size=batch_size, max_tokens=max_tokens, seed=seed, epoch=epoch, shuffle=shuffle
        )


def epoch_batches(
    source: DataSource,
    split: SplitData,
    *,
    max_positions: int,
    batch_size: int | None,
    max_tokens: int | None,
    seed: int,
    epoch: int,
    shuffle: bool,
    skip_invalid: bool,
) -> list[list[int]]:
    """The whole batch list of one epoch (identical on every rank), too-long samples left out.

    fairseq skips (training) or rejects (validation, unless --skip-invalid-size-inputs-valid-test)
    samples longer than max_positions, with the same warning text.
    """
    sizes = np.asarray(split.dataset.sizes)
    keep = np.nonzero(sizes <= max_positions)[0]
    if len(keep) < len(sizes):
        bad = np.nonzero(sizes > max_positions)[0]
        if not skip_invalid:
            raise UserError(
                f"split '{split.name}': sample #{int(bad[0])} has {int(sizes[bad[0]])} tokens > max_positions "
                f"{max_positions}; raise --tokens-per-sample, truncate, or pass --skip-invalid-size-inputs-valid-test"
            )
        if epoch == 1 or not shuffle:
            logger.warning(
                f"{len(bad)} samples have invalid sizes and will be skipped, max_positions={max_positions}, "
                f"first few sample ids={bad[:10].tolist()}"
            )
    batches = source.batch_indices(
        sizes[keep], batch_size=batch_size, max_tokens=max_tokens, seed=seed, epoch=epoch, shuffle=shuffle
    )
    return [[int(keep[i]) for i in batch] for batch in batches]


def shard_length(num_batches: int, world_size: int) -> int:
    """Batches per rank: fairseq pads the shards to equal length (the padding is a dummy batch)."""
    return math.ceil(num_batches / world_size)


def groups_per_epoch(num_batches: int, world_size: int, update_freq: int) -> int:
    return math.ceil(shard_length(num_batches, world_size) / update_freq)


class _RankBatches(torch.utils.data.Dataset):
    """Item i = (is_dummy, collated batch) of this rank's i-th batch, counted from ``start``."""

    def __init__(self, split: SplitData, batches: Sequence[Sequence[int]], rank: int, world_size: int,
                 start: int, prepare: Callable[[Batch], Batch] | None = None,
                 augment: Callable[[list[Any], int], list[Any]] | None = None,
                 history_noise: Callable[[Batch, int], Batch] | None = None) -> None:
        self.split = split
        self.all_batches = batches
        self.mine = list(batches[rank::world_size])
        self.rank, self.world_size = rank, world_size
        self.length = shard_length(len(batches), world_size)
        self.start = start
        self.prepare = prepare
        self.augment = augment
        self.history_noise = history_noise

    def __len__(self) -> int:
        return max(0, self.length - self.start)

    def __getitem__(self, i: int) -> tuple[bool, Batch]:
        index = self.start + i
        dummy = index >= len(self.mine)
        ids = self.all_batches[0] if dummy else self.mine[index]
        samples = [self.split.dataset[j] for j in ids]
        if self.augment is not None:
            samples = self.augment(samples, index * self.world_size + self.rank)
        batch = self.split.collate(samples)
        if self.history_noise is not None:
            batch = self.history_noise(batch, index * self.world_size + self.rank)
        if self.prepare is not None:
            batch = self.prepare(batch)
        return dummy, batch


def _identity(item: Any) -> Any:
    return item


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader workers leave SIGTERM and SIGINT to the trainer: a signal sent to the whole process group (a
    job's time limit, `timeout` without --foreground, Ctrl-C) would otherwise kill them, and the trainer, which
    finishes its update and saves a checkpoint on that signal, would fail on its next batch instead. The workers
    still end with the trainer (PyTorch's shutdown sentinel, and its watchdog if the trainer dies)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def batch_stream(
    split: SplitData,
    batches: Sequence[Sequence[int]],
    *,
    rank: int,
    world_size: int,
    start: int,
    num_workers: int,
    prepare: Callable[[Batch], Batch] | None = None,
    augment: Callable[[list[Any], int], list[Any]] | None = None,
    history_noise: Callable[[Batch, int], Batch] | None = None,
) -> torch.utils.data.DataLoader:
    """This rank's batches from position ``start`` on, collated in ``num_workers`` worker processes, which
    also pass each batch through ``prepare`` (picklable): ``LayoutPlanner.prepare`` attaches the model's
    layouts (``Batch.layouts``), ``train.graphs.GraphBatches`` also pads the batch for CUDA graphs. ``augment``
    (picklable, e.g. ``data.augment.TokenAugmentation``) changes the samples of the batch with this index before
    they are collated; ``history_noise`` (``data.history_noise.HistoryNoise``) then moves some of the collated
    decoder input's ordinal tokens, the targets unchanged.

    The DataLoader gets its own generator so that creating it draws nothing from the global RNG (which
    would shift dropout masks after a resume).
    """
    dataset = _RankBatches(split, batches, rank, world_size, start, prepare, augment, history_noise)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=_identity,
        generator=torch.Generator().manual_seed(0),
        persistent_workers=False,
        worker_init_fn=ignore_stop_signals if num_workers > 0 else None,
    )
