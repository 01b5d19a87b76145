"""Attention over keys read in place through an index list: the gather path's Triton kernels.

A plan's run ``r`` -- queries ``[q_first, q_first + q_len)`` of the flat rows -- reads the keys
``k_rows[k_off : k_off + k_len]`` (causal plans: its own bar last, so query ``m`` of the run reads keys
``j <= m + k_len - q_len``). FlashAttention's varlen kernel needs those keys copied out, one chunk of runs
at a time, and their gradients summed back by a second kernel; these kernels load each tile of keys
through the index list instead, and add the key/value gradients into place themselves. One launch for the
forward, two for the backward (queries' gradients; keys' and values'), no chunks and no gathered copies,
and query tiles of 64 rows rather than 128 (a bar has 30-300 tokens: less of each tile is padding).

Flash-attention arithmetic: online softmax in base 2, the per-row log-sum-exp kept for backward, the
probabilities recomputed there. Needs Triton (CUDA builds of torch ship it); ``available()`` says so.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU builds of torch: the gather path uses FlashAttention or its plain softmax
    triton = None
    tl = None

LOG2E = 1.4426950408889634


def available() -> bool:
    return triton is not None


def supports_head_dim(head_dim: int) -> bool:
    """Tiles span the head dimension: a power of two from 16 (the smallest tensor-core product) to 256."""
    return 16 <= head_dim <= 256 and head_dim & (head_dim - 1) == 0


if triton is not None:

    @triton.jit
    def _run(runs, r):
        """(first flat query row, queries, offset into the key index, keys) of run r."""
        return tl.load(runs + 4 * r), tl.load(runs + 4 * r + 1), tl.load(runs + 4 * r + 2), tl.load(runs + 4 * r + 3)

    @triton.jit
    def _rows_tile(X, rows, ok, stride, head, h, D: tl.constexpr):
        """The (len(rows), D) tile of head h of the rows ``rows`` (0 where not ``ok``)."""
        offs_d = tl.arange(0, D)
        return tl.load(X + rows[:, None] * stride + h * head + offs_d[None, :], mask=ok[:, None], other=0.0)

    @triton.jit
    def _key_limit(k_len, q_len, m0, BLOCK_M: tl.constexpr, CAUSAL: tl.constexpr):  # noqa: N803
        """How many of the run's keys the query tile from m0 reads: all, or causally up to its last query's."""
        limit = k_len
        if CAUSAL:
            limit = tl.minimum(k_len, m0 + BLOCK_M + k_len - q_len)
        return limit

    @triton.jit
    def _query_rows(q_first, q_len, m0, BLOCK_M: tl.constexpr):  # noqa: N803
        """Positions m0.. of a run's queries, whether each is one (< q_len), and their flat query rows."""
        offs_m = m0 + tl.arange(0, BLOCK_M)
        return offs_m, offs_m < q_len, (q_first + offs_m).to(tl.int64)

    @triton.jit
    def _key_block(KROWS, k_off, n0, limit, BLOCK_N: tl.constexpr):  # noqa: N803
        """Positions n0.. of the run's key index (< limit), whether each is one, and their flat key rows."""
        offs_n = n0 + tl.arange(0, BLOCK_N)
        n_ok = offs_n < limit
        krow = tl.load(KROWS + k_off + offs_n, mask=n_ok, other=0).to(tl.int64)
        return offs_n, n_ok, krow

    @triton.jit
    def _keys_tile(K, V, KS, VS, krow, ok, stride, head, kept_stride, kept_head, h, k_seq, n_kept,
                   D: tl.constexpr, KEPT: tl.constexpr):  # fmt: skip
        """Key and value tiles of the flat key rows ``krow``; with KEPT, the first ``n_kept`` rows of every
        sequence (``k_seq`` rows) come from KS / VS (copies kept before the caller overwrote them)."""
        offs_d = tl.arange(0, D)
        k_ptr = K + krow[:, None] * stride + h * head + offs_d[None, :]
        v_ptr = V + krow[:, None] * stride + h * head + offs_d[None, :]
        if KEPT:
            seq = krow // k_seq
            pos = krow - seq * k_seq
            kept = (pos < n_kept)[:, None]
            kept_rows = (seq * n_kept + pos)[:, None] * kept_stride + h * kept_head + offs_d[None, :]
            k_ptr = tl.where(kept, KS + kept_rows, k_ptr)
            v_ptr = tl.where(kept, VS + kept_rows, v_ptr)
        return tl.load(k_ptr, mask=ok[:, None], other=0.0), tl.load(v_ptr, mask=ok[:, None], other=0.0)

    @triton.jit
    def _mix(x):
        """murmur3's 32-bit finaliser on int32 (products wrap; right shifts masked to be logical): every output
        bit depends on every input bit."""
        x = x ^ ((x >> 16) & 0xFFFF)
        x = x * -2048144789  # 0x85EBCA6B
        x = x ^ ((x >> 13) & 0x7FFFF)
        x = x * -1028477387  # 0xC2B2AE35
        return x ^ ((x >> 16) & 0xFFFF)

    @triton.jit
    def _keep(seed, qh, kr, p_drop):
        """Which pairs of a tile survive attention dropout. ``qh`` = query row * H + head and ``kr`` = key row,
        int32 vectors shaped to broadcast against each other over the tile ((M, 1) and (1, N), or the
        transpose): a hash of (seed, query row, head, key row), so the forward and both backward kernels
        draw the same mask whatever their tiling. The (seed, row, head) part is hashed once per row; each
        pair then costs one more finaliser (~10 integer operations, against ~100 for a Philox draw per pair,
        which made the dropout cost as much as the attention itself)."""
        row = _mix(qh * -1640531535 + seed.to(tl.int32))  # 0x9E3779B1: spreads consecutive rows
        bits = _mix(row ^ (kr * 461845907))  # 0x1B873593
        return ((bits >> 8) & 0xFFFFFF).to(tl.float32) * (1.0 / 16777216.0) >= p_drop

    @triton.jit
    def _seed(SEED, DROPOUT: tl.constexpr):  # noqa: N803
        """The call's dropout seed, read from the device (0 without dropout: the pointer is not a seed)."""
        seed = 0
        if DROPOUT:
            seed = tl.load(SEED)
        return seed

    @triton.jit
    def _mask_kernel(OUT, SEED, p_drop, num_q, num_k, H: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr):  # noqa: N803
        q = tl.program_id(0) * BQ + tl.arange(0, BQ)
        k = tl.program_id(1) * BK + tl.arange(0, BK)
        h = tl.program_id(2)
        keep = _keep(tl.load(SEED), (q * H + h)[:, None], k[None, :], p_drop)
        ok = (q < num_q)[:, None] & (k < num_k)[None, :]
        tl.store(OUT + (h * num_q + q[:, None]) * num_k + k[None, :], keep.to(tl.int8), mask=ok)

    @triton.jit
    def _forward_kernel(
        Q, K, V, O, LSE, KROWS, RUNS, SEED,  # noqa: N803
        stride_q, head_q, stride_k, head_k, qk_scale, p_drop,
        H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
        DROPOUT: tl.constexpr,
    ):  # fmt: skip
        r, mb, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        q_first, q_len, k_off, k_len = _run(RUNS, r)
        seed = _seed(SEED, DROPOUT)
        m0 = mb * BLOCK_M
        if m0 < q_len:
            offs_m, m_ok, rows = _query_rows(q_first, q_len, m0, BLOCK_M)
            q = _rows_tile(Q, rows, m_ok, stride_q, head_q, h, D)
            shift = k_len - q_len  # causal: query m reads keys j <= m + shift
            hi = _key_limit(k_len, q_len, m0, BLOCK_M, CAUSAL)
            m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK_M], tl.float32)
            acc = tl.zeros([BLOCK_M, D], tl.float32)
            for n0 in range(0, hi, BLOCK_N):
                offs_n, n_ok, krow = _key_block(KROWS, k_off, n0, hi, BLOCK_N)
                k, v = _keys_tile(K, V, K, V, krow, n_ok, stride_k, head_k, 0, 0, h, 1, 0, D, False)
                s = tl.dot(q, tl.trans(k)) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
                ok = n_ok[None, :]
                if CAUSAL:
                    ok = ok & (offs_n[None, :] <= offs_m[:, None] + shift)
                s = tl.where(ok, s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with no key yet
                alpha = tl.math.exp2(m_i - m_safe)
                p = tl.math.exp2(s - m_safe[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)  # the normaliser counts every key; dropout zeroes after it
                if DROPOUT:
                    keep = _keep(seed, (rows * H + h).to(tl.int32)[:, None], krow.to(tl.int32)[None, :], p_drop)
                    p = tl.where(keep, p / (1.0 - p_drop), 0.0)
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
                m_i = m_new
            l_safe = tl.where(l_i == 0.0, 1.0, l_i)
            out = (acc / l_safe[:, None]).to(O.dtype.element_ty)
            offs_d = tl.arange(0, D)
            tl.store(O + rows[:, None] * (H * D) + h * D + offs_d[None, :], out, mask=m_ok[:, None])
            tl.store(LSE + rows * H + h, m_i + tl.math.log2(l_safe), mask=m_ok)

    @triton.jit
    def _grad_q_kernel(
        Q, K, V, KS, VS, O, DO, DQ, LSE, DELTA, KROWS, RUNS, SEED,  # noqa: N803
        stride_q, head_q, stride_k, head_k, stride_do, head_do, kept_stride, kept_head, k_seq, n_kept,
        qk_scale, sm_scale, p_drop,
        H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
        KEPT: tl.constexpr, DROPOUT: tl.constexpr,
    ):  # fmt: skip
        r, mb, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
        q_first, q_len, k_off, k_len = _run(RUNS, r)
        seed = _seed(SEED, DROPOUT)
        m0 = mb * BLOCK_M
        if m0 < q_len:
            offs_m, m_ok, rows = _query_rows(q_first, q_len, m0, BLOCK_M)
            q = _rows_tile(Q, rows, m_ok, stride_q, head_q, h, D)
            do = _rows_tile(DO, rows, m_ok, stride_do, head_do, h, D)
            o = _rows_tile(O, rows, m_ok, H * D, D, h, D)
            delta = tl.sum(do.to(tl.float32) * o.to(tl.float32), 1)  # sum over keys of p * dp, per query
            tl.store(DELTA + rows * H + h, delta, mask=m_ok)  # for the key/value kernel, launched next
            lse = tl.load(LSE + rows * H + h, mask=m_ok, other=0.0)
            shift = k_len - q_len
            hi = _key_limit(k_len, q_len, m0, BLOCK_M, CAUSAL)
            dq = tl.zeros([BLOCK_M, D], tl.float32)
            for n0 in range(0, hi, BLOCK_N):
                offs_n, n_ok, krow = _key_block(KROWS, k_off, n0, hi, BLOCK_N)
                k, v = _keys_tile(
                    K, V, KS, VS, krow, n_ok, stride_k, head_k, kept_stride, kept_head, h, k_seq, n_kept, D, KEPT
                )
                ok = n_ok[None, :] & m_ok[:, None]
                if CAUSAL:
                    ok = ok & (offs_n[None, :] <= offs_m[:, None] + shift)
                p = tl.math.exp2(tl.dot(q, tl.trans(k)) * qk_scale - lse[:, None])
                p = tl.where(ok, p, 0.0)
                dp = tl.dot(do, tl.trans(v))  # d out / d p; with dropout, through the kept pairs only
                if DROPOUT:
                    keep = _keep(seed, (rows * H + h).to(tl.int32)[:, None], krow.to(tl.int32)[None, :], p_drop)
                    dp = tl.where(keep, dp / (1.0 - p_drop), 0.0)
                ds = p * (dp - delta[:, None])
                dq += tl.dot(ds.to(k.dtype), k)
            dq = (dq * sm_scale).to(DQ.dtype.element_ty)
            offs_d = tl.arange(0, D)
            tl.store(DQ + rows[:, None] * (H * D) + h * D + offs_d[None, :], dq, mask=m_ok[:, None])

    @triton.jit
    def _grad_kv_kernel(
        Q, K, V, KS, VS, DO, DK, DV, DKS, DVS, LSE, DELTA, RUNS, ITEMS, ENTRIES, SEED,  # noqa: N803
        stride_q, head_q, stride_k, head_k, stride_do, head_do, kept_stride, kept_head, k_seq, n_kept,
        num_keys, qk_scale, sm_scale, p_drop,
        H: tl.constexpr, D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
        KEPT: tl.constexpr, DROPOUT: tl.constexpr,
    ):  # fmt: skip
        """One key tile (BLOCK_N flat key rows) x head, over a stretch of the runs that read it (``KeyTiles``):
        its key/value gradients summed in registers, then stored -- or, for a tile split over several
        programs, added into its float32 slot of DKS / DVS."""
        w, h = tl.program_id(0), tl.program_id(1)
        tile, e0, e1, slot = _run(ITEMS, w)
        if slot > -2:  # -2: a padding item
            seed = _seed(SEED, DROPOUT)
            offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
            row_ok = offs_n < num_keys
            krow = offs_n.to(tl.int64)
            k, v = _keys_tile(
                K, V, KS, VS, krow, row_ok, stride_k, head_k, kept_stride, kept_head, h, k_seq, n_kept, D, KEPT
            )
            dk = tl.zeros([BLOCK_N, D], tl.float32)
            dv = tl.zeros([BLOCK_N, D], tl.float32)
            for e in range(e0, e1):
                r, pos0, lo, hi = _run(ENTRIES, e)
                q_first, q_len, k_off, k_len = _run(RUNS, r)
                n = tl.arange(0, BLOCK_N)
                n_ok = (n >= lo) & (n < hi)
                pos = pos0 + n  # the keys' positions in the run's key list
                shift = k_len - q_len
                m_lo = 0
                if CAUSAL:  # position p is read by the run's queries m >= p - shift
                    m_lo = tl.maximum(pos0 + lo - shift, 0) // BLOCK_M * BLOCK_M
                for m0 in range(m_lo, q_len, BLOCK_M):
                    offs_m, m_ok, rows = _query_rows(q_first, q_len, m0, BLOCK_M)
                    q = _rows_tile(Q, rows, m_ok, stride_q, head_q, h, D)
                    do = _rows_tile(DO, rows, m_ok, stride_do, head_do, h, D)
                    lse = tl.load(LSE + rows * H + h, mask=m_ok, other=0.0)
                    delta = tl.load(DELTA + rows * H + h, mask=m_ok, other=0.0)
                    ok = n_ok[:, None] & m_ok[None, :]
                    if CAUSAL:
                        ok = ok & (pos[:, None] <= offs_m[None, :] + shift)
                    pt = tl.math.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :])  # (BLOCK_N, BLOCK_M)
                    pt = tl.where(ok, pt, 0.0)
                    dpt = tl.dot(v, tl.trans(do))
                    if DROPOUT:  # the kept pairs, scaled: the probabilities the forward used, and their gradient
                        keep = _keep(seed, (rows * H + h).to(tl.int32)[None, :], krow.to(tl.int32)[:, None], p_drop)
                        dv += tl.dot(tl.where(keep, pt / (1.0 - p_drop), 0.0).to(do.dtype), do)
                        dpt = tl.where(keep, dpt / (1.0 - p_drop), 0.0)
                    else:
                        dv += tl.dot(pt.to(do.dtype), do)
                    dst = pt * (dpt - delta[None, :])
                    dk += tl.dot(dst.to(q.dtype), q)
            dk = dk * sm_scale
            offs_d = tl.arange(0, D)
            if slot < 0:  # the tile's only program: its gradients, zero where no run reads a key
                dst_ptr = krow[:, None] * (H * D) + h * D + offs_d[None, :]
                tl.store(DK + dst_ptr, dk.to(DK.dtype.element_ty), mask=row_ok[:, None])
                tl.store(DV + dst_ptr, dv.to(DV.dtype.element_ty), mask=row_ok[:, None])
            else:  # one of several: float32 sums in the tile's slot
                sum_ptr = (slot * BLOCK_N + tl.arange(0, BLOCK_N))[:, None] * (H * D) + h * D + offs_d[None, :]
                tl.atomic_add(DKS + sum_ptr, dk, sem="relaxed")
                tl.atomic_add(DVS + sum_ptr, dv, sem="relaxed")


