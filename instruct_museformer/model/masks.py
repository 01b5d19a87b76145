"""Bar metadata + one predicate -> the dense boolean masks (reference path) and FlexAttention BlockMasks.

Every attention problem of the model (decoder ``sx``/``rx``, encoder ``sx``/``rx``, cross-attention) has
the same shape: queries of one stream over keys ``[S summaries ; R regular]`` (one contiguous summary
region first). Each query carries its bar and kind (prefix / content / padding), each key a code that
combines its row (summary, regular, prefix, none) and its bar, and a small offset table built from the
scheme's offset sets says which bar offsets each row allows. The predicate (``AttentionLayout.mask_mod``)
is then one load per query, one per key and one lookup in an L1-sized table:

    allowed(b, q, kv) = off[k_code[b, kv] - q_bar[b, q]] and <prefix rule> and (not causal or k_pos[kv] <= q)

The reference path evaluates it densely; the flex path passes it as the BlockMask's ``mask_mod``, with
the offset table folded into a 64-bit word per key so that a pair costs a few integer operations and no
gather (``_bit_mask_mod``). The
BlockMask's tile structure comes from the same predicate evaluated on one representative token per
(query class, key class): the number of allowed class pairs inside a tile's class rectangle (2-D prefix
sums) says whether the tile is empty, full (mask_mod skipped) or partial. Nothing is built over the dense
token grid on the flex path; one BlockMask per attention problem per forward is shared by all layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.batch import BarTokens, to_device
from .scheme import OffsetSet

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple


class _Array:
    """A CPU tensor in a pickled layout, as a NumPy array. Layouts come back from the data loader's worker
    processes, where torch would pass each of a batch's ~40 layout tensors through a shared-memory file of
    its own; as arrays they are part of the pickle (~1 MB, 0.1 ms to unpickle at 15,360 tokens)."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


def _pack(value: object) -> object:
    if isinstance(value, torch.Tensor) and value.device.type == "cpu":
        return _Array(value.numpy())
    if isinstance(value, tuple):
        return tuple(_pack(v) for v in value)
    return value


def _unpack(value: object) -> object:
    if isinstance(value, _Array):
        return torch.from_numpy(value.array)
    if isinstance(value, tuple):
        return tuple(_unpack(v) for v in value)
    return value


def _packed_state(obj: object, caches: tuple[str, ...]) -> dict:
    """``obj.__dict__`` for pickling: tensors as arrays, caches and the ``host`` link left out."""
    return {k: _pack(v) for k, v in vars(obj).items() if k not in caches and k != "host"}


