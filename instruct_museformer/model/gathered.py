"""Bar-gathered attention: each run of queries of one bar reads its keys gathered into one dense block,
through FlashAttention's variable-length kernel.

Museformer's layouts are unions of whole bars: the tokens of bar i read a few bars token by token, one
summary per other bar, the specials, and (causally) their own bar. On the token grid those bars rarely
line up with an attention kernel's 128 x 128 tiles (88% of the tiles FlexAttention visits at 15k tokens
are partial, each ~2x the cost of a full one), and a mask function runs for every pair inside them.
Gathered per bar -- ``[allowed summaries ; allowed earlier keys ; the bar itself]`` -- every problem is
dense: a run of Lq queries over Lk keys, causal with the diagonal aligned bottom-right (query j of the
run reads the first Lk - Lq + j + 1 keys), which is exactly FlashAttention's causal varlen semantics.
No mask is evaluated at all.

The keys are gathered per chunk of runs (``CHUNK_KEYS``) and gathered again in backward instead of being
kept, so the extra memory is one chunk's; key/value gradients are summed back into place with
``index_add_`` in float32. On CUDA in bfloat16/float16 the kernel is FlashAttention (attention dropout
included, its RNG state kept for backward); otherwise a plain padded softmax does the same arithmetic
(float32 checks on the GPU, tests on the CPU).

The plan is read off the layout's own class table and ``k_pos`` -- the predicate of the reference path --
and checked: a causal layout in which some run does not read its own bar (so the diagonal cannot sit
bottom-right) gets no plan, and the caller uses FlexAttention instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .masks import AttentionLayout

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


@dataclass(frozen=True)
class GatherPlan:
    """Which keys each run of queries reads, packed run after run.

    q_rows: (Nq,) long, flat query row ``b * Q + q`` of every query that reads anything (runs in order)
    k_rows: (Nk,) long, flat key row ``b * K + kv`` of every gathered key (per run; causal: own bar last)
    Queries not in ``q_rows`` (padding, rows with no allowed key) get 0, as on the reference path.
    """

    q_rows: torch.Tensor
    k_rows: torch.Tensor
    chunks: tuple[Chunk, ...]
    causal: bool
    num_queries: int  # B * Q
    num_keys: int  # B * K


def plan_for(layout: AttentionLayout, chunk_keys: int = CHUNK_KEYS) -> GatherPlan | None:
    """The layout's plan, built once and shared by every layer using the layout (None: not expressible)."""
    cache = layout._gather
    if chunk_keys not in cache:
        cache[chunk_keys] = build_plan(layout, chunk_keys)
    return cache[chunk_keys]


def build_plan(layout: AttentionLayout, chunk_keys: int = CHUNK_KEYS) -> GatherPlan | None:
    """Runs of equal query class, each with the keys of the classes its table row allows (and, causal, not
    after the run); on the host with numpy, one copy of the per-token classes over."""
    device = layout.q_class.device
    q_class = layout.q_class.cpu().numpy()
    k_class = layout.k_class.cpu().numpy()
    table = layout.table.cpu().numpy()  # (n+2, C): may query class i read key class j
    k_pos = None if layout.k_pos is None else layout.k_pos.cpu().numpy()
    batch, q_len = q_class.shape
    k_len = k_class.shape[1]
    classes = table.shape[1]

    # runs: maximal stretches of one query class within a sequence
    flat = q_class.reshape(-1)
    seq = np.repeat(np.arange(batch), q_len)
    starts = np.flatnonzero(np.r_[True, (flat[1:] != flat[:-1]) | (seq[1:] != seq[:-1])]) if flat.size else flat
    lengths = np.diff(np.r_[starts, flat.size])
    allowed = table[flat[starts]] if flat.size else np.zeros((0, classes), bool)  # (G, C)
    run_seq = seq[starts] if flat.size else starts

    # keys grouped by (sequence, class), positions ascending within a group
    codes = (np.arange(batch)[:, None] * classes + k_class).reshape(-1)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=batch * classes)
    group_start = np.cumsum(counts) - counts

    # every (run, allowed key class) pair expands to that class's keys in the run's sequence
    pair_run, pair_class = np.nonzero(allowed)
    group = run_seq[pair_run] * classes + pair_class
    seg_len = counts[group]
    k_rows = order[_ranges(group_start[group], seg_len)]  # flat b * K + kv
    key_run = np.repeat(pair_run, seg_len)
    causal = k_pos is not None
    if causal:  # keys after a run are after all its queries: masked for the whole run
        run_last = starts - run_seq * q_len + lengths - 1  # the run's last query position
        keep = k_pos[k_rows % k_len] <= run_last[key_run]
        k_rows, key_run = k_rows[keep], key_run[keep]

    num_keys = np.bincount(key_run, minlength=len(starts))
    used = num_keys > 0  # padding runs and rows with nothing to read stay 0
    if causal and not _own_bar_last(k_rows, key_run, num_keys, starts, lengths, used, q_len, k_len):
        return None
    q_count, k_count = lengths[used], num_keys[used]
    return GatherPlan(
        torch.from_numpy(_ranges(starts[used], q_count)).to(device),
        torch.from_numpy(k_rows).to(device),
        _chunks(q_count, k_count, chunk_keys, device),
        causal,
        batch * q_len,
        batch * k_len,
    )