BLOCK_M = 64
BLOCK_N = 64
NUM_WARPS = 4
NUM_STAGES = 3  # the best of a sweep on an H100 (benchmarks/bench_gather_kernels.py --sweep)
# The key/value gradient kernel's own: key tile rows (fixed when a plan's ``KeyTiles`` are made, which carry
# it), query block, warps and stages: the best of a sweep of the GPU time alone (CUDA graph replays) on an
# H100, regular layout at 15,360 tokens: 1.00 ms forward + backward against 1.23 ms with the forward's
# (64, 64, 4, 3) (benchmarks/bench_gather_kernels.py --sweep-keys)
KEY_TILE = 64
KV_BLOCK_M = 32
KV_WARPS = 4
KV_STAGES = 2


def _block_m(max_q: int) -> int:
    """Query tile rows: 64, or 16 for plans of one-query runs (summaries reading their bar)."""
    return 16 if max_q <= 16 else BLOCK_M


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _strides(*xs: torch.Tensor) -> list[int]:
    """Row and head strides of (rows, H, dh) tensors whose head dimension is contiguous."""
    if any(x.stride(2) != 1 for x in xs):
        raise ValueError("indexed attention needs (rows, H, dh) tensors with a contiguous last dimension")
    return [stride for x in xs for stride in (x.stride(0), x.stride(1))]