@dataclass
class BarLayout:
    """Bar structure of one side of a batch, as the attention needs it.

    bar:        (B, R) long, 1-based bar of each regular token, 0 for specials and padding
    valid:      (B, R) bool, False at padding
    sum_bar:    (B, S) long, bar summarised by each summary slot (1-based)
    sum_valid:  (B, S) bool, slot in use (its bar is complete)
    sum_ids:    (B, S) long, summary-embedding id (1..num_summary, 0 for unused slots)
    num_bars:   int, the largest bar id of the batch
    num_summary: int, summary tokens per complete bar
    """

    bar: torch.Tensor
    valid: torch.Tensor
    sum_bar: torch.Tensor
    sum_valid: torch.Tensor
    sum_ids: torch.Tensor
    num_bars: int
    num_summary: int = 1
    host: BarLayout | None = field(default=None, repr=False)  # the CPU original of a moved layout
    _keys: dict[int, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    def to(self, device: torch.device) -> BarLayout:
        """This layout on ``device`` (itself if there already); a moved copy keeps this one as ``host``."""
        if self.bar.device == device:
            return self
        moved = (to_device(t, device) for t in (self.bar, self.valid, self.sum_bar, self.sum_valid, self.sum_ids))
        return BarLayout(*moved, self.num_bars, self.num_summary, host=self)

    def on_host(self) -> BarLayout:
        return self if self.host is None else self.host

    def __getstate__(self) -> dict:
        return _packed_state(self, ("_keys",))

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({k: _unpack(v) for k, v in state.items()}, host=None, _keys={})

    def keys(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, classes) of the keys [summaries ; regular tokens] for a table over bars 0..n, made once
        and shared by the layouts that read this side (``_key_codes``, ``_key_classes``)."""
        if n not in self._keys:
            self._keys[n] = (_key_codes(self, n), _key_classes(self, n))
        return self._keys[n]

    def reg_class(self, n: int) -> torch.Tensor:
        """(B, R) classes of the regular tokens for a table over bars 0..n."""
        return torch.where(self.valid, self.bar, torch.full_like(self.bar, n + 1))

    def sum_class(self, n: int) -> torch.Tensor:
        """(B, S) classes of the summary slots."""
        return torch.where(self.sum_valid, self.sum_bar, torch.full_like(self.sum_bar, n + 1))


def bar_layout(tokens: BarTokens, num_summary: int, pad_multiple: int = 1) -> BarLayout:
    """Derive the layout of a BarTokens side; R and S are padded up to ``pad_multiple`` (flex tiles)."""
    bar, valid = tokens.bar_ids, ~tokens.padding_mask
    batch, length = bar.shape
    r_len = round_up(length, pad_multiple) if length else 0
    if r_len != length:
        bar = torch.nn.functional.pad(bar, (0, r_len - length))
        valid = torch.nn.functional.pad(valid, (0, r_len - length), value=False)
    complete = tokens.num_complete_bars.to(bar.device)
    max_complete = int(complete.max()) if batch and num_summary > 0 else 0
    s_len = max_complete * max(num_summary, 0)
    s_len = round_up(s_len, pad_multiple) if s_len else 0
    slots = torch.arange(s_len, device=bar.device)
    sum_bar = (slots // max(num_summary, 1) + 1).expand(batch, s_len)
    sum_valid = sum_bar <= complete[:, None]
    sum_ids = torch.where(sum_valid, slots % max(num_summary, 1) + 1, torch.zeros_like(sum_bar))
    num_bars = int(bar.max()) if bar.numel() else 0
    return BarLayout(
        bar, valid, sum_bar.contiguous(), sum_valid, sum_ids, max(num_bars, max_complete), max(num_summary, 0)
    )


# Key rows of the offset table (see ``AttentionLayout``).
ROW_NONE, ROW_SUM, ROW_REG, ROW_PREF = 0, 1, 2, 3
KIND_PAD, KIND_PREF, KIND_CONTENT = 0, 1, 2


def _core(
    off: torch.Tensor, q_bar: torch.Tensor, q_kind: torch.Tensor, k_code: torch.Tensor, pref_from: int
) -> torch.Tensor:
    """The predicate without causality: ``off[k_code - q_bar]``, and a prefix query reads prefix keys only."""
    return off[k_code - q_bar] & ((q_kind == KIND_CONTENT) | ((q_kind == KIND_PREF) & (k_code >= pref_from)))


@dataclass
class AttentionLayout:
    """One attention problem: queries (B, Q) over keys (B, K) = [S summaries ; R regular].

    The predicate reads one value per query and one per key and a small offset table (L1-resident):

        allowed(b, q, kv) = off[k_code[b, kv] - q_bar[b, q]]  and  (q_kind[b, q] is content, or it is the
                            prefix and the key is a prefix key)  and  (not causal or k_pos[kv] <= q)

    q_bar:  (B, Q) int32, the query's bar (0 for the prefix and padding)
    q_kind: (B, Q) int32, KIND_PAD / KIND_PREF / KIND_CONTENT
    k_code: (B, K) int32, ``row * W + key bar + n`` with row ROW_NONE (padding, unused summary slot),
            ROW_SUM, ROW_REG or ROW_PREF and W = 2n + 1, so that ``k_code - q_bar`` indexes the key row at
            the bar offset ``key bar - query bar``
    off:    (4 W,) bool, per row, which bar offsets may attend (from the scheme's offset sets)
    k_pos:  (K,) int32 or None; when set the attention is causal (summary keys carry -1)

    ``segments`` (summary problems only): when each summary reads exactly its own bar (the default
    sum2con/sum2sum with one summary per bar), ``(token_slot (B, R), slot_valid (B, S))`` lets the fast path
    compute it as a segment softmax instead of an attention kernel (see ``attention.segment_summaries``).

    ``q_class``/``k_class`` (B, Q)/(B, K) are the tokens' classes (0 prefix, 1..n bar, n+1 padding; key
    classes of the regular region shifted by n + 2), monotone along each region: the BlockMask's tiles are
    classified from the class-level table, which is the same predicate evaluated on one representative
    token per class.
    """

    q_class: torch.Tensor
    k_class: torch.Tensor
    q_bar: torch.Tensor
    q_kind: torch.Tensor
    k_code: torch.Tensor
    off: torch.Tensor
    num_bars: int
    k_pos: torch.Tensor | None = None
    segments: tuple[torch.Tensor, torch.Tensor] | None = None
    _dense: torch.Tensor | None = field(default=None, repr=False)
    _table: torch.Tensor | None = field(default=None, repr=False)
    _block: dict[tuple[int, int], object] = field(default_factory=dict, repr=False)
    _gather: dict[int, object] = field(default_factory=dict, repr=False)  # gathered.plan_for's cache
    _table_inputs: tuple[np.ndarray, ...] | None = field(default=None, repr=False)  # host_table's, as arrays
    host: AttentionLayout | None = field(default=None, repr=False)  # the CPU original of a moved layout

    def to(self, device: torch.device) -> AttentionLayout:
        """This layout on ``device`` (itself if there already). A moved copy keeps this one as ``host``:
        the gather plans are read off it, with no copy back from the device."""
        if self.q_class.device == device:  # plans received from a loader's worker get their tensors here
            self._gather = {key: None if plan is None else plan.to(device) for key, plan in self._gather.items()}
            return self
        tensors = (self.q_class, self.k_class, self.q_bar, self.q_kind, self.k_code, self.off)
        k_pos = None if self.k_pos is None else to_device(self.k_pos, device)
        segments = None if self.segments is None else tuple(to_device(t, device) for t in self.segments)
        copies = [to_device(t, device) for t in tensors]
        moved = AttentionLayout(*copies, self.num_bars, k_pos, segments, host=self)  # type: ignore[arg-type]
        moved._table_inputs = self._table_inputs
        # gather plans built on the host (by the data loader: ``planning``) go along
        moved._gather = {key: None if plan is None else plan.to(device) for key, plan in self._gather.items()}
        return moved

    def on_host(self) -> AttentionLayout:
        return self if self.host is None else self.host

    def __getstate__(self) -> dict:
        return _packed_state(self, ("_dense", "_table", "_block"))

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({k: _unpack(v) for k, v in state.items()}, host=None, _dense=None, _table=None, _block={})

    def mask_mod(self) -> MaskMod:
        """The predicate, in FlexAttention's ``mask_mod(b, h, q_idx, kv_idx)`` form, as cheap as it can be.

        Inside partial tiles the kernel evaluates it for every (query, key) pair, so a per-pair gather from
        the offset table would cost as much as the matrix products. When the offset sets change value only
        within a window of 63 bar offsets (true of every scheme of the paper), each key row's offsets fit in
        one 64-bit word and the per-pair work is a subtraction, a clamp and a bit test (``_bit_mask_mod``);
        otherwise the table lookup is used.
        """
        words = self._bit_words()
        return self._table_mask_mod() if words is None else _bit_mask_mod(self, *words)

    def _table_mask_mod(self) -> MaskMod:
        """The predicate through the offset table (ground truth of the dense reference path)."""
        # Flattened 1-D lookups (b * len + i): 2-D indexing inside mask_mod compiles to slower kernels.
        q_len, k_len = self.q_bar.shape[1], self.k_code.shape[1]
        q_bar, q_kind, k_code = self.q_bar.reshape(-1), self.q_kind.reshape(-1), self.k_code.reshape(-1)
        off, k_pos = self.off, self.k_pos
        pref_from = ROW_PREF * (2 * self.num_bars + 1)

        if k_pos is None:

            def allowed(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
                qi, ki = b * q_len + q, b * k_len + kv
                return _core(off, q_bar[qi], q_kind[qi], k_code[ki], pref_from)

        else:

            def allowed(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
                qi, ki = b * q_len + q, b * k_len + kv
                return _core(off, q_bar[qi], q_kind[qi], k_code[ki], pref_from) & (k_pos[kv] <= q)

        return allowed

    def _bit_words(self) -> tuple[int, torch.Tensor] | None:
        """(lo, words (4,) int64) such that row r allows bar distance d = query bar - key bar iff bit
        ``clamp(d - lo + 1, 0, 63)`` of ``words[r]`` is set; None when some row changes value over a wider
        window than 62 distances (then the table is needed)."""
        n = self.num_bars
        allow = self.on_host().off.view(4, 2 * n + 1).flip(1).cpu()  # [row, d + n], d = -offset
        changes = (allow[:, 1:] != allow[:, :-1]).any(0).nonzero().flatten()  # d - n - 1 + 1 where it changes
        lo = int(changes[0]) - n + 1 if len(changes) else 0
        if len(changes) and int(changes[-1]) - int(changes[0]) > 62:
            return None
        d = (torch.arange(64) + lo - 1).clamp(-n, n)  # the distance each bit stands for
        words = [sum(1 << i for i, on in enumerate(row.tolist()) if on) for row in allow[:, d + n]]
        words = [w - (1 << 64) if w >= 1 << 63 else w for w in words]  # as int64 (bit 63 = sign)
        return lo, to_device(torch.tensor(words, dtype=torch.int64), self.off.device)

    @property
    def table(self) -> torch.Tensor:
        """(n+2, 2(n+2)) bool: may query class i read key class j (the predicate on class representatives)."""
        if self._table is None:
            self._table = _class_table(self.off, self.num_bars)
        return self._table

    def host_table(self, q_classes: np.ndarray, k_classes: np.ndarray) -> np.ndarray:
        """``table[q_classes][:, k_classes]`` evaluated on the host with numpy, for these classes only
        (the predicate on their representatives; no device launches, no full (n+2, 2(n+2)) table)."""
        n = self.num_bars
        if self._table_inputs is None:  # once per layout (a plan asks once per sequence of the batch)
            codes = (t.numpy() for t in _class_representatives(n, torch.device("cpu")))
            self._table_inputs = (*codes, self.on_host().off.cpu().numpy())
        q_bar, q_kind, k_code, off = self._table_inputs
        q_bar, q_kind, k_code = q_bar[q_classes], q_kind[q_classes], k_code[k_classes]
        allowed = off[k_code[None, :] - q_bar[:, None]]
        # ``_core``'s query-kind rule changes only the rows of prefix and padding queries (content reads all)
        other = np.flatnonzero(q_kind != KIND_CONTENT)
        allowed[other] = _core(off, q_bar[other, None], q_kind[other, None], k_code[None, :], ROW_PREF * (2 * n + 1))
        return allowed

    def dense(self) -> torch.Tensor:
        """(B, 1, Q, K) bool mask, True = may attend (the reference path's ground truth)."""
        if self._dense is None:
            batch, q_len = self.q_class.shape
            k_len = self.k_class.shape[1]
            dev = self.q_class.device
            b = torch.arange(batch, device=dev).view(-1, 1, 1, 1)
            h = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=dev)
            q = torch.arange(q_len, device=dev).view(1, 1, -1, 1)
            kv = torch.arange(k_len, device=dev).view(1, 1, 1, -1)
            self._dense = self.mask_mod()(b, h, q, kv)
        return self._dense

    def tile_kinds(self, block_size: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(partial, full) tile flags, each (B, Q/bq, K/bk) bool, from the table alone (no dense grid).

        A tile's queries cover a range of classes [q_lo, q_hi] and its keys [k_lo, k_hi]; the count of
        allowed class pairs in that rectangle (prefix sums over the table) is 0 -> empty, the full area ->
        every present pair allowed -> full (when causality also holds for the whole tile), else partial.
        Both tests are sound whatever classes are actually present; they are tight because classes grow
        monotonically along each region of the sequence.
        """
        return _tile_kinds(self.q_class, self.k_class, self.table, self.k_pos, block_size)

    def block_mask(self, block_size: int | tuple[int, int]) -> object:
        """The FlexAttention BlockMask (heads broadcast), built once and shared by every layer using it.

        The class table is built on the CPU (one copy over); the tile flags and both orderings (per query
        tile for the forward, per key tile for the backward) are a few dozen batched ops on the device,
        with no dense token grid and no host round trip.
        """
        key = (block_size, block_size) if isinstance(block_size, int) else tuple(block_size)
        if key not in self._block:
            from torch.nn.attention.flex_attention import BlockMask

            dev = self.q_class.device
            table = to_device(_class_table(self.on_host().off.cpu(), self.num_bars), dev)
            partial, full = _tile_kinds(self.q_class, self.k_class, table, self.k_pos, block_size)
            num, idx = _ordered(partial)
            full_num, full_idx = _ordered(full)
            q_num, q_idx = _ordered(partial.transpose(1, 2))
            full_q_num, full_q_idx = _ordered(full.transpose(1, 2))
            self._block[key] = BlockMask(
                seq_lengths=(self.q_class.shape[1], self.k_class.shape[1]),
                kv_num_blocks=num,
                kv_indices=idx,
                full_kv_num_blocks=full_num,
                full_kv_indices=full_idx,
                q_num_blocks=q_num,
                q_indices=q_idx,
                full_q_num_blocks=full_q_num,
                full_q_indices=full_q_idx,
                BLOCK_SIZE=key,
                mask_mod=self.mask_mod(),
            )
        return self._block[key]


def _class_table(off: torch.Tensor, n: int) -> torch.Tensor:
    """``AttentionLayout.table`` from the offset table, on its device."""
    q_bar, q_kind, k_code = _class_representatives(n, off.device)
    return _core(off, q_bar[:, None], q_kind[:, None], k_code[None, :], ROW_PREF * (2 * n + 1))


def _class_representatives(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q_bar, q_kind) of one query per class 0..n+1 and the key code of one key per key class."""
    width = 2 * n + 1
    classes = torch.arange(n + 2, device=device, dtype=torch.int32)
    real = (classes >= 1) & (classes <= n)
    zero = torch.zeros_like(classes)
    # query representatives: class 0 = prefix, 1..n = content of that bar, n+1 = padding
    q_bar = torch.where(real, classes, zero)
    q_kind = torch.where(real, KIND_CONTENT, torch.where(classes == 0, KIND_PREF, KIND_PAD)).int()
    # key representatives: summary region (class 0 never occurs there), then regular region
    none = zero + ROW_NONE * width + n
    k_sum = torch.where(real, ROW_SUM * width + classes + n, none)
    k_reg = torch.where(real, ROW_REG * width + classes + n, torch.where(classes == 0, ROW_PREF * width + n, none))
    return q_bar, q_kind, torch.cat([k_sum, k_reg])


def _tile_kinds(
    q_class: torch.Tensor,
    k_class: torch.Tensor,
    table: torch.Tensor,
    k_pos: torch.Tensor | None,
    block_size: int | tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``AttentionLayout.tile_kinds`` on whatever device its inputs are on."""
    bq, bk = (block_size, block_size) if isinstance(block_size, int) else block_size
    batch, q_len = q_class.shape
    k_len = k_class.shape[1]
    if q_len % bq or k_len % bk:
        raise ValueError(f"lengths {q_len}, {k_len} are not multiples of the block size {block_size}")
    nq, nk = q_len // bq, k_len // bk
    qc = q_class.view(batch, nq, bq)
    kc = k_class.view(batch, nk, bk)
    rows, cols = table.shape
    prefix = torch.zeros(rows + 1, cols + 1, dtype=torch.long, device=table.device)
    prefix[1:, 1:] = table.long().cumsum(0).cumsum(1)
    flat, width = prefix.reshape(-1), cols + 1
    r1, r2 = qc.amin(-1)[:, :, None], qc.amax(-1)[:, :, None] + 1  # (B, nq, 1)
    c1, c2 = kc.amin(-1)[:, None, :], kc.amax(-1)[:, None, :] + 1  # (B, 1, nk)
    count = (
        flat.take(r2 * width + c2)
        - flat.take(r1 * width + c2)
        - flat.take(r2 * width + c1)
        + flat.take(r1 * width + c1)
    )
    any_allowed = count > 0
    all_allowed = count == (r2 - r1) * (c2 - c1)
    if k_pos is not None:
        kp = k_pos.view(nk, bk)
        q_first = torch.arange(nq, device=kp.device)[:, None] * bq  # (nq, 1)
        q_last = q_first + bq - 1
        any_allowed = any_allowed & (kp.amin(-1)[None, :] <= q_last)
        all_allowed = all_allowed & (kp.amax(-1)[None, :] <= q_first)
    full = any_allowed & all_allowed
    return any_allowed & ~full, full


def _bit_mask_mod(layout: AttentionLayout, lo: int, words: torch.Tensor) -> MaskMod:
    """``AttentionLayout.mask_mod`` with the offset table folded into one 64-bit word per key.

    Per query: ``qv = bar - lo + 1``; per key: its bar and its row's word, as two int32 halves (int64
    shifts cost several instructions per pair in the kernel: the int32 form made the forward 30% faster).
    A pair is allowed iff bit ``clamp(qv - key bar, 0, 63)`` of the key's word is set (and causality
    holds). The query kinds need a test of their own only when some row allows future bars: otherwise a
    prefix query (bar 0) finds no summary or content key (bars >= 1) in its past, and padding queries get
    ``qv`` so low that every distance clamps to bit 0, "a future bar", which no row allows.
    """
    n, width = layout.num_bars, 2 * layout.num_bars + 1
    q_len, k_len = layout.q_bar.shape[1], layout.k_code.shape[1]
    row, k_bar = layout.k_code.div(width, rounding_mode="floor"), layout.k_code % width - n
    k_word = words[row.long()].reshape(-1)
    k_low = ((k_word & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000  # bits 0-31, as a signed int32
    k_low, k_high = k_low.int(), (k_word >> 32).int()
    rows_needed = bool(layout.on_host().off.view(4, width)[:, n + 1 :].any())  # some row allows a future bar
    q_kind = layout.q_kind
    q_val = layout.q_bar - lo + 1
    if not rows_needed:
        q_val = torch.where(q_kind == KIND_PAD, torch.full_like(q_val, -(1 << 20)), q_val)
    q_val, k_bar, k_pos = q_val.reshape(-1).int(), k_bar.reshape(-1).int(), layout.k_pos
    # which key rows a query may read at all: content all, prefix the prefix keys, padding none
    rows_of_kind = torch.tensor([0, 1 << ROW_PREF, (1 << ROW_SUM) | (1 << ROW_REG) | (1 << ROW_PREF)])
    q_rows = to_device(rows_of_kind, q_kind.device)[q_kind.long()].reshape(-1).int()
    k_rows = (1 << row).reshape(-1).int()

    def allowed(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        qi, ki = b * q_len + q, b * k_len + kv
        i = (q_val[qi] - k_bar[ki]).clamp(0, 63)
        ok = ((torch.where(i < 32, k_low[ki], k_high[ki]) >> (i & 31)) & 1) != 0
        if rows_needed:
            ok = ok & ((q_rows[qi] & k_rows[ki]) != 0)
        if k_pos is not None:
            ok = ok & (k_pos[kv] <= q)
        return ok

    return allowed


def _ordered(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, nq, nk) tile flags -> (B, 1, nq) counts and (B, 1, nq, nk) indices, selected tiles first (in order)."""
    num = selected.sum(-1, dtype=torch.int32)
    order = torch.argsort((~selected).to(torch.int32), dim=-1, stable=True).to(torch.int32)
    return num[:, None].contiguous(), order[:, None].contiguous()


# ---------------------------------------------------------------------------------------------------
# Builders: per-token codes and the offset table of each attention problem.


def _off_table(n: int, rows: dict[int, torch.Tensor], device: torch.device) -> torch.Tensor:
    """(4 (2n+1),) bool from per-row membership over offsets -n..n (built on the CPU, where the scheme's
    intervals cost a few tiny ops each rather than device launches, then copied over once)."""
    off = torch.zeros(4, 2 * n + 1, dtype=torch.bool)
    for row, members in rows.items():
        off[row] = members
    return to_device(off.reshape(-1), device)


def _offsets(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(-n, n + 1, device=device)


def _query_codes(bar: torch.Tensor, valid: torch.Tensor, summary: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(q_bar, q_kind) int32 of regular tokens or (``summary``) summary slots."""
    q_bar = torch.where(valid, bar, torch.zeros_like(bar)).int()
    content = valid if summary else valid & (bar > 0)
    pref = torch.zeros_like(valid) if summary else valid & (bar == 0)
    q_kind = torch.where(content, KIND_CONTENT, torch.where(pref, KIND_PREF, KIND_PAD)).int()
    return q_bar, q_kind


def _key_codes(side: BarLayout, n: int) -> torch.Tensor:
    """(B, S+R) int32 key codes of [summaries ; regular tokens] for an offset table over bars 0..n."""
    width = 2 * n + 1
    none = ROW_NONE * width + n
    k_sum = torch.where(side.sum_valid, ROW_SUM * width + side.sum_bar + n, none)
    reg_row = torch.where(side.bar == 0, ROW_PREF * width + n, ROW_REG * width + side.bar + n)
    k_reg = torch.where(side.valid, reg_row, none)
    return torch.cat([k_sum, k_reg], dim=1).int()


def _key_classes(side: BarLayout, n: int) -> torch.Tensor:
    return torch.cat([side.sum_class(n), side.reg_class(n) + (n + 2)], dim=1)


def regular_layout(
    side: BarLayout,
    con2con: OffsetSet,
    con2sum: OffsetSet,
    causal: bool,
    pref2pref: str = "lt",
) -> AttentionLayout:
    """Regular tokens of one side over [its summaries ; its regular tokens] (the ``rx`` problem).

    con2con/con2sum select bars by offset; every content token sees the prefix/specials (con2pref full),
    a special sees specials (pref2pref ``lt``/``full``; with one BOS these agree) and nothing else, and
    when ``causal`` a regular key must not come after the query.
    """
    n, dev = side.num_bars, side.bar.device
    offs = _offsets(n, torch.device("cpu"))
    pref_row = (offs < 0) | ((offs == 0) & (pref2pref != "none"))  # offset = 0 - query bar
    off = _off_table(n, {ROW_SUM: con2sum.contains(offs), ROW_REG: con2con.contains(offs), ROW_PREF: pref_row}, dev)
    q_bar, q_kind = _query_codes(side.bar, side.valid, summary=False)
    k_pos = None
    if causal:
        s_len, r_len = side.sum_bar.shape[1], side.bar.shape[1]
        k_pos = torch.cat([torch.full((s_len,), -1, device=dev), torch.arange(r_len, device=dev)]).int()
    k_code, k_class = side.keys(n)
    return AttentionLayout(side.reg_class(n), k_class, q_bar, q_kind, k_code, off, n, k_pos)


def summary_layout(side: BarLayout, sum2con: OffsetSet, sum2sum: OffsetSet) -> AttentionLayout:
    """Summary slots over [summaries ; regular tokens] of the same side (the ``sx`` problem).

    Non-causal inside the bar (safe: a summary is only read by later bars); summaries never read the
    prefix (sum2pref none).
    """
    n, dev = side.num_bars, side.bar.device
    offs = _offsets(n, torch.device("cpu"))
    off = _off_table(n, {ROW_SUM: sum2sum.contains(offs), ROW_REG: sum2con.contains(offs)}, dev)
    q_bar, q_kind = _query_codes(side.sum_bar, side.sum_valid, summary=True)
    segments = None
    if side.num_summary == 1 and sum2con.as_list(-n, n) == [0] and sum2sum.as_list(-n, n) == [0]:
        s_len = side.sum_bar.shape[1]
        complete = side.valid & (side.bar >= 1) & (side.bar <= s_len)
        complete &= torch.gather(side.sum_valid, 1, (side.bar - 1).clamp(0, max(s_len - 1, 0))) if s_len else False
        token_slot = torch.where(complete, side.bar - 1, torch.full_like(side.bar, -1))
        segments = (token_slot, side.sum_valid)
    k_code, k_class = side.keys(n)
    return AttentionLayout(side.sum_class(n), k_class, q_bar, q_kind, k_code, off, n, None, segments)


def self_attention_layouts(
    cache: dict[tuple, AttentionLayout],
    side: BarLayout,
    schemes: dict[str, list[OffsetSet]],
    layer: int,
    *,
    causal: bool,
    pref2pref: str = "lt",
) -> tuple[AttentionLayout, AttentionLayout]:
    """(sx, rx) layouts of one layer on ``side``'s device; layers that repeat a scheme share the layouts
    in ``cache``. A side moved from the host has its layouts built there (``side.host``) and moved."""
    sum_key = ("sx", schemes["sum2con"][layer], schemes["sum2sum"][layer])
    reg_key = ("rx", schemes["con2con"][layer], schemes["con2sum"][layer])
    where, device = side.on_host(), side.bar.device
    if sum_key not in cache:
        cache[sum_key] = summary_layout(where, schemes["sum2con"][layer], schemes["sum2sum"][layer]).to(device)
    if reg_key not in cache:
        layout = regular_layout(where, schemes["con2con"][layer], schemes["con2sum"][layer], causal, pref2pref)
        cache[reg_key] = layout.to(device)
    return cache[sum_key], cache[reg_key]


def cross_layout(
    target: BarLayout, source: BarLayout, cross_con2con: OffsetSet, cross_con2sum: OffsetSet
) -> AttentionLayout:
    """Target regular tokens over [source summaries ; source regular tokens] (cross-attention).

    Target bar j reads source bars j + cross_con2con token by token and the summaries of source bars
    j + cross_con2sum; every non-padding target token (the BOS included) reads the source's specials
    (its trailing EOS), so no real query row is ever empty. Built on the host where both sides have a host
    original, then moved to the target's device.
    """
    if target.host is not None and source.host is not None:
        return cross_layout(target.host, source.host, cross_con2con, cross_con2sum).to(target.bar.device)
    n, dev = max(target.num_bars, source.num_bars), target.bar.device
    offs = _offsets(n, torch.device("cpu"))
    rows = {ROW_SUM: cross_con2sum.contains(offs), ROW_REG: cross_con2con.contains(offs), ROW_PREF: offs <= 0}
    off = _off_table(n, rows, dev)
    q_bar, q_kind = _query_codes(target.bar, target.valid, summary=False)
    k_code, k_class = source.keys(n)
    return AttentionLayout(target.reg_class(n), k_class, q_bar, q_kind, k_code, off, n)


def pad_bar_tokens(tokens: BarTokens, multiple: int) -> BarTokens:
    """Pad a BarTokens side with padding up to a multiple of ``multiple`` tokens (FlexAttention tiles)."""
    length = tokens.tokens.shape[1]
    return tokens.pad_to(round_up(length, multiple)) if length else tokens
