"""Bar metadata + one predicate -> the dense boolean masks (reference path) and FlexAttention BlockMasks.

Every attention problem of the model (decoder ``sx``/``rx``, encoder ``sx``/``rx``, cross-attention) has
the same shape: queries of one stream over keys ``[S summaries ; R regular]`` (one contiguous summary
region first, so a mask needs one lookup per side). Each token is reduced to a *class*:

* regular token:  0 = prefix/special (the decoder's BOS, the source's EOS), 1..n = its bar, n+1 = padding
* summary slot:   1..n = the bar it summarises, n+1 = unused slot (bar not complete, or padding)

and key classes of the regular region are shifted by ``n + 2``. Which query class may read which key
class is a small ``(n+2, 2(n+2))`` boolean table built from the scheme's offset sets, so the whole mask is

    allowed(b, q, kv) = table[q_class[b, q], k_class[b, kv]]  and  (not causal or k_pos[kv] <= q)

That single function (``AttentionLayout.mask_mod``) is evaluated densely by the reference path and used as
the ``mask_mod`` of the BlockMask, whose tile structure is derived from the same table: the number of
allowed pairs inside the class rectangle of a tile (a 2-D prefix sum over the table) says whether the tile
is empty, full (mask_mod skipped) or partial. Nothing is built over the dense token grid on the flex path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..data.batch import BarTokens
from .scheme import OffsetSet

MaskMod = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def round_up(x: int, multiple: int) -> int:
    return (x + multiple - 1) // multiple * multiple


@dataclass
class BarLayout:
    """Bar structure of one side of a batch, as the attention needs it.

    bar:        (B, R) long, 1-based bar of each regular token, 0 for specials and padding
    valid:      (B, R) bool, False at padding
    sum_bar:    (B, S) long, bar summarised by each summary slot (1-based)
    sum_valid:  (B, S) bool, slot in use (its bar is complete)
    sum_ids:    (B, S) long, summary-embedding id (1..num_summary, 0 for unused slots)
    num_bars:   int, the largest bar id of the batch
    """

    bar: torch.Tensor
    valid: torch.Tensor
    sum_bar: torch.Tensor
    sum_valid: torch.Tensor
    sum_ids: torch.Tensor
    num_bars: int

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
    return BarLayout(bar, valid, sum_bar.contiguous(), sum_valid, sum_ids, max(num_bars, max_complete))


@dataclass
class AttentionLayout:
    """One attention problem: queries (B, Q) over keys (B, K) = [S summaries ; R regular].

    q_class: (B, Q) long in [0, Cq);  k_class: (B, K) long in [0, Ck);  table: (Cq, Ck) bool
    k_pos:   (K,) long or None; when set the attention is causal: key kv needs k_pos[kv] <= q
             (summary keys carry -1, so the rule only restricts regular keys)
    """

    q_class: torch.Tensor
    k_class: torch.Tensor
    table: torch.Tensor
    k_pos: torch.Tensor | None = None
    _dense: torch.Tensor | None = field(default=None, repr=False)
    _block: dict[int, object] = field(default_factory=dict, repr=False)

    def mask_mod(self) -> MaskMod:
        """The predicate, in FlexAttention's ``mask_mod(b, h, q_idx, kv_idx)`` form."""
        width = self.table.shape[1]
        q_row = self.q_class * width  # (B, Q): one lookup on the query side
        k_class = self.k_class  # (B, K): one lookup on the key side
        table = self.table.reshape(-1)
        k_pos = self.k_pos

        if k_pos is None:

            def allowed(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
                return table[q_row[b, q] + k_class[b, kv]]

        else:

            def allowed(b: torch.Tensor, h: torch.Tensor, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
                return table[q_row[b, q] + k_class[b, kv]] & (k_pos[kv] <= q)

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

    def tile_kinds(self, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(partial, full) tile flags, each (B, Q/bs, K/bs) bool, from the table alone (no dense grid).

        A tile's queries cover a range of classes [q_lo, q_hi] and its keys [k_lo, k_hi]; the count of
        allowed class pairs in that rectangle (prefix sums over the table) is 0 -> empty, the full area ->
        every present pair allowed -> full (when causality also holds for the whole tile), else partial.
        Both tests are sound whatever classes are actually present; they are tight because classes grow
        monotonically along each region of the sequence.
        """
        batch, q_len = self.q_class.shape
        k_len = self.k_class.shape[1]
        if q_len % block_size or k_len % block_size:
            raise ValueError(f"lengths {q_len}, {k_len} are not multiples of the block size {block_size}")
        nq, nk = q_len // block_size, k_len // block_size
        qc = self.q_class.view(batch, nq, block_size)
        kc = self.k_class.view(batch, nk, block_size)
        rows, cols = self.table.shape
        prefix = torch.zeros(rows + 1, cols + 1, dtype=torch.long, device=self.table.device)
        prefix[1:, 1:] = self.table.long().cumsum(0).cumsum(1)
        flat, width = prefix.reshape(-1), cols + 1
        r1, r2 = qc.amin(-1)[:, :, None], qc.amax(-1)[:, :, None] + 1  # (B, nq, 1)
        c1, c2 = kc.amin(-1)[:, None, :], kc.amax(-1)[:, None, :] + 1  # (B, 1, nk)
        count = flat[r2 * width + c2] - flat[r1 * width + c2] - flat[r2 * width + c1] + flat[r1 * width + c1]
        any_allowed = count > 0
        all_allowed = count == (r2 - r1) * (c2 - c1)
        if self.k_pos is not None:
            kp = self.k_pos.view(nk, block_size)
            q_first = torch.arange(nq, device=kp.device)[:, None] * block_size  # (nq, 1)
            q_last = q_first + block_size - 1
            any_allowed = any_allowed & (kp.amin(-1)[None, :] <= q_last)
            all_allowed = all_allowed & (kp.amax(-1)[None, :] <= q_first)
        full = any_allowed & all_allowed
        return any_allowed & ~full, full

    def block_mask(self, block_size: int) -> object:
        """The FlexAttention BlockMask (heads broadcast), built once and shared by every layer using it."""
        if block_size not in self._block:
            from torch.nn.attention.flex_attention import BlockMask

            partial, full = self.tile_kinds(block_size)
            num, idx = _ordered(partial)
            full_num, full_idx = _ordered(full)
            self._block[block_size] = BlockMask.from_kv_blocks(
                num,
                idx,
                full_num,
                full_idx,
                BLOCK_SIZE=block_size,
                mask_mod=self.mask_mod(),
                seq_lengths=(self.q_class.shape[1], self.k_class.shape[1]),
            )
        return self._block[block_size]


def _ordered(selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, nq, nk) tile flags -> (B, 1, nq) counts and (B, 1, nq, nk) indices, selected tiles first."""
    num = selected.sum(-1, dtype=torch.int32)
    order = torch.argsort((~selected).to(torch.int32), dim=-1, stable=True).to(torch.int32)
    return num[:, None].contiguous(), order[:, None].contiguous()


# ---------------------------------------------------------------------------------------------------
# Tables: which query class may read which key class.


def _bar_grid(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Offsets (key bar - query bar) over classes 0..n+1 and a mask of real-bar pairs (1..n both)."""
    classes = torch.arange(n + 2, device=device)
    real = (classes >= 1) & (classes <= n)
    return classes[None, :] - classes[:, None], real[:, None] & real[None, :], classes


def _join(q_class: torch.Tensor, sum_class: torch.Tensor, reg_class: torch.Tensor, n: int) -> torch.Tensor:
    return torch.cat([sum_class, reg_class + (n + 2)], dim=1).to(q_class.device)


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
    n = side.num_bars
    off, real, _ = _bar_grid(n, side.bar.device)
    sum_part = real & con2sum.contains(off)
    reg_part = real & con2con.contains(off)
    reg_part[1 : n + 1, 0] = True  # con2pref: content reads the prefix
    reg_part[0, 0] = pref2pref != "none"
    table = torch.cat([sum_part, reg_part], dim=1)
    q_class = side.reg_class(n)
    k_class = _join(q_class, side.sum_class(n), q_class, n)
    k_pos = None
    if causal:
        s_len, r_len = side.sum_bar.shape[1], side.bar.shape[1]
        k_pos = torch.cat([torch.full((s_len,), -1, device=q_class.device), torch.arange(r_len, device=q_class.device)])
    return AttentionLayout(q_class, k_class, table, k_pos)


def summary_layout(side: BarLayout, sum2con: OffsetSet, sum2sum: OffsetSet) -> AttentionLayout:
    """Summary slots over [summaries ; regular tokens] of the same side (the ``sx`` problem).

    Non-causal inside the bar (safe: a summary is only read by later bars); summaries never read the
    prefix (sum2pref none).
    """
    n = side.num_bars
    off, real, _ = _bar_grid(n, side.bar.device)
    table = torch.cat([real & sum2sum.contains(off), real & sum2con.contains(off)], dim=1)
    q_class = side.sum_class(n)
    k_class = _join(q_class, side.sum_class(n), side.reg_class(n), n)
    return AttentionLayout(q_class, k_class, table, None)


def cross_layout(
    target: BarLayout, source: BarLayout, cross_con2con: OffsetSet, cross_con2sum: OffsetSet
) -> AttentionLayout:
    """Target regular tokens over [source summaries ; source regular tokens] (cross-attention).

    Target bar j reads source bars j + cross_con2con token by token and the summaries of source bars
    j + cross_con2sum; every non-padding target token (the BOS included) reads the source's specials
    (its trailing EOS), so no real query row is ever empty.
    """
    n = max(target.num_bars, source.num_bars)
    off, real, _ = _bar_grid(n, target.bar.device)
    sum_part = real & cross_con2sum.contains(off)
    reg_part = real & cross_con2con.contains(off)
    reg_part[0 : n + 1, 0] = True
    table = torch.cat([sum_part, reg_part], dim=1)
    q_class = target.reg_class(n)
    k_class = _join(q_class, source.sum_class(n), source.reg_class(n), n)
    return AttentionLayout(q_class, k_class, table, None)


def pad_bar_tokens(tokens: BarTokens, multiple: int) -> BarTokens:
    """Pad a BarTokens side with padding up to a multiple of ``multiple`` tokens (FlexAttention tiles)."""
    length = tokens.tokens.shape[1]
    extra = round_up(length, multiple) - length if length else 0
    if extra == 0:
        return tokens
    pad = torch.nn.functional.pad
    return BarTokens(
        pad(tokens.tokens, (0, extra)),  # PAD == 0
        pad(tokens.bar_ids, (0, extra)),
        pad(tokens.beat_ids, (0, extra)),
        pad(tokens.padding_mask, (0, extra), value=True),
        tokens.num_complete_bars,
    )