def _key_strides(k: torch.Tensor, v: torch.Tensor) -> list[int]:
    """Keys and values are read with one set of strides (views of one projection, or alike)."""
    if k.stride() != v.stride():
        raise ValueError(
            f"indexed attention needs keys and values with equal strides, got {k.stride()} and {v.stride()}"
        )
    return _strides(k)


def _outputs(*xs: torch.Tensor) -> None:
    if not all(x.is_contiguous() for x in xs):
        raise ValueError("indexed attention writes into contiguous (rows, H, dh) outputs")


def forward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_rows: torch.Tensor,
    runs: torch.Tensor,
    max_q: int,
    causal: bool,
    out: torch.Tensor,
    dropout_p: float = 0.0,
    seed: torch.Tensor | None = None,
) -> torch.Tensor:
    """q (Nq, H, dh), k and v (Nk, H, dh) rows -> writes ``out`` (Nq, H, dh) for the runs' queries and
    returns the log-sum-exp (Nq, H) float32 (base 2, scaled), which backward needs. With ``dropout_p``,
    attention dropout with the mask of ``seed`` (``_keep``; a one-element int64 tensor on q's device, read
    by the kernels: a CUDA graph replays them with each replay's draw); backward must be given the same."""
    _outputs(out)
    n_q, h, dh = q.shape
    lse = torch.empty(n_q, h, dtype=torch.float32, device=q.device)
    block_m = _block_m(max_q)
    grid = (runs.shape[0], _cdiv(max_q, block_m), h)
    qk_scale = LOG2E / math.sqrt(dh)
    _forward_kernel[grid](
        q, k, v, out, lse, k_rows, runs, _seed_arg(seed, runs, dropout_p), *_strides(q), *_key_strides(k, v), qk_scale,
        dropout_p,
        h, dh, block_m, BLOCK_N, causal, dropout_p > 0.0, num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )  # fmt: skip
    return lse


