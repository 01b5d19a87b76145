"""Museformer's two-step v2s1 attention, bar-organised cross-attention, and the kernels behind them.

``attend`` computes masked attention. ``reference``: an explicit boolean mask from the layout's predicate
and a dense softmax (ground truth, any device, supports attention dropout). ``gather``: each bar's queries
over their keys gathered into one dense block, through FlashAttention's varlen kernel (``gathered``; the
default on CUDA). ``flex``: torch's FlexAttention with the layout's BlockMask (compiled on CUDA, eager
elsewhere; also where a layout has no gather plan). All read the same ``AttentionLayout``, so they cannot
disagree about who sees whom. FlexAttention has no dropout on the attention probabilities, so
inside flex calls ``attention_dropout`` is not applied (a warning says so once); residual and FFN dropout
are unaffected. On the flex path, the summary step of the default scheme (each summary reads exactly its
own bar) is a segment softmax (``segment_summaries``) rather than an attention kernel: its few queries
would otherwise each walk the whole sequence in one program.

K/V projections are separate methods (``reg_kv``, ``sum_kv2``, ``CrossAttention.memory_kv``) so that
cached decoding can reuse precomputed keys and values.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .gathered import gathered_attention, kernel_for, plan_for, uses_flash
from .masks import AttentionLayout

_COMPILED: dict[str, Callable[..., Any]] = {}
_WARNED_DROPOUT = False


def _flex_attention(device: torch.device) -> Callable[..., Any]:
    """flex_attention, compiled once per process for CUDA (eager elsewhere: tests on CPU)."""
    key = device.type
    if key not in _COMPILED:
        from torch.nn.attention.flex_attention import flex_attention

        _COMPILED[key] = torch.compile(flex_attention) if key == "cuda" else flex_attention
    return _COMPILED[key]


IMPLS = ("auto", "gather", "flex", "reference")
FAST_IMPLS = ("gather", "flex")  # sequences padded to the tile size (flex tiles; gather's hand-over to flex)


def resolve_impl(impl: str, device: torch.device) -> str:
    """``auto`` -> ``gather`` on CUDA, ``reference`` elsewhere; explicit choices are kept."""
    if impl == "auto":
        return "gather" if device.type == "cuda" else "reference"
    if impl not in IMPLS:
        raise ValueError(f"unknown attention implementation {impl!r} (expected {', '.join(IMPLS)})")
    return impl


def _inference(q: torch.Tensor, k: torch.Tensor, dropout_p: float) -> bool:
    """No gradient wanted and no dropout: the reference path can run blocked (``_blocked_reference``)."""
    return dropout_p == 0.0 and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad))


def gather_runs(q: torch.Tensor, dropout_p: float) -> bool:
    """Whether the gather path takes a problem: on the GPU through its kernels (half precision, attention
    dropout included); on the CPU through its plain softmax (tests), without attention dropout -- or with
    it where the tests force the indexed kernels (Triton's interpreter)."""
    if q.is_cuda:
        return uses_flash(q)
    return dropout_p == 0.0 or kernel_for(q, dropout_p) == "indexed"


def prepare_layouts(layouts: tuple[AttentionLayout, ...], impl: str, block_size: int) -> None:
    """Build what the kernels need once per forward, outside the layers (and any compiled region): the
    gather plans, or BlockMasks where a layout has no plan. On the flex path, summaries reading exactly
    their own bar (``segments``) go through a segment softmax and need no BlockMask."""
    for layout in layouts:
        if impl == "reference" or impl == "gather" and plan_for(layout) is not None:
            continue
        if layout.segments is None:
            layout.block_mask(block_size)


# Inference on the reference path (CPU): above this many scores a problem is computed in query blocks of
# BLOCKED_QUERIES rows, each over only the keys some row of the block may read (see ``_blocked_reference``).
BLOCKED_MIN_SCORES = 1 << 22
BLOCKED_QUERIES = 256


def _blocked_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The reference path's result without its (B, H, Q, K) score tensor: per block of queries, the keys
    any of its rows may read are gathered and only those scored. Masked keys weigh exactly 0 in the dense
    softmax, so only the summation order differs. For Museformer's sparse layouts (a few bars fine-grained,
    one summary per other bar) a block reads a small fraction of the keys: the encoder of an 8,192-token
    score window on CPU. No dropout, no autograd (inference only)."""
    b, h, q_len, dh = q.shape
    out = q.new_zeros(b, h, q_len, v.shape[-1])
    scale = 1.0 / math.sqrt(dh)
    acc = torch.promote_types(q.dtype, torch.float32)
    for start in range(0, q_len, BLOCKED_QUERIES):
        rows = mask[:, :, start : start + BLOCKED_QUERIES]  # (B, 1, bq, K)
        cols = rows.any(dim=2).any(dim=1).any(dim=0).nonzero().flatten()  # keys some row reads, any sequence
        if cols.numel() == 0:  # every row empty: 0, as on the dense path
            continue
        allowed = rows.index_select(3, cols)
        row_any = allowed.any(dim=-1, keepdim=True)
        scores = torch.matmul(q[:, :, start : start + BLOCKED_QUERIES], k.index_select(2, cols).transpose(-1, -2))
        scores = (scores * scale).masked_fill(~allowed, float("-inf")).masked_fill(~row_any, 0.0)
        probs = torch.softmax(scores.to(acc), dim=-1).to(q.dtype) * row_any
        out[:, :, start : start + BLOCKED_QUERIES] = torch.matmul(probs, v.index_select(2, cols))
    return out


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: AttentionLayout,
    impl: str,
    block_size: int,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Masked attention. q (B, H, Q, dh), k and v (B, H, K, dh) -> (B, H, Q, dh); empty rows give 0."""
    impl = resolve_impl(impl, q.device)
    if impl == "gather":
        plan = plan_for(layout)
        if plan is not None and gather_runs(q, dropout_p):
            return gathered_attention(q, k, v, plan, dropout_p)
        # FlexAttention where there is no plan (a causal run that does not read its own bar) or for training
        # on the GPU in float32; the reference path for float32 inference on the GPU (blocked, no compile)
        # and for attention dropout on the CPU
        impl = "reference" if plan is not None and (not q.is_cuda or _inference(q, k, dropout_p)) else "flex"
    if impl == "reference":
        mask = layout.dense()  # (B, 1, Q, K) bool
        if _inference(q, k, dropout_p) and q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] >= BLOCKED_MIN_SCORES:
            return _blocked_reference(q, k, v, mask)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, H, Q, K)
        row_any = mask.any(dim=-1, keepdim=True)  # (B, 1, Q, 1)
        # Fully masked rows (padding, unused summary slots) get finite scores, then zero weights, so
        # neither the output nor its gradient is NaN.
        scores = scores.masked_fill(~mask, float("-inf")).masked_fill(~row_any, 0.0)
        probs = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=-1)
        probs = probs.to(q.dtype) * row_any
        if dropout_p > 0.0:
            probs = nn.functional.dropout(probs, p=dropout_p, training=True)
        return torch.matmul(probs, v)
    if impl == "flex":
        global _WARNED_DROPOUT
        if dropout_p > 0.0 and not _WARNED_DROPOUT:
            warnings.warn("FlexAttention has no attention dropout: not applied in flex calls", stacklevel=2)
            _WARNED_DROPOUT = True
        if q.shape[2] == 0:
            return q.new_zeros(q.shape)
        v = v.to(q.dtype)
        options = None
        if q.is_cuda and q.shape[2] % 128 == 0 and k.shape[2] % 128 == 0:
            # The lengths are padded to the block size, but kernels compiled for dynamic shapes cannot know
            # it and bounds-check every load and score (~30% slower at 15k-65k tokens on an H100).
            options = {"IS_DIVISIBLE": True}
        block_mask = layout.block_mask(block_size)
        return _flex_attention(q.device)(q, k.to(q.dtype), v, block_mask=block_mask, kernel_options=options)
    raise ValueError(f"unknown attention implementation {impl!r} (expected 'reference' or 'flex')")


