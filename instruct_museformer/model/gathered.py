"""Bar-gathered attention: each run of queries of one bar reads exactly its keys, as one dense problem.

Museformer's layouts are unions of whole bars: the tokens of bar i read a few bars token by token, one
summary per other bar, the specials, and (causally) their own bar. On the token grid those bars rarely
line up with an attention kernel's 128 x 128 tiles (88% of the tiles FlexAttention visits at 15k tokens
are partial, each ~2x the cost of a full one), and a mask function runs for every pair inside them.
Gathered per bar -- ``[allowed summaries ; allowed earlier keys ; the bar itself]`` -- every problem is
dense: a run of Lq queries over Lk keys, causal with the diagonal aligned bottom-right (query j of the
run reads the first Lk - Lq + j + 1 keys), which is exactly FlashAttention's causal varlen semantics.
No mask is evaluated at all.

Three kernels compute it (``kernel_for``). On CUDA in bfloat16/float16: the indexed Triton kernels
(``indexed``), which read each run's keys in place through the plan's key index -- one launch forward, two
backward, no copies; their key/value gradients are computed key-major (``KeyTiles``), and their attention
dropout is a hash of (seed, query row, head, key row), drawn alike by all three. With a head size they
lack: FlashAttention's varlen kernel on keys gathered per chunk of runs (``CHUNK_KEYS``; gathered again in
backward instead of kept, so the extra memory is one chunk's), its RNG state kept for backward, key/value
gradients summed back into place in float32 (a Triton kernel) or written where no key is read twice.
Elsewhere a plain padded softmax does the same arithmetic on the same chunks, without dropout (the CPU
tests; ``attention.attend`` sends float32 problems on the GPU to FlexAttention or the reference path).

The plan is read off the layout's own class table and ``k_pos`` -- the predicate of the reference path --
and checked: a causal layout in which some run does not read its own bar (so the diagonal cannot sit
bottom-right) gets no plan, and the caller uses FlexAttention instead.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from ..data.batch import to_device
from . import indexed
from .masks import AttentionLayout, round_up

# Buckets of ``GatherPlan.capacities``: runs in multiples of RUN_BUCKET; the key index and the grids' query
# extent in powers of two from these.
RUN_BUCKET = 64
MIN_KEYS = 1024
MIN_EXTENT = 128


def _power_of_two(n: int, least: int) -> int:
    return max(least, 1 << max(n - 1, 0).bit_length())

# Gathered keys per kernel call: bounds the extra memory (keys + values, and their gradients in backward:
# 4 x CHUNK_KEYS x d x 2 bytes, 128 MiB at d = 512) while keeping each call large enough to fill the GPU.
CHUNK_KEYS = 1 << 16


@dataclass(frozen=True)
class Chunk:
    """One kernel call: runs [first, last) of the plan, their packed queries and keys."""

    q_start: int
    q_end: int
    k_start: int
    k_end: int
    cu_q: torch.Tensor  # (G+1,) int32, query offsets of the chunk's runs (from 0)
    cu_k: torch.Tensor  # (G+1,) int32, key offsets
    max_q: int
    max_k: int
    q_row: int  # the chunk's first flat query row when its queries are consecutive rows (a slice), else -1


@dataclass(frozen=True, eq=False)
class KeyTiles:
    """A plan seen from its keys, for the key/value gradient kernel (``indexed``): the flat key rows in tiles
    of ``block`` rows (``indexed.KEY_TILE``), and per tile the *entries* -- (run, the position of the tile's
    first row in that run's key list, the tile's first and end row the run reads) -- of the runs that read
    it. A program takes one *item* (a tile and a stretch of its entries), sums the gradients of the tile's
    keys over them and stores them: no two programs write one key, so no atomics and no float32 sums over
    all keys. A tile read by more than ``TILE_ENTRIES`` runs (the summaries': every later bar reads them) is
    split over several items, which add into float32 sums of that tile only (its *slot*), converted after.
    """

    items: np.ndarray  # (W, 4) int32: tile, first entry, end entry, slot (-1: owns its tile; -2: padding)
    entries: np.ndarray  # (E, 4) int32: run, position of the tile's row 0 in the run's key list, first, end row
    split: np.ndarray  # (n,) int64: the tile of each slot (padding: ``num_tiles``, a spare tile)
    num_tiles: int
    block: int  # rows per tile (``indexed.KEY_TILE`` when made)

    def padded(self) -> KeyTiles:
        """Grown to bucketed capacities: extra items do nothing, extra slots sum into the spare tile."""
        items, entries, split = self.capacities()
        skip = np.tile(np.array([[0, 0, 0, -2]], np.int32), (items - len(self.items), 1))
        return KeyTiles(
            np.concatenate([self.items, skip]),
            np.concatenate([self.entries, np.zeros((entries - len(self.entries), 4), np.int32)]),
            np.r_[self.split, np.full(split - len(self.split), self.num_tiles, np.int64)],
            self.num_tiles,
            self.block,
        )

    def capacities(self) -> tuple[int, int, int]:
        extra = len(self.items) - self.num_tiles  # items beyond one per tile: the split tiles'
        items = self.num_tiles + max(RUN_BUCKET, round_up(extra, RUN_BUCKET))
        return items, _power_of_two(len(self.entries), MIN_KEYS), _power_of_two(len(self.split), 8)


# Entries (runs reading a key tile) per program of the key/value gradient kernel; more are split over several.
TILE_ENTRIES = 16


def _key_tiles(run_keys: np.ndarray, range_first: np.ndarray, range_count: np.ndarray, num_keys: int) -> KeyTiles:
    """The ``KeyTiles`` of a plan's runs and their key ranges (before any padding), all on the host."""
    block = indexed.KEY_TILE
    num_tiles = _cdiv(num_keys, block)
    run_end = np.cumsum(run_keys)
    range_start = np.cumsum(range_count) - range_count  # where each range starts in the concatenated lists
    run = np.searchsorted(run_end, range_start, side="right")  # the run each range belongs to
    position = range_start - (run_end - run_keys)[run]  # of the range's first key in its run's list
    first_tile = range_first // block
    spans = (range_first + range_count - 1) // block - first_tile + 1  # tiles each range touches
    which = np.repeat(np.arange(len(range_first)), spans)
    tile = first_tile[which] + np.arange(int(spans.sum())) - np.repeat(np.cumsum(spans) - spans, spans)
    base, first, end = tile * block, range_first[which], range_first[which] + range_count[which]
    lo, hi = np.maximum(first, base) - base, np.minimum(end, base + block) - base  # the rows it reads of the tile
    entries = np.stack([run[which], position[which] + base - first, lo, hi], axis=1)
    order = np.argsort(tile, kind="stable")
    entries, tile = entries[order].astype(np.int32), tile[order]
    counts = np.bincount(tile, minlength=num_tiles)
    starts = np.cumsum(counts) - counts
    chunks = np.maximum(1, -(-counts // TILE_ENTRIES))  # an untouched tile still gets an item: it writes zeros
    item_tile = np.repeat(np.arange(num_tiles), chunks)
    part = np.arange(len(item_tile)) - np.repeat(np.cumsum(chunks) - chunks, chunks)
    e0 = starts[item_tile] + part * TILE_ENTRIES
    e1 = np.minimum(e0 + TILE_ENTRIES, starts[item_tile] + counts[item_tile])
    split = np.flatnonzero(chunks > 1)
    slot = np.full(num_tiles, -1)
    slot[split] = np.arange(len(split))
    items = np.stack([item_tile, e0, e1, slot[item_tile]], axis=1).astype(np.int32)
    return KeyTiles(items.reshape(-1, 4), entries.reshape(-1, 4), split.astype(np.int64), num_tiles, block)


@dataclass(frozen=True, eq=False)
class GatherPlan:
    """Which keys each run of queries reads, packed run after run.

    A run is ``run_queries[i]`` consecutive query rows from flat row ``run_first[i]`` (``b * Q + q``), reading
    the next ``run_keys[i]`` entries of ``k_rows`` (flat key rows ``b * K + kv``; causal: its own bar last).
    Queries in no run (padding, rows with no allowed key) get 0, as on the reference path. The indexed
    kernels read ``runs`` and ``k_rows``; the chunked kernels' ``q_rows`` and ``chunks`` are made from the
    host arrays on first use, so the default path does not pay for them.
    """

    # (both tensors are derived from the host arrays by ``to``: None until then, as in a plan built without
    # a device or unpickled from a data loader's worker)
    k_rows: torch.Tensor  # (Nk,) long
    runs: torch.Tensor  # (G, 4) int32 on the device: run_first, run_queries, offset into k_rows, run_keys
    run_first: np.ndarray  # (G,) host copies of the table
    run_queries: np.ndarray
    run_keys: np.ndarray
    range_first: np.ndarray  # k_rows = the ranges [first, first + count), concatenated (host)
    range_count: np.ndarray
    causal: bool
    num_queries: int  # B * Q
    num_keys: int  # B * K
    chunk_keys: int  # gathered keys per chunked kernel call
    distinct_keys: bool = False  # no key is read by two runs: gradients are written, not summed
    # ``padded``: the query extent the kernels' grids cover (0: the plan's own largest run)
    grid_q: int = 0
    key_tiles: KeyTiles | None = None  # for the indexed kernels' key/value gradients (host)
    tile_items: torch.Tensor | None = None  # its tables on the device (``to``)
    tile_entries: torch.Tensor | None = None
    tile_split: torch.Tensor | None = None

    def to(self, device: torch.device) -> GatherPlan:
        """The plan on ``device`` (itself if there already): the key index expanded there from the ranges."""
        if self.k_rows is not None and self.k_rows.device == device:
            return self
        tiles = self.key_tiles
        return dataclasses.replace(
            self,
            k_rows=_expand(self.range_first, self.range_count, device),
            runs=_run_table(self.run_first, self.run_queries, self.run_keys, device),
            tile_items=None if tiles is None else _to_device(tiles.items, device),
            tile_entries=None if tiles is None else _to_device(tiles.entries, device),
            tile_split=None if tiles is None else _to_device(tiles.split, device),
        )

    def device_tensors(self) -> tuple[torch.Tensor, ...]:
        """The tensors ``to`` made: what the indexed kernels read (a CUDA graph's inputs, ``train.graphs``)."""
        tensors = (self.k_rows, self.runs, self.tile_items, self.tile_entries, self.tile_split)
        return tuple(t for t in tensors if t is not None)

    def __getstate__(self) -> dict:
        """Pickled (from a data loader's worker) without its tensors: ``to`` makes them where they are used."""
        tensors = ("k_rows", "runs", "tile_items", "tile_entries", "tile_split")
        skip = (*tensors, "q_rows", "chunks")  # the last two: cached_property values
        return {k: v for k, v in vars(self).items() if k not in skip} | dict.fromkeys(tensors)

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    @property
    def max_q(self) -> int:
        return max(int(self.run_queries.max()) if self.run_queries.size else 0, self.grid_q)

    @property
    def max_k(self) -> int:
        return int(self.run_keys.max()) if self.run_keys.size else 0

    def capacities(self, max_runs: int = 0) -> tuple[int, int, int]:
        """(runs, key-index entries, query extent), rounded up coarsely so that the plans of batches of one
        padded length mostly share them (``padded``): runs to ``max_runs`` where the caller knows a bound
        (``BatchLayouts.pad_plans``: a sequence's bars, from its summary slots), in multiples of RUN_BUCKET;
        the index and the extent to powers of two (at least MIN_KEYS, MIN_EXTENT). The query extent stays 16
        for runs of at most 16 queries (the summaries'), which take small tiles. (No key extent: the key/value
        kernel's grid is the key tiles', ``KeyTiles``.)"""
        runs = round_up(max(len(self.run_first), max_runs), RUN_BUCKET)
        keys = _power_of_two(int(self.range_count.sum()), MIN_KEYS)
        return runs, keys, 16 if self.max_q <= 16 else _power_of_two(self.max_q, MIN_EXTENT)

    def padded(self, max_runs: int = 0) -> GatherPlan:
        """This plan grown to its ``capacities``: the extra runs have no queries and no keys (the kernels'
        programs for them return at once), the extra key-index entries are never read, and the grids cover
        the bucketed query extent. Two batches whose plans pad alike launch the same kernels with the same
        arguments but for the tables' contents, which is what lets a CUDA graph of a training step
        (``train.graphs``) serve both. Returns itself where it is already at its capacities."""
        runs, keys, grid_q = self.capacities(max_runs)
        extra_runs, extra_keys = runs - len(self.run_first), keys - int(self.range_count.sum())
        tiles = self.key_tiles
        grown = tiles is None or (len(tiles.items), len(tiles.entries), len(tiles.split)) == tiles.capacities()
        if not extra_runs and not extra_keys and grid_q == self.max_q and grown:
            return self
        none = np.zeros(extra_runs, np.int64)
        plan = dataclasses.replace(
            self,
            k_rows=None,
            runs=None,
            key_tiles=tiles if tiles is None or grown else tiles.padded(),
            tile_items=None,
            tile_entries=None,
            tile_split=None,
            run_first=np.r_[self.run_first, none],
            run_queries=np.r_[self.run_queries, none],
            run_keys=np.r_[self.run_keys, none],
            # np.int64 lists: np.r_ with an empty Python list would make the ranges float64
            range_first=np.r_[self.range_first, np.array([0] * bool(extra_keys), np.int64)],
            range_count=np.r_[self.range_count, np.array([extra_keys] * bool(extra_keys), np.int64)],
            grid_q=grid_q,
        )
        return plan if self.k_rows is None else plan.to(self.k_rows.device)

    def graph_key(self) -> tuple:
        """What a forward reads of this plan on the host (besides its tensors' shapes): a CUDA graph
        recorded with one plan is valid for another with the same key (``train.graphs``)."""
        read = self.read_queries
        return (self.causal, self.distinct_keys, self.num_queries, self.num_keys, self.max_q,
                read == 0, read == self.num_queries)  # fmt: skip

    @property
    def read_queries(self) -> int:
        """How many query rows read anything: all of them, or some are left 0."""
        return int(self.run_queries.sum())

    @cached_property
    def q_rows(self) -> torch.Tensor:
        """(Nq,) long, the flat query row of every query that reads anything, runs in order."""
        return _expand(self.run_first, self.run_queries, self.k_rows.device)

    @cached_property
    def chunks(self) -> tuple[Chunk, ...]:
        return _chunks(self.run_first, self.run_queries, self.run_keys, self.chunk_keys, self.k_rows.device)


def plan_for(layout: AttentionLayout, chunk_keys: int | None = None) -> GatherPlan | None:
    """The layout's plan, built once and shared by every layer using the layout (None: not expressible)."""
    chunk_keys = chunk_keys or CHUNK_KEYS  # resolved here: the cache is keyed by it
    if chunk_keys not in layout._gather:
        layout._gather[chunk_keys] = build_plan(layout, chunk_keys)
    plan = layout._gather[chunk_keys]
    if plan is not None and plan.k_rows is None:  # unpickled: its tensors are made where the layout is
        plan = layout._gather[chunk_keys] = plan.to(layout.q_class.device)
    return plan


def built_plan(layout: AttentionLayout) -> GatherPlan | None:
    """The layout's plan if ``plan_for`` has built it (for the default chunk size), without building one."""
    return layout._gather.get(CHUNK_KEYS)


def build_plan(layout: AttentionLayout, chunk_keys: int | None = None) -> GatherPlan | None:
    """Runs of equal query class, each reading whole runs of equal key class, merged into ranges.

    Classes are constant along maximal runs of tokens (a bar's tokens, one summary slot, the specials at
    either end), so a query run reads whole key runs: those the class table allows it and, when causal,
    that do not start after it (a key run lies entirely before the query run, is the run itself, or lies
    entirely after it). Adjacent allowed key runs merge into one range of key rows. The host works over
    (query run x key run) pairs of each sequence -- from one copy of the per-token classes -- and the
    per-key index (~8 keys per token) is expanded on the device, so neither the host nor the copy scales
    with it.
    """
    chunk_keys = chunk_keys or CHUNK_KEYS
    if layout.segments is not None:
        return _segment_plan(layout, chunk_keys)
    device, host = layout.q_class.device, layout.on_host()  # read on the host: no copies back, no waiting
    q_class = host.q_class.cpu().numpy()
    k_class = host.k_class.cpu().numpy()
    causal = layout.k_pos is not None
    batch, q_len = q_class.shape
    k_len = k_class.shape[1]
    q_first, q_count, q_cls = _class_runs(q_class)  # flat rows b * Q + q
    k_first, k_count, k_cls = _class_runs(k_class)  # flat rows b * K + kv
    if causal and not np.array_equal(k_class[:, k_len - q_len :], q_class + layout.num_bars + 2):
        return None  # query q must be key K - Q + q (regular keys after the summaries) for the diagonal
    k_pos = host.k_pos.cpu().numpy() if host.k_pos is not None else None

    range_run, range_first, range_count = [], [], []
    q_seq, k_seq = q_first // max(q_len, 1), k_first // max(k_len, 1)
    for b in range(batch):
        qs, ks = np.flatnonzero(q_seq == b), np.flatnonzero(k_seq == b)
        allowed = layout.host_table(q_cls[qs], k_cls[ks])  # (runs, key runs)
        if causal:  # key runs starting after the query run's last position are masked for all of it
            run_last = q_first[qs] + q_count[qs] - 1 - b * q_len
            allowed &= k_pos[k_first[ks] - b * k_len][None, :] <= run_last[:, None]
        run, start, stop = _true_stretches(allowed)
        first = k_first[ks][start]
        range_run.append(qs[run])
        range_first.append(first)
        range_count.append(k_first[ks][stop - 1] + k_count[ks][stop - 1] - first)
    ranges = [np.concatenate(x) if x else np.zeros(0, np.int64) for x in (range_run, range_first, range_count)]
    range_run, range_first, range_count = ranges

    num_keys = np.bincount(range_run, weights=range_count, minlength=len(q_first)).astype(np.int64)
    used = num_keys > 0  # padding runs and rows with nothing to read stay 0
    if causal and not _own_run_last(range_run, range_first + range_count, q_first, q_count, used, q_len, k_len):
        return None
    return _plan(
        (q_first[used], q_count[used], num_keys[used]), (range_first, range_count), causal, batch * q_len,
        batch * k_len, chunk_keys, _disjoint(range_first, range_count), device,
    )  # fmt: skip


def _plan(
    runs: tuple[np.ndarray, np.ndarray, np.ndarray],
    ranges: tuple[np.ndarray, np.ndarray],
    causal: bool,
    num_queries: int,
    num_keys: int,
    chunk_keys: int,
    distinct_keys: bool,
    device: torch.device,
) -> GatherPlan:
    """A plan from its host arrays -- runs (first query row, queries, keys) and key ranges (first, count) --
    with its key tiles, and its tensors made on ``device``."""
    run_first, run_queries, run_keys = runs
    range_first, range_count = ranges
    return GatherPlan(
        k_rows=None,  # type: ignore[arg-type]  # made by ``to``, from the arrays
        runs=None,  # type: ignore[arg-type]
        run_first=run_first,
        run_queries=run_queries,
        run_keys=run_keys,
        range_first=range_first,
        range_count=range_count,
        causal=causal,
        num_queries=num_queries,
        num_keys=num_keys,
        chunk_keys=chunk_keys,
        distinct_keys=distinct_keys,
        key_tiles=_key_tiles(run_keys, range_first, range_count, num_keys),
    ).to(device)


def _segment_plan(layout: AttentionLayout, chunk_keys: int) -> GatherPlan:
    """The plan of a summary layout in which every summary reads exactly itself and its own bar
    (``layout.segments``): per valid slot, a run of one query over two ranges -- its own summary row and
    its bar's tokens -- read straight off the slot of each token, with no (runs x key runs) table."""
    token_slot, slot_valid = (t.cpu().numpy() for t in layout.on_host().segments)  # (B, R), (B, S)
    device = layout.q_class.device
    batch, s_len = slot_valid.shape
    r_len = token_slot.shape[1]
    k_len = s_len + r_len
    seq, slot = np.nonzero(slot_valid)  # runs, in row order
    bar_first = np.zeros(batch * max(s_len, 1), np.int64)
    bar_count = np.zeros(batch * max(s_len, 1), np.int64)
    first, count, run_slot = _class_runs(token_slot)  # a bar's tokens are consecutive
    reads = run_slot >= 0
    owner = (first[reads] // max(r_len, 1)) * s_len + run_slot[reads]
    bar_first[owner] = first[reads] % max(r_len, 1)
    bar_count[owner] = count[reads]
    own = seq * s_len + slot
    ranges_first = np.stack([seq * k_len + slot, seq * k_len + s_len + bar_first[own]], axis=1).reshape(-1)
    ranges_count = np.stack([np.ones_like(own), bar_count[own]], axis=1).reshape(-1)
    keep = ranges_count > 0
    runs = (own, np.ones_like(own), 1 + bar_count[own])  # one query per run, reading itself and its bar
    # distinct keys: a token is read by its own bar's summary only, a summary by itself
    return _plan(
        runs, (ranges_first[keep], ranges_count[keep]), False, batch * s_len, batch * k_len, chunk_keys, True, device
    )


def _true_stretches(allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal stretches of True in each row of a (G, N) bool matrix: (row, first column, one past the last),
    row-major. The rows are padded with False on both sides and searched as one flat array for changes."""
    rows, width = allowed.shape
    padded = np.zeros((rows, width + 2), bool)
    padded[:, 1:-1] = allowed
    flat = padded.reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # first index of each new value
    rising = flat[change]
    row, col = np.divmod(change, width + 2)
    return row[rising], col[rising] - 1, col[~rising] - 1


def _disjoint(first: np.ndarray, count: np.ndarray) -> bool:
    """Do the key ranges [first, first + count) overlap nowhere?"""
    order = np.argsort(first, kind="stable")
    first, count = first[order], count[order]
    return bool(np.all(first[1:] >= first[:-1] + count[:-1]))


def _class_runs(classes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of one class within each row of (B, L): (flat first index, length, class)."""
    batch, length = classes.shape
    flat = classes.reshape(-1)
    if not flat.size:
        return flat.astype(np.int64), flat.astype(np.int64), flat
    change = np.empty(flat.size, bool)
    change[0] = True
    change[1:] = flat[1:] != flat[:-1]
    change[::length] = True  # every row starts a run
    first = np.flatnonzero(change)
    return first, np.diff(np.r_[first, flat.size]), flat[first]


def _own_run_last(
    range_run: np.ndarray,
    range_end: np.ndarray,
    q_first: np.ndarray,
    q_count: np.ndarray,
    used: np.ndarray,
    q_len: int,
    k_len: int,
) -> bool:
    """Causal plans: does every run's last range end with the run's own tokens?

    Query q is key ``K - Q + q`` (checked by the caller), whose key run has the same extent as the query
    run. Ranges are made of whole key runs in order, none starting after the query run; so when a run's
    last range ends where its own tokens end, the last Lq keys are exactly those tokens and every key
    before them precedes the run: the bottom-right diagonal is then exactly the causal rule.
    """
    last_range = np.full(len(q_first), -1)
    last_range[range_run] = np.arange(len(range_run))  # ascending: the last write per run wins
    runs = np.flatnonzero(used)
    seq = q_first[runs] // max(q_len, 1)
    own_end = q_first[runs] + q_count[runs] + seq * (k_len - q_len) + (k_len - q_len)  # flat key row
    return bool(np.array_equal(range_end[last_range[runs]], own_end))


def _expand(first: np.ndarray, count: np.ndarray, device: torch.device) -> torch.Tensor:
    """Concatenated ``arange(first[i], first[i] + count[i])`` as a long tensor on ``device``, expanded
    there from the (short) per-range arrays."""
    total = int(count.sum())
    shift = _to_device(first - (np.cumsum(count) - count), device)  # range start - packed start
    count_dev = _to_device(count, device)
    return torch.arange(total, device=device) + shift.repeat_interleave(count_dev, output_size=total)


def _run_table(q_first: np.ndarray, q_count: np.ndarray, k_count: np.ndarray, device: torch.device) -> torch.Tensor:
    """The per-run table the indexed kernels (``indexed``) read, on the device."""
    k_off = np.cumsum(k_count) - k_count
    table = np.stack([q_first, q_count, k_off, k_count], axis=1).astype(np.int32).reshape(-1, 4)
    return _to_device(table, device)


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A host array on ``device``, copied without making the host wait for the device."""
    return to_device(torch.from_numpy(array), device)


def _chunks(
    q_first: np.ndarray, q_count: np.ndarray, k_count: np.ndarray, chunk_keys: int, device: torch.device
) -> tuple[Chunk, ...]:
    """Consecutive runs grouped so that each call gathers at most ``chunk_keys`` keys (or one run)."""
    q_off, k_off = np.r_[0, np.cumsum(q_count)], np.r_[0, np.cumsum(k_count)]
    gaps = np.r_[0, np.cumsum(q_first[1:] != q_first[:-1] + q_count[:-1])]  # query gaps before each run
    bounds, first = [], 0
    while first < len(k_count):
        last = int(np.searchsorted(k_off, k_off[first] + chunk_keys, side="right")) - 1
        bounds.append((first, max(last, first + 1)))
        first = bounds[-1][1]
    # every chunk's offsets, relative to its start, in one copy to the device
    offsets = [np.stack([q_off[a : b + 1] - q_off[a], k_off[a : b + 1] - k_off[a]]) for a, b in bounds]
    both = torch.from_numpy(np.concatenate(offsets, axis=1).astype(np.int32) if offsets else np.zeros((2, 0), np.int32))
    both = to_device(both, device)
    chunks, at = [], 0
    for a, b in bounds:
        cu = both[:, at : at + b - a + 1]
        at += b - a + 1
        chunks.append(
            Chunk(
                int(q_off[a]),
                int(q_off[b]),
                int(k_off[a]),
                int(k_off[b]),
                cu[0],
                cu[1],
                int(q_count[a:b].max()),
                int(k_count[a:b].max()),
                int(q_first[a]) if gaps[b - 1] == gaps[a] else -1,
            )
        )
    return tuple(chunks)


# ---------------------------------------------------------------------------------------------------
# Kernels: (packed queries (Nq, H, dh), gathered keys/values (Nk, H, dh)) of one chunk.


def uses_flash(q: torch.Tensor) -> bool:
    """FlashAttention runs on CUDA in half precision; anything else takes the plain softmax."""
    return q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)


# Which kernel runs the gathered problems: "auto" = the indexed Triton kernels (``indexed``) where they
# apply -- CUDA, half precision, a head size they support -- else FlashAttention on chunks of gathered keys
# (CUDA, half precision), else the plain softmax. The other values force one (benchmarks, kernel tests).
KERNEL = "auto"
KERNELS = ("auto", "indexed", "flash", "plain")


def kernel_for(q: torch.Tensor, dropout_p: float) -> str:
    if KERNEL not in KERNELS:
        raise ValueError(f"unknown gathered-attention kernel {KERNEL!r} (expected {', '.join(KERNELS)})")
    if KERNEL != "auto":
        return KERNEL
    if uses_flash(q) and indexed.available() and indexed.supports_head_dim(q.shape[-1]):
        return "indexed"
    return "flash" if uses_flash(q) else "plain"


def _flash_forward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ch: Chunk, causal: bool, dropout_p: float
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    out, lse, rng_state, unused, _ = torch.ops.aten._flash_attention_forward(
        q, k, v, ch.cu_q, ch.cu_k, ch.max_q, ch.max_k, dropout_p, causal, False, scale=1.0 / math.sqrt(q.shape[-1])
    )
    return out, lse, (rng_state, unused)


def _flash_backward(
    g: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    ch: Chunk,
    causal: bool,
    dropout_p: float,
    state: tuple[torch.Tensor, ...],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = torch.ops.aten._flash_attention_backward(
        g, q, k, v, out, lse, ch.cu_q, ch.cu_k, ch.max_q, ch.max_k, dropout_p, causal, *state,
        scale=1.0 / math.sqrt(q.shape[-1]),
    )  # fmt: skip
    return dq, dk, dv


def _plain_forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ch: Chunk, causal: bool) -> torch.Tensor:
    """The varlen problem as padded dense attention (G, H, max_q, max_k); same semantics as the kernel."""
    cu_q, cu_k = ch.cu_q.long(), ch.cu_k.long()
    len_q, len_k = cu_q.diff(), cu_k.diff()
    qi = torch.arange(ch.max_q, device=q.device)
    ki = torch.arange(ch.max_k, device=q.device)
    q_ok = qi[None] < len_q[:, None]  # (G, max_q)
    k_ok = ki[None] < len_k[:, None]
    q_pad = q[(cu_q[:-1, None] + qi).clamp(max=max(q.shape[0] - 1, 0))]  # (G, max_q, H, dh)
    k_pad = k[(cu_k[:-1, None] + ki).clamp(max=max(k.shape[0] - 1, 0))]
    v_pad = v[(cu_k[:-1, None] + ki).clamp(max=max(k.shape[0] - 1, 0))]
    acc = torch.promote_types(q.dtype, torch.float32)
    scores = torch.einsum("gqhd,gkhd->ghqk", q_pad.to(acc), k_pad.to(acc)) / math.sqrt(q.shape[-1])
    ok = q_ok[:, None, :, None] & k_ok[:, None, None, :]
    if causal:  # bottom-right diagonal: query j reads keys up to len_k - len_q + j
        ok = ok & (ki[None, None, None, :] <= qi[None, None, :, None] + (len_k - len_q)[:, None, None, None])
    probs = torch.softmax(scores.masked_fill(~ok, float("-inf")), dim=-1).nan_to_num(0.0)
    out = torch.einsum("ghqk,gkhd->gqhd", probs, v_pad.to(acc))  # (G, max_q, H, dh)
    return out[q_ok].to(q.dtype)


def _plain_backward(
    g: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, ch: Chunk, causal: bool
) -> tuple[torch.Tensor, ...]:
    with torch.enable_grad():
        q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
        out = _plain_forward(q, k, v, ch, causal)
        return torch.autograd.grad(out, (q, k, v), g)


def _add_rows(dk: torch.Tensor, dv: torch.Tensor, rows: torch.Tensor, dkc: torch.Tensor, dvc: torch.Tensor) -> None:
    """dk[rows] += dkc and dv[rows] += dvc, rows repeating (a key is read by several runs).

    On CUDA one Triton kernel loads the half-precision gradients and adds them into the float32 sums with
    atomics; ``index_add_`` would first need float32 copies of both (as large as the gathered keys).
    """
    if dkc.is_cuda and dk.dtype == torch.float32 and _scatter_kernel() is not None:
        n, width = rows.numel(), dk[0].numel()
        block_cols = 1 << max(width - 1, 1).bit_length()
        grid = (_cdiv(n, SCATTER_ROWS),)
        _scatter_kernel()[grid](dk, dv, dkc.contiguous(), dvc.contiguous(), rows, n, width, block_cols, SCATTER_ROWS)
        return
    dk.index_add_(0, rows, dkc.to(dk.dtype))
    dv.index_add_(0, rows, dvc.to(dv.dtype))


SCATTER_ROWS = 8  # gathered rows per Triton program
_SCATTER: list[Any] = []


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _scatter_kernel() -> Any:
    """The Triton kernel behind ``_add_rows`` (None without Triton), compiled on first use."""
    if not _SCATTER:
        try:
            import triton
            import triton.language as tl
        except ImportError:  # pragma: no cover - CUDA builds of torch ship Triton
            _SCATTER.append(None)
            return None

        @triton.jit
        def add_rows(dk, dv, dkc, dvc, rows, n, width, BLOCK_COLS: tl.constexpr, BLOCK_ROWS: tl.constexpr):  # noqa: N803
            r = tl.program_id(0) * BLOCK_ROWS + tl.arange(0, BLOCK_ROWS)
            c = tl.arange(0, BLOCK_COLS)
            ok = (r < n)[:, None] & (c < width)[None, :]
            dst = tl.load(rows + r, mask=r < n, other=0)[:, None] * width + c[None, :]
            src = r[:, None].to(tl.int64) * width + c[None, :]
            tl.atomic_add(dk + dst, tl.load(dkc + src, mask=ok, other=0.0).to(tl.float32), mask=ok, sem="relaxed")
            tl.atomic_add(dv + dst, tl.load(dvc + src, mask=ok, other=0.0).to(tl.float32), mask=ok, sem="relaxed")

        _SCATTER.append(add_rows)
    return _SCATTER[0]


def _pick(x: torch.Tensor, rows: torch.Tensor, ch: Chunk) -> torch.Tensor:
    """x's query rows of the chunk: a slice when they are consecutive, else gathered (N, H, dh)."""
    if ch.q_row >= 0:
        return x[ch.q_row : ch.q_row + rows.numel()]
    return x.index_select(0, rows)


def _put(x: torch.Tensor, rows: torch.Tensor, ch: Chunk, values: torch.Tensor) -> None:
    """x[rows] = values for the chunk's query rows."""
    if ch.q_row >= 0:
        x[ch.q_row : ch.q_row + rows.numel()] = values
    else:
        x.index_copy_(0, rows, values.to(x.dtype))


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, dh) -> (B * L, H, dh), a view where the strides allow (batch 1 of a projection)."""
    b, h, n, dh = x.shape
    return x.transpose(1, 2).reshape(b * n, h, dh)


def _chunked_forward(
    qf: torch.Tensor,
    kf: torch.Tensor,
    vf: torch.Tensor,
    out: torch.Tensor,
    plan: GatherPlan,
    kernel: str,
    dropout_p: float,
) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, ...]]]:
    """Forward chunk by chunk (FlashAttention or the plain softmax) on (rows, H, dh) tensors: writes out,
    returns FlashAttention's per-chunk log-sum-exps and RNG states (empty lists for the plain softmax)."""
    lses, states = [], []
    for ch in plan.chunks:
        q_rows, k_rows = plan.q_rows[ch.q_start : ch.q_end], plan.k_rows[ch.k_start : ch.k_end]
        qc, kc, vc = _pick(qf, q_rows, ch), kf.index_select(0, k_rows), vf.index_select(0, k_rows)
        if kernel == "flash":
            oc, lse, state = _flash_forward(qc, kc, vc, ch, plan.causal, dropout_p)
            lses.append(lse)
            states.append(state)
        else:
            oc = _plain_forward(qc, kc, vc, ch, plan.causal)
        _put(out, q_rows, ch, oc)
    return lses, states


def _chunked_backward(
    gf: torch.Tensor,
    qf: torch.Tensor,
    kf: torch.Tensor,
    vf: torch.Tensor,
    out: torch.Tensor,
    lses: list[torch.Tensor],
    dq: torch.Tensor,
    plan: GatherPlan,
    kernel: str,
    dropout_p: float,
    states: list[tuple[torch.Tensor, ...]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward chunk by chunk (FlashAttention or the plain softmax) on (rows, H, dh) tensors: writes dq,
    returns the key/value gradients (in float32 where a key is read by several runs: summed there)."""
    acc = kf.dtype if plan.distinct_keys else torch.promote_types(kf.dtype, torch.float32)
    dk = torch.zeros(plan.num_keys, *kf.shape[1:], dtype=acc, device=kf.device)
    dv = torch.zeros(plan.num_keys, *vf.shape[1:], dtype=acc, device=vf.device)
    for i, ch in enumerate(plan.chunks):
        q_rows, k_rows = plan.q_rows[ch.q_start : ch.q_end], plan.k_rows[ch.k_start : ch.k_end]
        qc, kc, vc = _pick(qf, q_rows, ch), kf.index_select(0, k_rows), vf.index_select(0, k_rows)
        gc = _pick(gf, q_rows, ch)
        if kernel == "flash":
            dqc, dkc, dvc = _flash_backward(
                gc, qc, kc, vc, _pick(out, q_rows, ch), lses[i], ch, plan.causal, dropout_p, states[i]
            )
        else:
            dqc, dkc, dvc = _plain_backward(gc, qc, kc, vc, ch, plan.causal)
        _put(dq, q_rows, ch, dqc)
        if plan.distinct_keys:
            dk.index_copy_(0, k_rows, dkc.to(acc))
            dv.index_copy_(0, k_rows, dvc.to(acc))
        else:
            _add_rows(dk, dv, k_rows, dkc, dvc)
    return dk, dv


class _GatheredAttention(torch.autograd.Function):
    """Forward and backward chunk by chunk; saves q, k, v, the output and per-chunk log-sum-exps only.

    With ``keep_rows`` = S, the caller may overwrite the first S key/value rows of each sequence after the
    call (``V2S1Attention`` writes the step-2 summary keys over the summary rows step 1 has read): those
    rows are copied (S rows, small) and q and the rest of k and v are kept as views on ``ctx``, outside the
    version check of ``save_for_backward`` that would refuse the write although backward never reads what
    it changes.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: GatherPlan, dropout_p: float, keep_rows: int
    ) -> torch.Tensor:
        b, h, q_len, dh = q.shape
        qf, kf, vf = _rows(q), _rows(k), _rows(v)
        every_row = plan.read_queries == b * q_len  # then every row of out is written below
        out = (torch.empty if every_row else torch.zeros)(b * q_len, h, dh, dtype=q.dtype, device=q.device)
        kernel = kernel_for(q, dropout_p)
        seed = _dropout_seed(q.device) if kernel == "indexed" and dropout_p > 0.0 else None
        if kernel == "indexed":
            lse = indexed.forward(qf, kf, vf, plan.k_rows, plan.runs, plan.max_q, plan.causal, out, dropout_p, seed)
            lses, states = [lse], []
        else:
            lses, states = _chunked_forward(qf, kf, vf, out, plan, kernel, dropout_p)
        if keep_rows:  # q is a view of the same projection: kept on ctx too (the write does not touch it)
            ctx.save_for_backward(k[:, :, :keep_rows].clone(), v[:, :, :keep_rows].clone(), out, *lses)
            ctx.views = (q, k, v)
        else:
            ctx.save_for_backward(q, k, v, out, *lses)
        ctx.plan, ctx.states, ctx.dropout_p, ctx.kernel, ctx.keep_rows = plan, states, dropout_p, kernel, keep_rows
        ctx.seed = seed
        return out.view(b, q_len, h, dh).transpose(1, 2)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        plan: GatherPlan = ctx.plan
        kept = None
        if ctx.keep_rows:  # the kept rows, and the views of the rest
            k_kept, v_kept, out, *lses = ctx.saved_tensors
            (q, k, v), n = ctx.views, ctx.keep_rows
            ctx.views = None
            if ctx.kernel == "indexed":  # reads the kept rows in place of the overwritten ones
                kept = indexed.Kept(_rows(k_kept), _rows(v_kept), k.shape[2], n)
            else:  # a transient copy with the kept rows in place
                k, v = torch.cat([k_kept, k[:, :, n:]], dim=2), torch.cat([v_kept, v[:, :, n:]], dim=2)
        else:
            q, k, v, out, *lses = ctx.saved_tensors
        b, h, q_len, dh = q.shape
        k_len = k.shape[2]
        qf, kf, vf, gf = _rows(q), _rows(k), _rows(v), _rows(grad.to(out.dtype))
        every_row = plan.read_queries == b * q_len  # then every row of dq is written below
        dq = (torch.empty if every_row else torch.zeros)(b * q_len, h, dh, dtype=q.dtype, device=q.device)
        if ctx.kernel == "indexed":
            tiles = indexed.Tiles(plan.tile_items, plan.tile_entries, plan.tile_split, plan.key_tiles.block)
            dk, dv = indexed.backward(
                gf, qf, kf, vf, out, lses[0], plan.k_rows, plan.runs, plan.max_q, tiles, plan.causal, dq, kept,
                ctx.dropout_p, ctx.seed,
            )  # fmt: skip
        else:
            dk, dv = _chunked_backward(gf, qf, kf, vf, out, lses, dq, plan, ctx.kernel, ctx.dropout_p, ctx.states)
        ctx.states = None

        def heads(x: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
            return x.to(dtype).view(b, n, h, dh).transpose(1, 2)

        return heads(dq, q_len, q.dtype), heads(dk, k_len, k.dtype), heads(dv, k_len, v.dtype), None, None, None


def _dropout_seed(device: torch.device) -> torch.Tensor:
    """A seed for one call's dropout mask (indexed kernels): drawn on the device from torch's generator, so
    reproducible under ``torch.manual_seed`` and drawn anew by each replay of a CUDA graph; below 2**31."""
    return torch.randint(0, (1 << 31) - 1, (1,), device=device, dtype=torch.int64)


@torch.compiler.disable
def gathered_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: GatherPlan,
    dropout_p: float = 0.0,
    keep_rows: int = 0,
) -> torch.Tensor:
    """q (B, H, Q, dh), k and v (B, H, K, dh) -> (B, H, Q, dh) under ``plan``; rows reading nothing give 0.

    Attention dropout needs the indexed kernels or FlashAttention (CUDA, half precision); the caller routes
    other cases to the reference path. ``keep_rows``: the caller will overwrite the first ``keep_rows``
    key/value rows (see ``_GatheredAttention``).
    """
    if dropout_p > 0.0 and kernel_for(q, dropout_p) == "plain":
        raise ValueError("gathered attention applies dropout only through its CUDA kernels (half precision)")
    if not plan.read_queries:  # nothing reads anything (all padding)
        return q.new_zeros(q.shape)
    return _GatheredAttention.apply(q, k.to(q.dtype), v.to(q.dtype), plan, dropout_p, keep_rows)