def _seed_arg(seed: torch.Tensor | None, placeholder: torch.Tensor, dropout_p: float) -> torch.Tensor:
    """The kernels' seed pointer: the seed tensor with dropout; without, any tensor (never read)."""
    if dropout_p == 0.0:
        return placeholder
    if seed is None or seed.numel() != 1 or seed.dtype != torch.int64:
        raise ValueError("attention dropout in the indexed kernels needs a one-element int64 seed tensor")
    return seed


def dropout_mask(
    seed: int | torch.Tensor, dropout_p: float, num_q: int, num_k: int, heads: int, device: torch.device
) -> torch.Tensor:
    """(H, Nq, Nk) bool: which (query row, key row) pairs of each head a call with ``seed`` keeps -- the
    mask the kernels draw, over all pairs (to check them, or to inspect a call)."""
    out = torch.zeros(heads, num_q, num_k, dtype=torch.int8, device=device)
    seed = torch.as_tensor(seed, dtype=torch.int64, device=device).reshape(1)
    grid = (_cdiv(num_q, 16), _cdiv(num_k, 16), heads)
    _mask_kernel[grid](out, seed, dropout_p, num_q, num_k, heads, 16, 16)
    return out.bool()


class Kept(NamedTuple):
    """Key/value rows that the caller overwrote after the forward, as they were in it.

    ``k`` and ``v`` (B * n, H, dh) hold the first n rows of every sequence of ``k_seq`` key rows; backward
    reads those rows from here and the rest from the keys and values it is given."""

    k: torch.Tensor
    v: torch.Tensor
    k_seq: int
    n: int