def segment_summaries(
    q_s: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    token_slot: torch.Tensor,
    slot_valid: torch.Tensor,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """Step 1 when every summary reads exactly its own bar: a segment softmax, O(R d), fully parallel.

    q_s (B, H, S, dh); k, v (B, H, S+R, dh) = [summary keys ; regular keys]; token_slot (B, R) = the summary
    slot that reads each regular token (-1: none); slot_valid (B, S). Same function as ``attend`` with the
    summary layout's mask (the tests compare them), but an attention kernel would give each of the few
    summary query tiles the whole sequence to walk through serially. Without attention dropout it runs as
    ``_SegmentSoftmax``, which recomputes its per-token products in backward instead of keeping them.
    """
    if q_s.shape[2] == 0:  # no complete bar yet: no summary
        return q_s.new_zeros(q_s.shape)
    if dropout_p == 0.0:
        return _SegmentSoftmax.apply(q_s, k, v, token_slot, slot_valid)
    b, h, s_len, dh = q_s.shape
    r_len = k.shape[2] - s_len
    v_s, v_r = v[:, :, :s_len], v[:, :, s_len:]
    has = (token_slot >= 0)[:, None, :]  # (B, 1, R)
    idx = token_slot.clamp(min=0)[:, None, :].expand(b, h, r_len)  # (B, H, R)
    s_tok, s_self, _ = _segment_scores(q_s, k[:, :, :s_len], k[:, :, s_len:], idx, has)
    with torch.no_grad():  # per-segment max, only to keep exp() in range (softmax does not depend on it)
        peak = s_self.clone().scatter_reduce_(2, idx, s_tok, reduce="amax", include_self=True)
    e_tok = torch.exp(s_tok - torch.gather(peak, 2, idx))  # (B, H, R); 0 where no slot reads the token
    e_self = torch.exp(s_self - peak)
    denom = e_self + torch.zeros_like(e_self).scatter_add(2, idx, e_tok)  # (B, H, S)
    p_tok, p_self = e_tok / torch.gather(denom, 2, idx), e_self / denom
    p_tok = nn.functional.dropout(p_tok, p=dropout_p, training=True)
    p_self = nn.functional.dropout(p_self, p=dropout_p, training=True)
    out = _segment_sum(p_tok, p_self, v_s, v_r, idx)
    return (out * slot_valid[:, None, :, None]).to(v.dtype)  # unused slots read nothing: 0


def _segment_scores(
    q_s: torch.Tensor, k_s: torch.Tensor, k_r: torch.Tensor, idx: torch.Tensor, has: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores in float32 (or float64): per regular token against its slot's query (B, H, R; -inf where no
    slot reads it) and of each summary against itself (B, H, S); also the gathered queries (B, H, R, dh)."""
    dh = q_s.shape[-1]
    acc = torch.promote_types(q_s.dtype, torch.float32)
    scale = 1.0 / math.sqrt(dh)
    q_tok = torch.gather(q_s, 2, idx[..., None].expand(*idx.shape, dh)).to(acc)  # (B, H, R, dh)
    s_tok = (q_tok * k_r.to(acc)).sum(-1) * scale
    s_self = (q_s.to(acc) * k_s.to(acc)).sum(-1) * scale  # a summary also reads itself
    return s_tok.masked_fill(~has, float("-inf")), s_self, q_tok


def _segment_sum(
    p_tok: torch.Tensor, p_self: torch.Tensor, v_s: torch.Tensor, v_r: torch.Tensor, idx: torch.Tensor
) -> torch.Tensor:
    """Per slot: sum of p_tok * v_r over its tokens + p_self * v_s, in the weights' dtype (B, H, S, dh)."""
    b, h, s_len, dh = v_s.shape
    acc = p_tok.dtype
    out = torch.zeros(b, h, s_len, dh, dtype=acc, device=v_s.device)
    out = out.scatter_add(2, idx[..., None].expand(*idx.shape, dh), p_tok[..., None] * v_r.to(acc))
    return out + p_self[..., None] * v_s.to(acc)


def _segment_forward(
    q_s: torch.Tensor,
    k_s: torch.Tensor,
    k_r: torch.Tensor,
    v_s: torch.Tensor,
    v_r: torch.Tensor,
    token_slot: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward of ``_SegmentSoftmax``: (output before the slot mask (B, H, S, dh), log-sum-exp (B, H, S))."""
    b, h = q_s.shape[:2]
    r_len = k_r.shape[2]
    has = (token_slot >= 0)[:, None, :]
    idx = token_slot.clamp(min=0)[:, None, :].expand(b, h, r_len)
    s_tok, s_self, _ = _segment_scores(q_s, k_s, k_r, idx, has)
    peak = s_self.clone().scatter_reduce_(2, idx, s_tok, reduce="amax", include_self=True)
    e_tok = torch.exp(s_tok - torch.gather(peak, 2, idx))
    e_self = torch.exp(s_self - peak)
    denom = e_self + torch.zeros_like(e_self).scatter_add(2, idx, e_tok)
    out = _segment_sum(e_tok / torch.gather(denom, 2, idx), e_self / denom, v_s, v_r, idx)
    return out, peak + denom.log()


def _segment_backward(
    q_s: torch.Tensor,
    k_s: torch.Tensor,
    k_r: torch.Tensor,
    v_s: torch.Tensor,
    v_r: torch.Tensor,
    token_slot: torch.Tensor,
    slot_valid: torch.Tensor,
    lse: torch.Tensor,
    out: torch.Tensor,
    grad: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward of ``_SegmentSoftmax``: (dq_s, dk, dv), the per-token products recomputed."""
    b, h, s_len, dh = q_s.shape
    r_len = k_r.shape[2]
    scale = 1.0 / math.sqrt(dh)
    has = (token_slot >= 0)[:, None, :]
    idx = token_slot.clamp(min=0)[:, None, :].expand(b, h, r_len)
    idx4 = idx[..., None].expand(b, h, r_len, dh)
    s_tok, s_self, q_tok = _segment_scores(q_s, k_s, k_r, idx, has)
    p_tok = torch.exp(s_tok - torch.gather(lse, 2, idx))  # (B, H, R), 0 where no slot reads the token
    p_self = torch.exp(s_self - lse)
    g = grad.to(out.dtype) * slot_valid[:, None, :, None]  # (B, H, S, dh)
    delta = (g * out).sum(-1)  # (B, H, S): sum over keys of p * dp
    g_tok = torch.gather(g, 2, idx4)  # (B, H, R, dh)
    acc = out.dtype
    ds_tok = p_tok * ((g_tok * v_r.to(acc)).sum(-1) - torch.gather(delta, 2, idx)) * scale  # d score, scaled
    ds_self = p_self * ((g * v_s.to(acc)).sum(-1) - delta) * scale
    dv = torch.cat([p_self[..., None] * g, p_tok[..., None] * g_tok], dim=2)
    dk = torch.cat([ds_self[..., None] * q_s.to(acc), ds_tok[..., None] * q_tok], dim=2)
    dq = torch.zeros_like(g).scatter_add(2, idx4, ds_tok[..., None] * k_r.to(acc)) + ds_self[..., None] * k_s.to(acc)
    return dq.to(q_s.dtype), dk.to(k_r.dtype), dv.to(v_r.dtype)


def _on_device(fn: Callable[..., Any], device: torch.device) -> Callable[..., Any]:
    """``fn`` compiled once per process for CUDA (dynamic shapes: one kernel set for every length); eager
    elsewhere. Its ~30 small ops per call would otherwise cost more host time than GPU time."""
    key = f"{fn.__name__}:{device.type}"
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, dynamic=True) if device.type == "cuda" else fn
    return _COMPILED[key]


class _SegmentSoftmax(torch.autograd.Function):
    """``segment_summaries`` (no dropout) that saves its inputs and a per-slot log-sum-exp only.

    The autograd version keeps several (B, H, R, dh) float32 products for backward (~1.5 GiB at 65,536
    tokens over 4 layers, more than the whole dense model's activations grow); as in flash attention,
    backward recomputes them from q, k, v and the log-sum-exp instead.

    The caller may overwrite the summary rows of ``k`` and ``v`` afterwards (``V2S1Attention`` puts the
    step-2 summary keys there): those rows are copied (S rows, small), and the views of the rest are kept
    on ``ctx`` rather than through ``save_for_backward``, whose version check would refuse the write
    although backward never reads what it changes.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        q_s: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        token_slot: torch.Tensor,
        slot_valid: torch.Tensor,
    ) -> torch.Tensor:
        s_len = q_s.shape[2]
        k_s, v_s = k[:, :, :s_len].clone(), v[:, :, :s_len].clone()
        k_r, v_r = k[:, :, s_len:], v[:, :, s_len:]
        out, lse = _on_device(_segment_forward, q_s.device)(q_s, k_s, k_r, v_s, v_r, token_slot)
        ctx.save_for_backward(k_s, v_s, token_slot, slot_valid, lse, out)
        ctx.views = (q_s, k_r, v_r)  # not written by the caller
        return (out * slot_valid[:, None, :, None]).to(v.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        k_s, v_s, token_slot, slot_valid, lse, out = ctx.saved_tensors
        q_s, k_r, v_r = ctx.views
        backward = _on_device(_segment_backward, q_s.device)
        grads = backward(q_s, k_s, k_r, v_s, v_r, token_slot, slot_valid, lse, out, grad)
        ctx.views = None
        return (*grads, None, None)


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, d) -> (B, H, L, d/H)."""
    b, n, d = x.shape
    return x.view(b, n, num_heads, d // num_heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, H, L, dh) -> (B, L, H*dh)."""
    b, h, n, dh = x.shape
    return x.transpose(1, 2).reshape(b, n, h * dh)


class V2S1Attention(nn.Module):
    """The "summarise, then update" self-attention of one layer (museformer.md 5.3), on the joint stream.

    The layer carries the summary and regular streams as one tensor ``x = [s ; r]`` (B, S+R, d), so that
    LayerNorm, the Q/K/V projection, out-proj and FFN run once for both (their weights are shared, as
    in the original); only the Q/K/V biases differ per stream. The keys of step 1 are then simply all of
    ``k``. Summaries get dedicated key2/value2 projections (no bias, as the released model effectively had).
    Parameters: ``qkv_proj`` (3d x d, = Wq;Wk;Wv), ``qkv_bias_reg``/``qkv_bias_sum`` (3d each),
    ``kv2_proj`` (2d x d, = Wk2;Wv2), ``out_proj`` (d x d + bias): 1,576,448 at d = 512, as the original.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float, impl: str, block_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention_embed_dim {dim} is not divisible by {num_heads} heads")
        self.dim, self.num_heads, self.dropout, self.impl, self.block_size = dim, num_heads, dropout, impl, block_size
        self.qkv_proj = nn.Linear(dim, 3 * dim, bias=False)
        self.kv2_proj = nn.Linear(dim, 2 * dim, bias=False)
        self.out_proj = nn.Linear(dim, dim)
        self.qkv_bias_reg = nn.Parameter(torch.zeros(3 * dim))
        self.qkv_bias_sum = nn.Parameter(torch.zeros(3 * dim))
        gain = 1.0 / math.sqrt(2.0)
        with torch.no_grad():  # Xavier per d x d block, as for the original's separate projections
            for weight in (self.qkv_proj.weight, self.kv2_proj.weight):
                for block in weight.split(dim, dim=0):
                    nn.init.xavier_uniform_(block, gain=gain)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)
        # cached decoding's prefill (render.incremental) sets a list here to receive each forward's keys and
        # values: (k, v) of the joint stream (B, H, S+R, dh) and the summaries' (k2, v2) (B, H, S, dh)
        self.kv_sink: list[tuple[torch.Tensor, ...]] | None = None

    def _p(self) -> float:
        return self.dropout if self.training else 0.0

    def _bias(self, length: int, num_sum: int) -> torch.Tensor:
        """(S+R, 3d) Q/K/V biases: the summary stream's for the first ``num_sum`` rows."""
        return torch.cat([self.qkv_bias_sum.expand(num_sum, -1), self.qkv_bias_reg.expand(length - num_sum, -1)])

    def _split(self, qkv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, L, 3d) -> q, k, v (B, H, L, dh), views."""
        q, k, v = qkv.split(self.dim, dim=-1)
        return _heads(q, self.num_heads), _heads(k, self.num_heads), _heads(v, self.num_heads)

    def _summary_path(self, q_s: torch.Tensor, sx: AttentionLayout) -> str:
        """How step 1 runs: ``gather`` (gathered attention on the layout's plan), ``segments`` (flex path,
        summaries reading exactly their own bar: ``segment_summaries``) or ``attend``. The first two let the
        caller overwrite the summary key rows afterwards (the fused step 2 of ``forward``)."""
        impl = resolve_impl(self.impl, q_s.device)
        if impl == "gather" and plan_for(sx) is not None:
            if gather_runs(q_s, self._p()):
                return "gather"
            if q_s.is_cuda and _inference(q_s, q_s, self._p()):
                return "attend"  # float32 inference on the GPU: attend's reference hand-over, no compile
        if impl in FAST_IMPLS and sx.segments is not None:
            return "segments"
        return "attend"

    def summarize(self, q_s: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sx: AttentionLayout) -> torch.Tensor:
        """Step 1: summary queries (B, H, S, dh) over [k_s ; k_r] (B, H, S+R, dh) -> s2 (B, H, S, dh)."""
        path = self._summary_path(q_s, sx)
        if path == "gather":
            return gathered_attention(q_s, k, v, plan_for(sx), self._p(), keep_rows=q_s.shape[2])
        if path == "segments":
            return segment_summaries(q_s, k, v, *sx.segments, dropout_p=self._p())
        return attend(q_s, k, v, sx, self.impl, self.block_size, self._p())

    def sum_kv2(self, s2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summary keys/values (B, H, S, dh) that regular tokens of later bars read (coarse-grained)."""
        k2, v2 = self.kv2_proj(_merge(s2)).split(self.dim, dim=-1)
        return _heads(k2, self.num_heads), _heads(v2, self.num_heads)

    def update(
        self,
        q_r: torch.Tensor,
        k_s2: torch.Tensor,
        v_s2: torch.Tensor,
        k_r: torch.Tensor,
        v_r: torch.Tensor,
        rx: AttentionLayout,
    ) -> torch.Tensor:
        """Step 2: regular queries (B, H, R, dh) over [fresh summaries ; regular] -> r2 (B, H, R, dh)."""
        k = torch.cat([k_s2, k_r], dim=2)  # (B, H, S+R, dh)
        v = torch.cat([v_s2, v_r], dim=2)
        return attend(q_r, k, v, rx, self.impl, self.block_size, self._p())

    def forward(self, xh: torch.Tensor, num_sum: int, sx: AttentionLayout, rx: AttentionLayout) -> torch.Tensor:
        """Normalised joint stream (B, S+R, d) -> attention output after out-proj (B, S+R, d)."""
        return self.output(*self.mix(self.qkv_rows(xh, num_sum), num_sum, sx, rx))

    def qkv_rows(self, xh: torch.Tensor, num_sum: int) -> torch.Tensor:
        """(B, S+R, d) -> the joint Q/K/V projection (B, S+R, 3d) with per-stream biases."""
        qkv = self.qkv_proj(xh)  # bf16 under autocast: keep it so (a float32 bias would upcast q, k, v)
        return qkv + self._bias(xh.shape[1], num_sum).to(qkv.dtype)

    def mix(
        self, qkv: torch.Tensor, num_sum: int, sx: AttentionLayout, rx: AttentionLayout
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The two steps on a projection (B, S+R, 3d) -> (s2 (B, H, S, dh), r2 (B, H, R, dh)).

        Writes the step-2 summary keys into ``qkv`` on the fast paths (see below)."""
        q, k, v = self._split(qkv)
        s2 = self.summarize(q[:, :, :num_sum], k, v, sx)
        path, p = self._summary_path(q[:, :, :num_sum], sx), self._p()
        # step 1 lets its key rows be overwritten on the gather and segment paths; with attention dropout
        # only through the indexed kernels (the segment softmax is then plain autograd, which keeps the rows;
        # FlashAttention on gathered chunks is left as validated on the GPU, unfused)
        if path == "gather":
            fused = p == 0.0 or kernel_for(q, p) == "indexed"
        else:
            fused = path == "segments" and p == 0.0
        fused = fused and self.kv_sink is None
        if fused:
            # Step 2's keys [k_s2 ; k_r] are written into the projection itself, over the summary rows that
            # step 1 has used (its kernel allows it), and read through fresh views: no concatenated
            # (B, H, S+R, dh) copies kept for backward, and no as_strided gradients of stale views.
            qkv[:, :num_sum, self.dim :] = self.kv2_proj(_merge(s2))
            q, k, v = self._split(qkv)
            return s2, attend(q[:, :, num_sum:], k, v, rx, self.impl, self.block_size, p)
        k_s2, v_s2 = self.sum_kv2(s2)
        if self.kv_sink is not None:
            self.kv_sink.append((k, v, k_s2, v_s2))
        return s2, self.update(q[:, :, num_sum:], k_s2, v_s2, k[:, :, num_sum:], v[:, :, num_sum:], rx)

    def output(self, s2: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
        """out-proj per stream -> (B, S+R, d): the attention output laid out (B, R, H, dh) merges heads
        without a copy, and out_proj then keeps for backward the same tensor the attention kernel keeps."""
        return torch.cat([self.out_proj(_merge(s2)), self.out_proj(_merge(r2))], dim=1)


class CrossAttention(nn.Module):
    """Target regular tokens over the encoder memory [source summaries ; source regular tokens]."""

    def __init__(self, dim: int, num_heads: int, dropout: float, impl: str, block_size: int) -> None:
        super().__init__()
        self.num_heads, self.dropout, self.impl, self.block_size = num_heads, dropout, impl, block_size
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        gain = 1.0 / math.sqrt(2.0)
        for lin in (self.q_proj, self.k_proj, self.v_proj):
            nn.init.xavier_uniform_(lin.weight, gain=gain)
            nn.init.zeros_(lin.bias)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values (B, H, S_src+R_src, dh) of the encoder memory (B, S_src+R_src, d); cacheable."""
        return _heads(self.k_proj(memory), self.num_heads), _heads(self.v_proj(memory), self.num_heads)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: AttentionLayout) -> torch.Tensor:
        """x (B, R, d) normalised -> (B, R, d)."""
        q = _heads(self.q_proj(x), self.num_heads)
        p = self.dropout if self.training else 0.0
        return self.out_proj(_merge(attend(q, k, v, layout, self.impl, self.block_size, p)))
