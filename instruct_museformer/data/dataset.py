"""Training data: a data-bin split -> samples truncated at bar boundaries -> length-grouped batches.

Translation (``task="translation"``): sample i pairs the score ``{split}.{src}-{tgt}.{src}`` with the
performance ``{split}.{src}-{tgt}.{tgt}`` (fairseq's fallback ``{split}.{tgt}-{src}.*`` also works).
Both are stored with a trailing EOS and have the same number of Bar tokens (performance bar k plays
score bar k); this is checked when the split is loaded.

Truncation to L tokens (``--truncate-<split>``) cuts both sides at the same bar so that bar k stays
paired: keep the first K bars, K as large as possible with the source (score tokens) and the target
(performance tokens, which is as long as the decoder input ``[EOS] + target[:-1]``) both within L.
The target keeps its EOS only when the whole piece fits (source + EOS and performance + EOS): as in
Museformer, the model learns to stop only after a complete piece. The source keeps its EOS whenever the
whole score was kept (possible when only the performance's EOS or trailing tokens did not fit). If not
even the first bar fits, the first L tokens of that bar are kept (an incomplete bar, which gets no
summary) and the case is counted in ``stats.partial_first_bar``. Every kept sequence is thus a prefix
of the stored one, which is why a sample is described by two prefix lengths computed once, vectorised,
when the split is loaded.

Chunking (``chunk=True``, ``imf train --chunk-train``; our extension): instead of keeping only the
first L tokens of a long piece, cut it into consecutive bar-aligned chunks of at most L tokens on both
sides, each a sample of its own whose bars restart at 1 -- the layout of a rendering window. The whole
piece is then trained on; only the last chunk keeps the EOS(s). A single bar longer than L is cut
inside (its first L tokens). With ``carry`` (``--carry-markings``, :mod:`.carried_markings`) every chunk after a
piece's first starts with the metronome mark, tempo word and dynamic in force at its first bar; the score side
is then chunked at L - 4 tokens, so that it stays within L with them. With ``relative``
(``--tempo-relative-to-mark``, :mod:`.mark_relative`) both sides' Tempo tokens are moved, bar by bar, so that the
mark in force sits at one reference bin.

Language modelling (``task="lm"``, Museformer's setting): ``{split}.bin/.idx`` (or fairseq's
``{split}.{src}-None.{src}`` from ``--only-source -s``); each song, with its EOS, is the target, and
truncation keeps its first L tokens (complete bars plus a partial last bar, EOS only if it all fits).

Batches (:func:`batch_indices`) group similar lengths as fairseq's ``batch_by_size`` does and shuffle
the batch order from (seed, epoch); :func:`collate` builds the :class:`~.batch.Batch` the model reads.
Sharding across DDP ranks is left to the trainer (it slices the list of batches).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..tokens.specials import BAR, EOS, PAD
from .batch import Batch, collate_bar_tokens
from .carried_markings import MAX_CARRIED_TOKENS, MarkingsInForce
from .indexed import MMapIndexedDataset, dataset_exists
from .mark_relative import MarkRelativeTempo

TASKS = ("translation", "lm")
SPLIT_NAMES_HINT = {"val": "valid", "validation": "valid", "dev": "valid"}


@dataclass(frozen=True)
class Sample:
    """One training example. ``source`` is None for the language model."""

    id: int
    source: torch.Tensor | None
    target: torch.Tensor


@dataclass(frozen=True)
class TruncationStats:
    """How truncation changed a split (for the trainer's log)."""

    samples: int
    truncated: int  # samples not kept whole (their EOS is dropped)
    partial_first_bar: int  # samples whose first bar alone did not fit and was cut inside
    tokens_kept: int
    tokens_total: int


def _bar_ends(data: MMapIndexedDataset, bar_token: int = BAR) -> tuple[np.ndarray, np.ndarray]:
    """(positions, per-sample start index into positions) of Bar tokens, positions relative to the sample."""
    flat = np.flatnonzero(np.asarray(data.data) == bar_token)
    first = np.searchsorted(flat, data.offsets)
    owner = np.searchsorted(data.offsets, flat, side="right") - 1
    relative = flat - data.offsets[owner] if flat.size else flat
    return relative.astype(np.int64), np.append(first, flat.size)


def _truncate_pair(
    src_sizes: np.ndarray,
    tgt_sizes: np.ndarray,
    src_bars: tuple[np.ndarray, np.ndarray],
    tgt_bars: tuple[np.ndarray, np.ndarray],
    limit: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kept prefix lengths (source, target) and the partial-first-bar flags; sizes include the EOS."""
    src_keep = src_sizes.astype(np.int64).copy()
    tgt_keep = tgt_sizes.astype(np.int64).copy()
    partial = np.zeros(len(src_keep), dtype=bool)
    if limit is None:
        return src_keep, tgt_keep, partial
    src_pos, src_start = src_bars
    tgt_pos, tgt_start = tgt_bars
    over = np.flatnonzero((src_keep > limit) | (tgt_keep > limit))
    for i in over:
        s_ends = src_pos[src_start[i] : src_start[i + 1]] + 1  # prefix length of k bars, k = 1..
        t_ends = tgt_pos[tgt_start[i] : tgt_start[i + 1]] + 1
        src_size = src_keep[i]
        k = int(np.searchsorted(np.maximum(s_ends, t_ends), limit, side="right"))
        if k > 0:
            src_keep[i], tgt_keep[i] = s_ends[k - 1], t_ends[k - 1]
        else:  # the first bar (or the whole barless sequence, without its EOS) does not fit
            s_first = s_ends[0] if s_ends.size else src_size - 1
            t_first = t_ends[0] if t_ends.size else tgt_keep[i] - 1
            # an empty performance keeps its lone EOS: a target is never empty
            src_keep[i], tgt_keep[i] = min(limit, s_first), max(1, min(limit, t_first))
            partial[i] = True
        if src_keep[i] == src_size - 1 and src_size <= limit:
            src_keep[i] = src_size  # the whole score was kept (only the performance was cut): keep its EOS
    return src_keep, tgt_keep, partial


def _chunk_bounds(
    s_ends: np.ndarray, t_ends: np.ndarray, s_size: int, t_size: int, limit: int, source_limit: int | None = None
) -> list[tuple[int, int, int, int]]:
    """Bar-aligned chunks ``(src_lo, src_hi, tgt_lo, tgt_hi)`` of one pair, each side at most ``limit`` tokens
    (the source at most ``source_limit``, default ``limit``).

    ``s_ends``/``t_ends``: prefix length after each bar (same count on both sides); sizes include the EOS.
    """
    s_limit = limit if source_limit is None else source_limit
    chunks: list[tuple[int, int, int, int]] = []
    bars = len(t_ends)
    if bars == 0:
        return [(0, min(s_size, s_limit), 0, max(1, min(t_size, limit)))]
    s0 = t0 = 0
    k0 = 0
    while k0 < bars:
        k = k0
        while k < bars and s_ends[k] - s0 <= s_limit and t_ends[k] - t0 <= limit:
            k += 1
        if k == k0:  # this bar alone is too long: keep its first `limit` tokens
            chunks.append((s0, min(s0 + s_limit, int(s_ends[k0])), t0, min(t0 + limit, int(t_ends[k0]))))
            s0, t0, k0 = int(s_ends[k0]), int(t_ends[k0]), k0 + 1
            continue
        s1, t1 = int(s_ends[k - 1]), int(t_ends[k - 1])
        if k == bars:  # the last chunk: the trailing EOS when it fits, the source's on its own if need be
            if s_size - s0 <= s_limit:
                s1 = s_size
                if t_size - t0 <= limit:
                    t1 = t_size
        chunks.append((s0, s1, t0, t1))
        s0, t0, k0 = s1, t1, k
    return chunks


class PairDataset:
    """A split of a data-bin, truncated or chunked; ``sizes[i]`` = max(len(source), len(target)) of sample i."""

    def __init__(
        self,
        target: MMapIndexedDataset,
        source: MMapIndexedDataset | None = None,
        *,
        truncate: int | None = None,
        chunk: bool = False,
        name: str = "dataset",
        bar_token: int = BAR,
        carry: MarkingsInForce | None = None,
        relative: MarkRelativeTempo | None = None,
    ):
        if truncate is not None and truncate < 1:
            raise UserError(f"{name}: truncation length {truncate} must be at least 1")
        if chunk and truncate is None:
            raise UserError(f"{name}: chunking needs a chunk length (--truncate-train)")
        if carry is not None and (not chunk or source is None):
            raise UserError(f"{name}: --carry-markings needs --chunk-train and a translation data-bin")
        if carry is not None and truncate is not None and truncate <= 2 * MAX_CARRIED_TOKENS:
            raise UserError(f"{name}: --truncate-train {truncate} leaves no room for the carried markings")
        self.name = name
        self.carry = carry
        if relative is not None and source is None:
            raise UserError(f"{name}: --tempo-relative-to-mark needs a translation data-bin (a score side)")
        self.relative = relative
        self.source_reserve: np.ndarray | int = 0
        self.target_data = target
        self.source_data = source
        self.truncate = truncate
        self.bar_token = bar_token
        if source is None:
            tgt_keep = target.sizes.astype(np.int64)
            if truncate is not None:
                tgt_keep = np.minimum(tgt_keep, truncate)
            src_keep = None
            partial = np.zeros(len(target), dtype=bool)
            if truncate is not None and (target.sizes > truncate).any():
                positions, starts = _bar_ends(target, bar_token)
                first_end = np.full(len(target), np.iinfo(np.int64).max)
                has_bar = starts[:-1] < starts[1:]
                first_end[has_bar] = positions[starts[:-1][has_bar]] + 1
                partial = (target.sizes > truncate) & (first_end > truncate)
        else:
            if len(source) != len(target):
                raise UserError(
                    f"{name}: {len(source)} source but {len(target)} target sequences ({source.prefix}, "
                    f"{target.prefix})"
                )
            src_bars, tgt_bars = _bar_ends(source, bar_token), _bar_ends(target, bar_token)
            src_counts, tgt_counts = np.diff(src_bars[1]), np.diff(tgt_bars[1])
            bad = np.flatnonzero(src_counts != tgt_counts)
            if bad.size:
                i = int(bad[0])
                raise UserError(
                    f"{name}: sample {i} has {src_counts[i]} score bars but {tgt_counts[i]} performance bars "
                    f"({bad.size} samples differ); performance bar k must be the performance of score bar k"
                )
            src_keep, tgt_keep, partial = _truncate_pair(source.sizes, target.sizes, src_bars, tgt_bars, truncate)
        self.source_lengths = src_keep
        self.target_lengths = tgt_keep
        # sample i = piece piece_of[i], tokens [lo, hi) of each side (prefixes unless chunked)
        self.piece_of = np.arange(len(target), dtype=np.int64)
        self.target_start = np.zeros(len(target), dtype=np.int64)
        self.source_start = None if src_keep is None else np.zeros(len(target), dtype=np.int64)
        truncated = tgt_keep < target.sizes
        total = int(target.sizes.astype(np.int64).sum())
        kept = int(tgt_keep.sum())
        if source is not None:
            truncated |= src_keep < source.sizes
            total += int(source.sizes.astype(np.int64).sum())
            kept += int(src_keep.sum())
        self.stats = TruncationStats(len(target), int(truncated.sum()), int(partial.sum()), kept, total)
        if chunk:
            self._chunk(target, source, truncate)
        self.sizes = self.target_lengths - self.target_start
        if self.source_lengths is not None:
            self.sizes = np.maximum(self.sizes, self.source_lengths - self.source_start + self.source_reserve)

    def _chunk(self, target: MMapIndexedDataset, source: MMapIndexedDataset | None, limit: int) -> None:
        t_pos, t_start = _bar_ends(target, self.bar_token)
        s_pos, s_start = (t_pos, t_start) if source is None else _bar_ends(source, self.bar_token)
        s_sizes = target.sizes if source is None else source.sizes
        source_limit = limit - MAX_CARRIED_TOKENS if self.carry is not None else None
        rows = []
        for i in range(len(target)):
            t_ends = t_pos[t_start[i] : t_start[i + 1]] + 1
            s_ends = s_pos[s_start[i] : s_start[i + 1]] + 1
            rows += [(i, *c) for c in _chunk_bounds(s_ends, t_ends, int(s_sizes[i]), int(target.sizes[i]), limit,
                                                    source_limit)]
        table = np.array(rows, dtype=np.int64).reshape(-1, 5)
        self.piece_of = table[:, 0]
        self.target_start, self.target_lengths = table[:, 3], table[:, 4]
        if source is not None:
            self.source_start, self.source_lengths = table[:, 1], table[:, 2]
        if self.carry is not None:  # room for the carried markings in the sizes batches are cut by (a bound)
            self.source_reserve = np.where(self.source_start > 0, MAX_CARRIED_TOKENS, 0)
        kept = int((table[:, 4] - table[:, 3]).sum())
        if source is not None:
            kept += int((table[:, 2] - table[:, 1]).sum())
        total = int(target.sizes.astype(np.int64).sum())
        if source is not None:
            total += int(source.sizes.astype(np.int64).sum())
        self.stats = TruncationStats(len(table), 0, 0, kept, total)

    def __len__(self) -> int:
        return len(self.piece_of)

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        piece = int(self.piece_of[index])
        lo, hi = self.target_start[index], self.target_lengths[index]
        target = torch.from_numpy(self.target_data.tokens(piece)[lo:hi].astype(np.int64))
        source = None
        if self.source_data is not None:
            lo, hi = int(self.source_start[index]), int(self.source_lengths[index])
            tokens = self.source_data.tokens(piece)
            if self.carry is not None and lo > 0:
                source = torch.tensor(self.carry.carry_into(tokens, lo, tokens[lo:hi]), dtype=torch.long)
            else:
                source = torch.from_numpy(tokens[lo:hi].astype(np.int64))
            if self.relative is not None:  # both sides start at the same bar of the piece
                shifts = self.relative.bar_shifts(tokens)[int(np.count_nonzero(tokens[:lo] == self.bar_token)):]
                source = torch.tensor(self.relative.move(source.tolist(), shifts), dtype=torch.long)
                target = torch.tensor(self.relative.move(target.tolist(), shifts), dtype=torch.long)
        return Sample(index, source, target)

    def num_tokens(self, index: int) -> int:
        return int(self.sizes[index])


def _split_hint(split: str) -> str:
    return " (fairseq names the validation split 'valid')" if split in SPLIT_NAMES_HINT else ""


def load_dataset(
    data_bin: Path,
    split: str,
    *,
    task: str = "translation",
    source_lang: str = "score",
    target_lang: str = "perf",
    truncate: int | None = None,
    chunk: bool = False,
    bar_token: int = BAR,
    carry: MarkingsInForce | None = None,
    relative: MarkRelativeTempo | None = None,
) -> PairDataset:
    """Open ``split`` of ``data_bin`` for ``task`` ('translation', or 'lm' alias 'language_modeling'), truncated
    (or chunked, with ``carry`` the markings in force; ``relative``: tempo relative to the mark; see the module
    docstring); ``bar_token``: the id that closes a bar (``--eob-token``)."""
    data_bin = Path(data_bin)
    name = f"{data_bin}/{split}"
    if task == "translation":
        tried = []
        for a, b in ((source_lang, target_lang), (target_lang, source_lang)):
            src_prefix = data_bin / f"{split}.{a}-{b}.{source_lang}"
            tgt_prefix = data_bin / f"{split}.{a}-{b}.{target_lang}"
            tried.append(str(data_bin / f"{split}.{a}-{b}.{{{source_lang},{target_lang}}}.bin/.idx"))
            if dataset_exists(src_prefix) and dataset_exists(tgt_prefix):
                source = MMapIndexedDataset(src_prefix)
                target = MMapIndexedDataset(tgt_prefix)
                return PairDataset(target, source, truncate=truncate, chunk=chunk, name=name, bar_token=bar_token,
                                   carry=carry, relative=relative)
        raise UserError(f"split '{split}' not found: tried {' and '.join(tried)}{_split_hint(split)}")
    if task in ("lm", "language_modeling"):
        if carry is not None or relative is not None:
            raise UserError(f"{name}: --carry-markings / --tempo-relative-to-mark need a translation data-bin")
        candidates = [data_bin / split, data_bin / f"{split}.{source_lang}-None.{source_lang}"]
        for prefix in candidates:
            if dataset_exists(prefix):
                return PairDataset(MMapIndexedDataset(prefix), None, truncate=truncate, chunk=chunk, name=name,
                                   bar_token=bar_token)
        tried = " and ".join(f"{p}.bin/.idx" for p in candidates)
        raise UserError(f"split '{split}' not found: tried {tried}{_split_hint(split)}")
    raise UserError(f"task {task!r}: expected one of {', '.join(TASKS)}")


def batch_indices(
    sizes: np.ndarray,
    *,
    batch_size: int | None,
    max_tokens: int | None,
    seed: int,
    epoch: int,
    shuffle: bool = True,
) -> list[list[int]]:
    """Group sample indices into batches of similar length, then order the batches.

    Samples are sorted by size (ties in a (seed, epoch)-random order when shuffling, as fairseq's
    ``ordered_indices``) and cut greedily into batches with at most ``batch_size`` samples and, with
    padding counted as fairseq does, ``max_len * n <= max_tokens``. With ``shuffle`` the batch order is
    then permuted from (seed, epoch); without it, batches come shortest first. O(n log n).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if batch_size is None and max_tokens is None:
        raise UserError("set --batch-size or --max-tokens (or both)")
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size {batch_size}: must be at least 1")
    if max_tokens is not None and sizes.size and int(sizes.max()) > max_tokens:
        i = int(np.argmax(sizes))
        raise UserError(
            f"sample {i} has {int(sizes[i])} tokens, more than --max-tokens {max_tokens}: raise --max-tokens "
            "or lower --truncate-<split>"
        )
    rng = np.random.default_rng([seed, epoch])
    if shuffle:
        perm = rng.permutation(len(sizes))
        order = perm[np.argsort(sizes[perm], kind="stable")]
    else:
        order = np.argsort(sizes, kind="stable")
    cap_n = batch_size if batch_size is not None else len(sizes) + 1
    cap_tokens = max_tokens if max_tokens is not None else np.iinfo(np.int64).max
    batches: list[list[int]] = []
    current: list[int] = []
    for index, size in zip(order.tolist(), sizes[order].tolist(), strict=True):
        # sizes ascend, so the newest sample is the longest: padding to it costs size * (n + 1)
        if current and (len(current) >= cap_n or size * (len(current) + 1) > cap_tokens):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    if shuffle:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def collate(samples: list[Sample], beat_table: torch.Tensor, bar_token: int = BAR) -> Batch:
    """Pad samples into a Batch: decoder input ``[EOS] + target[:-1]``, bar/beat ids on both sides."""
    if not samples:
        raise ValueError("cannot collate an empty list of samples")
    targets = [s.target for s in samples]
    prev = [torch.cat([torch.tensor([EOS], dtype=torch.long), t[:-1]]) for t in targets]
    prev_output = collate_bar_tokens(prev, beat_table, bar_token)
    target = torch.full(prev_output.tokens.shape, PAD, dtype=torch.long)
    for i, t in enumerate(targets):
        target[i, : len(t)] = t
    has_source = [s.source is not None for s in samples]
    if any(has_source) and not all(has_source):
        raise ValueError("a batch mixes translation and language-model samples")
    source = collate_bar_tokens([s.source for s in samples], beat_table, bar_token) if all(has_source) else None
    ntokens = int(sum(len(t) for t in targets))
    ids = torch.tensor([s.id for s in samples], dtype=torch.long)
    return Batch(prev_output, target, source, ntokens, ids)