class Tiles(NamedTuple):
    """A plan's ``KeyTiles`` tables on the device: items (W, 4), entries (E, 4), split (n,), and the tile's
    rows they were made for (``gathered``)."""

    items: torch.Tensor
    entries: torch.Tensor
    split: torch.Tensor
    block: int


def backward(
    grad: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    k_rows: torch.Tensor,
    runs: torch.Tensor,
    max_q: int,
    tiles: Tiles,
    causal: bool,
    dq: torch.Tensor,
    kept: Kept | None = None,
    dropout_p: float = 0.0,
    seed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Writes dq (Nq, H, dh) for the runs' queries; returns the key/value gradients (Nk, H, dh) in k's dtype,
    0 for keys no run reads: the queries' kernel walks each run's keys, the keys' kernel each key tile's runs
    (``tiles``), so neither sums anything across programs but the split tiles (float32 slots, small)."""
    _outputs(out, dq)
    n_q, h, dh = q.shape
    n_k = k.shape[0]
    delta = torch.empty(n_q, h, dtype=torch.float32, device=q.device)
    block_m = _block_m(max_q)
    qk_scale, sm_scale = LOG2E / math.sqrt(dh), 1.0 / math.sqrt(dh)
    strides = [*_strides(q), *_key_strides(k, v), *_strides(grad)]
    if kept is None:  # the kernels' kept-row arguments, unused
        ks, vs, kept_ints = k, v, [0, 0, 1, 0]
    else:
        ks, vs, kept_ints = kept.k, kept.v, [*_key_strides(kept.k, kept.v), kept.k_seq, kept.n]
    common: dict[str, Any] = {"num_warps": NUM_WARPS, "num_stages": NUM_STAGES}
    seed = _seed_arg(seed, runs, dropout_p)
    _grad_q_kernel[(runs.shape[0], _cdiv(max_q, block_m), h)](
        q, k, v, ks, vs, out, grad, dq, lse, delta, k_rows, runs, seed, *strides, *kept_ints, qk_scale, sm_scale,
        dropout_p, h, dh, block_m, BLOCK_N, causal, kept is not None, dropout_p > 0.0, **common,
    )  # fmt: skip
    # the keys' gradients, tile by tile, with one spare tile (where padding slots of a graphed plan land)
    tile = tiles.block
    num_tiles = _cdiv(n_k, tile)
    dk = torch.empty((num_tiles + 1) * tile, h, dh, dtype=k.dtype, device=k.device)
    dv = torch.empty_like(dk)
    sums = torch.zeros(2, tiles.split.shape[0], tile, h, dh, dtype=torch.float32, device=k.device)
    kv_block_m = _block_m(max_q) if max_q <= 16 else KV_BLOCK_M
    _grad_kv_kernel[(tiles.items.shape[0], h)](
        q, k, v, ks, vs, grad, dk, dv, sums[0], sums[1], lse, delta, runs, tiles.items, tiles.entries, seed,
        *strides, *kept_ints, n_k, qk_scale, sm_scale, dropout_p,
        h, dh, kv_block_m, tile, causal, kept is not None, dropout_p > 0.0, num_warps=KV_WARPS, num_stages=KV_STAGES,
    )  # fmt: skip
    if tiles.split.shape[0]:  # the split tiles' sums into place
        dk.view(num_tiles + 1, tile, h, dh).index_copy_(0, tiles.split, sums[0].to(dk.dtype))
        dv.view(num_tiles + 1, tile, h, dh).index_copy_(0, tiles.split, sums[1].to(dv.dtype))
    return dk[:n_k], dv[:n_k]