def _ranges(first: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(first[i], first[i] + count[i])``."""
    offsets = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
    return np.repeat(first, count) + offsets


def _own_bar_last(
    k_rows: np.ndarray,
    key_run: np.ndarray,
    num_keys: np.ndarray,
    starts: np.ndarray,
    lengths: np.ndarray,
    used: np.ndarray,
    q_len: int,
    k_len: int,
) -> bool:
    """Causal plans only: do the last Lq keys of every run hold exactly the run's own tokens, in order?

    Then the keys before them all precede the run (later ones were dropped, and the positions inside the
    run are its own tokens), so the bottom-right diagonal is the causal rule exactly.
    """
    if np.any(num_keys[used] < lengths[used]):
        return False
    run_end = np.cumsum(num_keys)  # one past each run's last gathered key
    from_end = run_end[key_run] - 1 - np.arange(len(k_rows))  # 0 = the run's last key
    own = from_end < lengths[key_run]
    # query row b * Q + q reads key row b * K + (K - Q) + q: regular keys follow the summary region
    seq = starts[key_run[own]] // q_len
    query_row = starts[key_run[own]] + lengths[key_run[own]] - 1 - from_end[own]
    expected = query_row + seq * (k_len - q_len) + (k_len - q_len)
    return bool(np.array_equal(k_rows[own], expected))


def _chunks(q_count: np.ndarray, k_count: np.ndarray, chunk_keys: int, device: torch.device) -> tuple[Chunk, ...]:
    """Consecutive runs grouped so that each call gathers at most ``chunk_keys`` keys (or one run)."""
    chunks, first = [], 0
    q_off, k_off = np.r_[0, np.cumsum(q_count)], np.r_[0, np.cumsum(k_count)]
    while first < len(k_count):
        last = int(np.searchsorted(k_off, k_off[first] + chunk_keys, side="right")) - 1
        last = max(last, first + 1)
        cu_q = torch.from_numpy((q_off[first : last + 1] - q_off[first]).astype(np.int32)).to(device)
        cu_k = torch.from_numpy((k_off[first : last + 1] - k_off[first]).astype(np.int32)).to(device)
        chunks.append(
            Chunk(
                int(q_off[first]),
                int(q_off[last]),
                int(k_off[first]),
                int(k_off[last]),
                cu_q,
                cu_k,
                int(q_count[first:last].max()),
                int(k_count[first:last].max()),
            )
        )
        first = last
    return tuple(chunks)


# ---------------------------------------------------------------------------------------------------
# Kernels: (packed queries (Nq, H, dh), gathered keys/values (Nk, H, dh)) of one chunk.


def uses_flash(q: torch.Tensor) -> bool:
    """FlashAttention runs on CUDA in half precision; anything else takes the plain softmax."""
    return q.is_cuda and q.dtype in (torch.bfloat16, torch.float16)


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


def _rows(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, dh) -> (B * L, H, dh), a view where the strides allow (batch 1 of a projection)."""
    b, h, n, dh = x.shape
    return x.transpose(1, 2).reshape(b * n, h, dh)


class _GatheredAttention(torch.autograd.Function):
    """Forward and backward chunk by chunk; saves q, k, v, the output and per-chunk log-sum-exps only."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: GatherPlan, dropout_p: float
    ) -> torch.Tensor:
        b, h, q_len, dh = q.shape
        flash = uses_flash(q)
        qf, kf, vf = _rows(q), _rows(k), _rows(v)
        out = q.new_zeros(b * q_len, h, dh)
        lses, states = [], []
        for ch in plan.chunks:
            q_rows, k_rows = plan.q_rows[ch.q_start : ch.q_end], plan.k_rows[ch.k_start : ch.k_end]
            qc, kc, vc = qf.index_select(0, q_rows), kf.index_select(0, k_rows), vf.index_select(0, k_rows)
            if flash:
                oc, lse, state = _flash_forward(qc, kc, vc, ch, plan.causal, dropout_p)
                lses.append(lse)
                states.append(state)
            else:
                oc = _plain_forward(qc, kc, vc, ch, plan.causal)
            out.index_copy_(0, q_rows, oc)
        ctx.save_for_backward(q, k, v, out, *lses)
        ctx.plan, ctx.states, ctx.dropout_p, ctx.flash = plan, states, dropout_p, flash
        return out.view(b, q_len, h, dh).transpose(1, 2)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        q, k, v, out, *lses = ctx.saved_tensors
        plan: GatherPlan = ctx.plan
        b, h, q_len, dh = q.shape
        k_len = k.shape[2]
        qf, kf, vf, gf = _rows(q), _rows(k), _rows(v), _rows(grad.to(out.dtype))
        dq = torch.zeros_like(qf, memory_format=torch.contiguous_format)
        acc = torch.promote_types(k.dtype, torch.float32)  # a key is read by several runs: sum in float32
        dk = torch.zeros(b * k_len, h, dh, dtype=acc, device=k.device)
        dv = torch.zeros(b * k_len, h, dh, dtype=acc, device=v.device)
        for i, ch in enumerate(plan.chunks):
            q_rows, k_rows = plan.q_rows[ch.q_start : ch.q_end], plan.k_rows[ch.k_start : ch.k_end]
            qc, kc, vc = qf.index_select(0, q_rows), kf.index_select(0, k_rows), vf.index_select(0, k_rows)
            gc = gf.index_select(0, q_rows)
            if ctx.flash:
                oc = out.index_select(0, q_rows)
                state, p = ctx.states[i], ctx.dropout_p
                dqc, dkc, dvc = _flash_backward(gc, qc, kc, vc, oc, lses[i], ch, plan.causal, p, state)
            else:
                dqc, dkc, dvc = _plain_backward(gc, qc, kc, vc, ch, plan.causal)
            dq.index_copy_(0, q_rows, dqc.to(dq.dtype))
            dk.index_add_(0, k_rows, dkc.to(acc))
            dv.index_add_(0, k_rows, dvc.to(acc))
        ctx.states = None

        def heads(x: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor:
            return x.to(dtype).view(b, n, h, dh).transpose(1, 2)

        return heads(dq, q_len, q.dtype), heads(dk, k_len, k.dtype), heads(dv, k_len, v.dtype), None, None


@torch.compiler.disable
def gathered_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: GatherPlan, dropout_p: float = 0.0
) -> torch.Tensor:
    """q (B, H, Q, dh), k and v (B, H, K, dh) -> (B, H, Q, dh) under ``plan``; rows reading nothing give 0.

    Attention dropout needs the FlashAttention kernel (``uses_flash``); the caller routes other cases to
    the reference path.
    """
    if dropout_p > 0.0 and not uses_flash(q):
        raise ValueError("gathered attention applies dropout only through FlashAttention (CUDA, half precision)")
    if not plan.chunks:  # nothing reads anything (all padding)
        return q.new_zeros(q.shape)
    return _GatheredAttention.apply(q, k.to(q.dtype), v.to(q.dtype), plan, dropout_p)
