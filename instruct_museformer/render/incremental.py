"""Exact key/value-cached decoding for the Museformer decoder (one new token per sequence per step).

Why this is exact (museformer.md section 8): a regular token's keys/values at every layer depend only on
its causal past, so they are computed once and cached; the summary stream of bar j (all layers) depends
only on bar j's tokens (sum2con/sum2sum read offset 0, or earlier bars), and is final once the Bar token
(id 4) that closes bar j is fed. At that step each layer runs the summary queries of that bar once and
appends their key2/value2 (what later bars read) and their key/value (what later summaries may read) to a
summary cache. The cross-attention keys/values of the encoder memory are computed once per layer.

Nothing here re-implements the model: the step re-uses the decoder's own modules and weights (embedding,
LayerNorms, projections, FFN, output) and the same bar-offset sets; only the masks are built per step
from those sets, for one query row, instead of the dense ``(T, T)`` layouts of the full forward.
The mask rules are those of ``model.masks`` (regular_layout / summary_layout / cross_layout):

* regular query of bar q over summary slot of bar s: ``q >= 1`` and ``s - q`` in con2sum (s complete);
* regular query over regular key k (k not after the query): both in bars and ``bar(k) - q`` in con2con,
  or k is the prefix (the EOS-as-BOS) and q >= 1, or both are the prefix (pref2pref lt/full);
* summary slot of bar j over regular key: ``bar(k) - j`` in sum2con; over summary slot: in sum2sum;
* cross: target bar q over source summaries with ``s - q`` in cross_con2sum, source tokens with
  ``bar - q`` in cross_con2con, and every target token reads the source's specials.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data.batch import collate_bar_tokens
from ..model.decoder import MuseformerDecoder
from ..model.encoder import EncoderOut
from ..model.scheme import OffsetSet
from ..tokens.specials import BAR, NUM_SPECIALS

# torch intra-op threads for the token-by-token loop on CPU (None: leave torch's setting). A batch-1 step is
# hundreds of small kernels: a second thread barely helps on an idle machine (~7%), and where the cores are
# shared its pool spin-waits, so that one thread is 2-3x faster (docs/benchmarks.md, CPU decoding).
_STEP_THREADS: int | None = 1


def set_step_threads(threads: int | None) -> None:
    """Threads of the decoding loop on CPU (``imf render --threads``); None keeps torch's setting."""
    global _STEP_THREADS
    _STEP_THREADS = threads


def get_step_threads() -> int | None:
    """Threads of the decoding loop on CPU (None: torch's setting)."""
    return _STEP_THREADS


@contextmanager
def step_threads(device: torch.device) -> Iterator[None]:
    """Run the decoding loop with the step thread count on CPU (the encoder keeps torch's setting)."""
    old = torch.get_num_threads()
    if device.type != "cpu" or _STEP_THREADS is None or _STEP_THREADS == old:
        yield
        return
    torch.set_num_threads(_STEP_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(old)


class OffsetTable:
    """An OffsetSet as a lookup table: offsets are clamped to +-M, beyond every finite interval bound."""

    def __init__(self, offsets: OffsetSet, device: torch.device) -> None:
        bounds = [abs(b) for interval in offsets.intervals for b in interval if b is not None]
        self.m = max(bounds, default=0) + 1
        self.table = offsets.contains(torch.arange(-self.m, self.m + 1, device=device))

    def __call__(self, off: torch.Tensor) -> torch.Tensor:
        return self.table[off.clamp(-self.m, self.m) + self.m]


def _share(*tables: Sequence[OffsetTable]) -> list[int]:
    """Per layer, the first layer with the same offset tables: layers of one group share an attention mask."""
    keys = [tuple(id(t[i]) for t in tables) for i in range(len(tables[0]))]
    return [keys.index(k) for k in keys]


def check_cacheable(decoder: MuseformerDecoder) -> None:
    """Refuse schemes whose full forward is not causal in bars (the cache would not reproduce it)."""
    sc = decoder.schemes
    for i in range(len(decoder.layers)):
        if sc["con2sum"][i].as_list(0, 0):
            raise ValueError(f"layer {i}: con2sum reads the own bar's summary (offset 0): not causal, not cacheable")
        for part in ("con2sum", "sum2con", "sum2sum"):
            if sc[part][i].as_list(1, 4096):
                raise ValueError(f"layer {i}: {part} selects later bars (positive offsets): not cacheable")
    if not decoder.cfg.con2con_causal:
        raise ValueError("con2con_causal is False: the decoder is not causal and cannot be decoded incrementally")


def _heads(x: torch.Tensor, h: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, h, d // h).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    b, h, n, dh = x.shape
    return x.transpose(1, 2).reshape(b, n, h * dh)


def _project(attn: nn.Module, x: torch.Tensor, summary: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q, k, v (B, n, d) of normalised rows x (B, n, d) of one stream, with that stream's biases.

    Reads the model's V2S1Attention parameters: the fused ``qkv_proj`` / ``qkv_bias_{reg,sum}`` layout,
    or the separate ``{q,k,v}_proj`` / ``{q,k,v}_bias_{reg,sum}`` one of earlier revisions.
    """
    if hasattr(attn, "qkv_proj"):
        bias = attn.qkv_bias_sum if summary else attn.qkv_bias_reg
        q, k, v = (attn.qkv_proj(x) + bias).split(x.shape[-1], dim=-1)
        return q, k, v
    kind = "sum" if summary else "reg"
    return tuple(  # type: ignore[return-value]
        getattr(attn, f"{p}_proj")(x) + getattr(attn, f"{p}_bias_{kind}") for p in ("q", "k", "v")
    )


def _kv2(attn: nn.Module, s2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """key2/value2 (B, n, d) of the summaries' step-1 outputs s2 (B, n, d) (heads merged)."""
    if hasattr(attn, "kv2_proj"):
        k2, v2 = attn.kv2_proj(s2).split(s2.shape[-1], dim=-1)
        return k2, v2
    return attn.key2(s2), attn.value2(s2)


def _attend(
    q: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor]], allowed: torch.Tensor
) -> torch.Tensor:
    """q (B,H,Q,dh) over key/value parts [(k_i, v_i) (B,H,K_i,dh)], allowed (B,1|H,Q,sum K_i) -> (B,H,Q,dh).

    The parts are never concatenated and K is used as stored (``K @ q^T``), so a step reads each cache
    once instead of copying it; fully masked rows give 0.
    """
    scale = 1.0 / math.sqrt(q.shape[-1])
    scores = torch.cat([torch.matmul(k, q.transpose(-1, -2)).transpose(-1, -2) for k, _ in parts], dim=-1) * scale
    any_row = allowed.any(dim=-1, keepdim=True)
    scores = scores.masked_fill(~allowed, float("-inf")).masked_fill(~any_row, 0.0)
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype) * any_row
    out, start = None, 0
    for _, v in parts:
        part = torch.matmul(probs[..., start : start + v.shape[2]], v)
        out = part if out is None else out + part
        start += v.shape[2]
    assert out is not None
    return out


def _allowed_columns(allowed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, K) bool -> the allowed columns of each row, in order, as (n, m) indices and (n, m) validity.

    m is the largest count; a shorter row is padded with (masked) indices of disallowed columns. One host
    synchronisation (the count), so this is for the eager path only.
    """
    counts = allowed.sum(dim=1)
    m = int(counts.max()) if allowed.shape[0] else 0
    cols = torch.argsort((~allowed).to(torch.uint8), dim=1, stable=True)[:, :m]
    return cols, torch.arange(m, device=allowed.device)[None, :] < counts[:, None]


def _take(x: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """x (B, H, K, dh), cols (B, m) -> x[b, :, cols[b]] (B, H, m, dh), a contiguous copy."""
    b, h, _, dh = x.shape
    return torch.gather(x, 2, cols[:, None, :, None].expand(b, h, cols.shape[1], dh))


def _bias(allowed: torch.Tensor, heads: int, dtype: torch.dtype, room: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K) allowed keys -> additive mask (B, H, 1, K + room) (0 / -inf; the room -inf) and (B,) rows
    that read something. A row that reads nothing gets 0 everywhere (finite: no NaN; its output is zeroed)."""
    b, k = allowed.shape
    rows = allowed.any(dim=1)
    bias = torch.full((b, heads, 1, k + room), float("-inf"), dtype=dtype, device=allowed.device)
    bias[:, :, 0, :k] = torch.where(allowed | ~rows[:, None], 0.0, float("-inf")).to(dtype)[:, None, :]
    return bias, rows


def _keep(rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
    """(B,) rows that read something -> None when all do, else a (B, 1, 1, 1) 0/1 factor for the output."""
    return None if bool(rows.all()) else rows.to(dtype)[:, None, None, None]


def _attend_one(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, keep: torch.Tensor | None
) -> torch.Tensor:
    """q (B,H,1,dh) over k, v (B,H,K,dh) with an additive mask bias (B,H,1,K) -> (B,H,1,dh), in 3 kernels.

    ``keep`` (B,1,1,1), when given, zeroes rows that read nothing (their bias is 0, not -inf).
    """
    b, h, n, dh = q.shape
    length = k.shape[2]
    scores = torch.baddbmm(bias.reshape(b * h, n, length), q.reshape(b * h, n, dh),
                           k.reshape(b * h, length, dh).transpose(1, 2), alpha=1.0 / math.sqrt(dh))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.bmm(probs, v.reshape(b * h, length, dh)).view(b, h, n, dh)
    return out if keep is None else out * keep


class _LayerCache:
    """Per-layer caches: regular K/V, summary key2/value2 and summary K/V (for sum2sum), cross K/V."""

    def __init__(self, batch: int, heads: int, dh: int, capacity: int, slots: int, device, dtype) -> None:
        self.k = torch.zeros(batch, heads, capacity, dh, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.k2 = torch.zeros(batch, heads, slots, dh, device=device, dtype=dtype)
        self.v2 = torch.zeros_like(self.k2)
        self.ks = torch.zeros_like(self.k2)
        self.vs = torch.zeros_like(self.k2)
        self.cross_k: torch.Tensor | None = None
        self.cross_v: torch.Tensor | None = None

    def grow_regular(self, capacity: int) -> None:
        extra = capacity - self.k.shape[2]
        pad = (0, 0, 0, extra)
        self.k = nn.functional.pad(self.k, pad)
        self.v = nn.functional.pad(self.v, pad)

    def grow_summary(self, slots: int) -> None:
        extra = slots - self.k2.shape[2]
        pad = (0, 0, 0, extra)
        self.k2, self.v2 = nn.functional.pad(self.k2, pad), nn.functional.pad(self.v2, pad)
        self.ks, self.vs = nn.functional.pad(self.ks, pad), nn.functional.pad(self.vs, pad)


@dataclass
class _BarContext:
    """What the regular queries read while no sequence changes bar (growing caches only).

    Valid while every sequence keeps its query bar, closed-bar count and activity (``key``): until then the
    keys a regular query may read are the allowed summary slots and earlier tokens, gathered once at the
    front of ``k``/``v``, and the tokens fed since (all in the query's own bar, all read or none), appended
    one column a step at ``fill``. ``bias`` is the additive mask (0 / -inf), one tensor per distinct scheme,
    shared by the layers that use it; ``tail`` is its value for an appended column. Cross-attention reads
    the allowed source keys, gathered once. Per layer lists; None where a layer has no cross-attention.
    """

    key: torch.Tensor  # (3, B): query bar, closed bars, active
    fill: int
    k: list[torch.Tensor] = field(default_factory=list)  # (B, H, capacity, dh)
    v: list[torch.Tensor] = field(default_factory=list)
    bias: list[torch.Tensor] = field(default_factory=list)  # (B, H, 1, capacity)
    tail: list[torch.Tensor] = field(default_factory=list)  # (B, H, 1, 1)
    keep: list[torch.Tensor | None] = field(default_factory=list)  # (B, 1, 1, 1); None: every row reads
    cross_k: list[torch.Tensor | None] = field(default_factory=list)
    cross_v: list[torch.Tensor | None] = field(default_factory=list)
    cross_bias: list[torch.Tensor | None] = field(default_factory=list)
    cross_keep: list[torch.Tensor | None] = field(default_factory=list)

    def append_column(self) -> int:
        """Make room for one more key column (doubling); returns its index. The new column's bias is set."""
        col = self.fill
        if col >= self.k[0].shape[2]:
            extra = self.k[0].shape[2]
            self.k = [nn.functional.pad(x, (0, 0, 0, extra)) for x in self.k]
            self.v = [nn.functional.pad(x, (0, 0, 0, extra)) for x in self.v]
            grown: dict[int, torch.Tensor] = {}
            for j, b in enumerate(self.bias):
                if id(b) not in grown:
                    grown[id(b)] = nn.functional.pad(b, (0, extra), value=float("-inf"))
                self.bias[j] = grown[id(b)]
        done: set[int] = set()
        for b, tail in zip(self.bias, self.tail, strict=True):
            if id(b) not in done:
                b.narrow(3, col, 1).copy_(tail)
                done.add(id(b))
        self.fill += 1
        return col


class IncrementalDecoder:
    """Feeds one token per sequence per step and returns next-token logits equal to the full forward's.

    ``step(tokens, active)``: tokens (B,) long, the decoder input at position ``self.length`` (the first
    call gets the EOS-as-BOS); ``active`` (B,) bool marks sequences that really have a token here (others
    get padding: never attended, their logits are meaningless). Returns float32 logits (B, V).

    With growing (non-static) caches, attention reads only the keys the scheme allows: the allowed summary
    slots, earlier bars' tokens and source keys are gathered once per bar (:class:`_BarContext`), so a step
    costs what the scheme reads (a few bars) rather than the whole cache and source window. Masked keys
    weigh exactly 0 in the full softmax, so this changes only the summation order.
    """

    def __init__(
        self,
        decoder: MuseformerDecoder,
        batch: int,
        beat_table: torch.Tensor,
        encoder_out: EncoderOut | None = None,
        capacity: int = 256,
        static: bool = False,
        max_bars: int | None = None,
        cuda_graph: bool = False,
        source_size: tuple[int, int] | None = None,
        bar_token: int = BAR,
    ) -> None:
        check_cacheable(decoder)
        self.bar_token = bar_token  # the token that closes a bar (--eob-token)
        if decoder.training:
            raise ValueError("IncrementalDecoder needs the model in eval mode (no dropout)")
        self.dec = decoder
        cfg = decoder.cfg
        self.cfg = cfg
        p = next(decoder.parameters())
        self.device, self.dtype = p.device, p.dtype
        self.batch = batch
        self.heads = cfg.num_attention_heads
        self.dh = cfg.attention_embed_dim // self.heads
        self.ns = max(cfg.num_summary_tokens_each_chunk, 0)
        self.beat_table = beat_table.to(self.device)
        self.length = 0
        dev = self.device
        # static: fixed-size caches (no growth, attention over the whole capacity, masked), so that the
        # regular step has constant shapes and can be replayed as a CUDA graph
        self.static = static or cuda_graph
        self.sparse = not self.static
        self._ctx: _BarContext | None = None
        self.use_graph = cuda_graph and self.device.type == "cuda"
        self._graph: torch.cuda.CUDAGraph | None = None
        self._t = torch.zeros(1, dtype=torch.long, device=dev)
        self.bars_closed = torch.zeros(batch, dtype=torch.long, device=dev)
        self.closes = torch.zeros(batch, dtype=torch.bool, device=dev)  # static: the last step closed a bar
        self.running_beat = torch.zeros(batch, dtype=torch.long, device=dev)
        self.pos_bar = torch.zeros(batch, capacity, dtype=torch.long, device=dev)
        self.pos_valid = torch.zeros(batch, capacity, dtype=torch.bool, device=dev)
        bars = (max_bars if max_bars is not None else capacity // 2 + 1) if self.static else 16
        slots = bars * max(self.ns, 1)
        self.caches = [
            _LayerCache(batch, self.heads, self.dh, capacity, slots, dev, self.dtype) for _ in decoder.layers
        ]
        sc = decoder.schemes
        tables: dict[OffsetSet, OffsetTable] = {}

        def table(s: OffsetSet) -> OffsetTable:
            if s not in tables:
                tables[s] = OffsetTable(s, dev)
            return tables[s]

        n = len(decoder.layers)
        self.c2c = [table(sc["con2con"][i]) for i in range(n)]
        self.c2s = [table(sc["con2sum"][i]) for i in range(n)]
        self.s2c = [table(sc["sum2con"][i]) for i in range(n)]
        self.s2s = [table(sc["sum2sum"][i]) for i in range(n)]
        self.pref2pref = cfg.pref2pref_mode != "none"
        self._regular_group = _share(self.c2c, self.c2s)  # static path: layers that share one mask
        self._summary_group = _share(self.s2s, self.s2c)
        self.encoder_out = encoder_out
        if any(layer.cross is not None for layer in decoder.layers):
            if encoder_out is None:
                raise ValueError("the translation decoder needs the encoder output")
            self.xc = [table(sc["cross_con2con"][i]) for i in range(n)]
            self.xs = [table(sc["cross_con2sum"][i]) for i in range(n)]
            self._cross_group = _share(self.xc, self.xs)
            side = encoder_out.side
            self.src_bar, self.src_valid = side.bar, side.valid
            self.src_sum_bar, self.src_sum_valid = side.sum_bar, side.sum_valid
            for layer, cache in zip(decoder.layers, self.caches, strict=True):
                assert layer.cross is not None
                cache.cross_k, cache.cross_v = layer.cross.memory_kv(encoder_out.memory)
            if source_size is not None:
                self._pad_source(*source_size)

    def _pad_source(self, regular_size: int, summary_size: int) -> None:
        """Pad the source side (its tokens and summary slots, their cross K/V) with masked entries to at least
        these sizes, so that windows of different source lengths share the static shapes of a compiled step.
        Masked keys weigh exactly 0: the logits do not change."""
        s, r = self.src_sum_bar.shape[1], self.src_bar.shape[1]
        s_pad, r_pad = max(summary_size - s, 0), max(regular_size - r, 0)
        pad = nn.functional.pad
        self.src_sum_bar, self.src_sum_valid = pad(self.src_sum_bar, (0, s_pad)), pad(self.src_sum_valid, (0, s_pad))
        self.src_bar, self.src_valid = pad(self.src_bar, (0, r_pad)), pad(self.src_valid, (0, r_pad))
        for cache in self.caches:  # (B, H, S + R, dh) = [summaries ; tokens]
            for name in ("cross_k", "cross_v"):
                x = getattr(cache, name)
                padded = torch.cat([pad(x[:, :, :s], (0, 0, 0, s_pad)), pad(x[:, :, s:], (0, 0, 0, r_pad))], dim=2)
                setattr(cache, name, padded)

    # -- masks ------------------------------------------------------------------------------------------

    def _summary_bars(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(slots,) bar of each summary slot and (B, slots) validity (its bar is complete)."""
        slots = self.caches[0].k2.shape[2]
        sbar = torch.arange(slots, device=self.device) // max(self.ns, 1) + 1
        return sbar, sbar[None, :] <= self.bars_closed[:, None]

    def _summary_ok(self, i: int, q_bar: torch.Tensor, sbar: torch.Tensor, svalid: torch.Tensor) -> torch.Tensor:
        """(B, slots) summary slots the regular queries of bars ``q_bar`` (B,) read at layer i."""
        qb = q_bar[:, None]
        return svalid & (qb >= 1) & self.c2s[i](sbar[None, :] - qb)

    def _regular_rule(self, i: int, qb: torch.Tensor, kb: torch.Tensor) -> torch.Tensor:
        """Whether a regular query of bar ``qb`` reads a regular key of bar ``kb`` at layer i (broadcast)."""
        content = qb >= 1
        reg_ok = (content & (kb >= 1) & self.c2c[i](kb - qb)) | (content & (kb == 0))
        if self.pref2pref:
            reg_ok = reg_ok | (~content & (kb == 0))
        return reg_ok

    def _regular_ok(self, i: int, q_bar: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """(B, hi - lo) regular positions ``lo .. hi-1`` the regular queries of bars ``q_bar`` read at layer i."""
        return self._regular_rule(i, q_bar[:, None], self.pos_bar[:, lo:hi]) & self.pos_valid[:, lo:hi]

    def _regular_mask(
        self, i: int, q_bar: torch.Tensor, sbar: torch.Tensor, svalid: torch.Tensor, t: int
    ) -> torch.Tensor:
        """(B, 1, 1, slots + t) allowed keys of the new regular token at layer i (keys beyond it: invalid)."""
        sum_ok = self._summary_ok(i, q_bar, sbar, svalid)
        return torch.cat([sum_ok, self._regular_ok(i, q_bar, 0, t)], dim=1)[:, None, None, :]

    def _cross_mask(self, i: int, q_bar: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        qb = q_bar[:, None]
        content = qb >= 1
        sum_ok = self.src_sum_valid & content & self.xs[i](self.src_sum_bar - qb)
        near = content & (self.src_bar >= 1) & self.xc[i](self.src_bar - qb)
        reg_ok = self.src_valid & ((self.src_bar == 0) | near)
        return (torch.cat([sum_ok, reg_ok], dim=1) & active[:, None])[:, None, None, :]

    def _bar_context(self, q_bar: torch.Tensor, active: torch.Tensor) -> _BarContext:
        """The current :class:`_BarContext`, rebuilt when a sequence changes bar, closes one or stops."""
        key = torch.stack([q_bar, self.bars_closed, active.long()])
        if self._ctx is not None and torch.equal(self._ctx.key, key):
            return self._ctx
        t, h, b = self.length, self.heads, self.batch
        sbar, svalid = self._summary_bars()
        picks: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for i in range(len(self.caches)):  # the keys each distinct scheme reads, gathered at the front
            pick = (id(self.c2c[i]), id(self.c2s[i]))
            if pick not in picks:
                s_cols, s_valid = _allowed_columns(self._summary_ok(i, q_bar, sbar, svalid))
                r_cols, r_valid = _allowed_columns(self._regular_ok(i, q_bar, 0, t))
                # a token fed from now on is in the query's own bar: read iff the scheme reads that bar
                own = self._regular_rule(i, q_bar[:, None], q_bar[:, None])[:, 0] & active
                picks[pick] = (s_cols, r_cols, torch.cat([s_valid, r_valid], dim=1), own)
        width = max(s_cols.shape[1] + r_cols.shape[1] for s_cols, r_cols, _, _ in picks.values())
        ctx = _BarContext(key, width)
        masks: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        for pick, (_, _, allowed, own) in picks.items():
            allowed = torch.cat([allowed, allowed.new_zeros(b, width - allowed.shape[1])], dim=1)
            bias, rows = _bias(allowed, h, self.dtype, room=64)
            reads = rows | own
            bias[~reads] = 0.0  # a row that reads nothing, not even its own bar: finite, zeroed after
            tail = torch.where(own | ~reads, 0.0, float("-inf")).to(self.dtype)[:, None, None, None]
            masks[pick] = (bias, tail.expand(-1, h, 1, 1), _keep(reads, self.dtype))
        cross: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = {}
        for i, (layer, cache) in enumerate(zip(self.dec.layers, self.caches, strict=True)):
            pick = (id(self.c2c[i]), id(self.c2s[i]))
            s_cols, r_cols, _, _ = picks[pick]
            bias, tail, keep = masks[pick]
            pad = (0, 0, 0, bias.shape[3] - s_cols.shape[1] - r_cols.shape[1])
            ctx.k.append(nn.functional.pad(torch.cat([_take(cache.k2, s_cols), _take(cache.k, r_cols)], dim=2), pad))
            ctx.v.append(nn.functional.pad(torch.cat([_take(cache.v2, s_cols), _take(cache.v, r_cols)], dim=2), pad))
            ctx.bias.append(bias)
            ctx.tail.append(tail)
            ctx.keep.append(keep)
            if layer.cross is None or cache.cross_k is None or cache.cross_v is None:
                for part in (ctx.cross_k, ctx.cross_v, ctx.cross_bias, ctx.cross_keep):
                    part.append(None)
                continue
            pick = (id(self.xc[i]), id(self.xs[i]))
            if pick not in cross:
                x_cols, x_valid = _allowed_columns(self._cross_mask(i, q_bar, active)[:, 0, 0])
                x_bias, x_rows = _bias(x_valid, h, self.dtype)
                cross[pick] = (x_cols, x_bias, _keep(x_rows, self.dtype))
            x_cols, x_bias, x_keep = cross[pick]
            ctx.cross_k.append(_take(cache.cross_k, x_cols))
            ctx.cross_v.append(_take(cache.cross_v, x_cols))
            ctx.cross_bias.append(x_bias)
            ctx.cross_keep.append(x_keep)
        self._ctx = ctx
        return ctx

    # -- growth -----------------------------------------------------------------------------------------

    def _ensure_capacity(self, positions: int) -> None:
        """Growing caches: room for positions 0 .. positions - 1 (at least doubling, as slots do)."""
        cap = self.pos_bar.shape[1]
        if positions <= cap:
            return
        new = max(positions, cap * 2)
        self.pos_bar = nn.functional.pad(self.pos_bar, (0, new - cap))
        self.pos_valid = nn.functional.pad(self.pos_valid, (0, new - cap), value=False)
        for cache in self.caches:
            cache.grow_regular(new)

    def _ensure_slots(self, bars: int) -> None:
        need = bars * max(self.ns, 1)
        have = self.caches[0].k2.shape[2]
        if need <= have:
            return
        new = max(need, 2 * have)
        for cache in self.caches:
            cache.grow_summary(new)

    # -- one step ---------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, tokens: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        dev = self.device
        tokens = tokens.to(dev).long()
        active = torch.ones_like(tokens, dtype=torch.bool) if active is None else active.to(dev)
        if self.static:
            if self.length >= self.pos_bar.shape[1]:
                raise RuntimeError(f"static KV cache full ({self.pos_bar.shape[1]} positions)")
            if self.use_graph and self._graph is None:
                self._capture()
            if self._graph is not None:
                self._in_tokens.copy_(tokens)
                self._in_active.copy_(active)
                self._graph.replay()
                logits = self._out_logits.clone()
            else:
                logits = self.static_step(tokens, active)
            if bool(self.closes.any()):
                self.static_summaries()
            self.length += 1
            return logits
        self._ensure_capacity(self.length + 1)
        closes = active & (tokens == self.bar_token)
        logits = self._regular_gathered(tokens, active)
        if self.ns > 0:
            close_idx = closes.nonzero().flatten()
            if close_idx.numel():
                self._summaries(close_idx)
        self.bars_closed.add_(closes.long())
        self._t.add_(1)
        self.length += 1
        return logits

    def prefill(self, tokens: torch.Tensor) -> None:
        """Feed ``tokens`` (B, P), every sequence active, as P calls of :meth:`step` would -- but in one
        full decoder forward whose keys and values fill the caches (a window's context: ~1,000 tokens in
        one pass instead of ~1,000 steps). Only on an empty cache; the first token is the EOS-as-BOS.
        """
        if self.length:
            raise RuntimeError("prefill needs an empty cache")
        b, p = tokens.shape
        dev = self.device
        batch = collate_bar_tokens(list(tokens.cpu()), self.beat_table.cpu(), self.bar_token).to(dev)
        bars = int(batch.num_complete_bars.max())
        if self.static:
            if p >= self.pos_bar.shape[1] or bars * self.ns > self.caches[0].k2.shape[2]:
                raise RuntimeError(f"static KV cache too small for a {p}-token prefill")
        else:
            self._ensure_capacity(p + 1)
            self._ensure_slots(bars)
        sinks: list[list[tuple[torch.Tensor, ...]]] = []
        for layer in self.dec.layers:
            layer.attn.kv_sink = []
            sinks.append(layer.attn.kv_sink)
        try:
            self.dec(batch, self.encoder_out)
        finally:
            for layer in self.dec.layers:
                layer.attn.kv_sink = None
        n = bars * self.ns  # summary slots of complete bars (rows with fewer bars: slots not yet valid)
        for cache, ((k, v, k2, v2),) in zip(self.caches, sinks, strict=True):
            s = k.shape[2] - batch.tokens.shape[1]  # summary rows of the joint stream come first
            cache.k[:, :, :p], cache.v[:, :, :p] = k[:, :, s : s + p], v[:, :, s : s + p]
            cache.ks[:, :, :n], cache.vs[:, :, :n] = k[:, :, :n], v[:, :, :n]
            cache.k2[:, :, :n], cache.v2[:, :, :n] = k2[:, :, :n], v2[:, :, :n]
        self.pos_bar[:, :p] = batch.bar_ids
        self.pos_valid[:, :p] = True
        self.bars_closed.copy_(batch.num_complete_bars)
        values = self.beat_table[tokens.to(dev)]  # the running beat after the last onset token, as step keeps it
        last = torch.where(values > 0, torch.arange(p, device=dev), -1).amax(dim=1)
        beat = values.gather(1, last.clamp(min=0)[:, None])[:, 0]
        self.running_beat.copy_(torch.where(last >= 0, beat, self.running_beat))
        self._t.fill_(p)
        self.length = p
        self._ctx = None

    def static_step(self, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """The regular pass on the fixed-size caches with no host synchronisation (CUDA-graph safe).

        It records in ``self.closes`` which sequences' fed token closes a bar; when any does, the caller
        runs :meth:`static_summaries` before the next step (a bar's summary is read only by later bars, and
        only a few steps in a hundred close a bar, so the summary pass is not part of every step). Past the
        capacity, writes go to the last position (decoding stops its sequences before that; later steps only
        feed inactive padding).
        """
        logits = self._regular(tokens, active)
        self.closes.copy_(active & (tokens == self.bar_token))
        self._t.copy_((self._t + 1).clamp(max=self.pos_bar.shape[1] - 1))
        return logits

    def static_summaries(self) -> None:
        """The summary pass of the bars the last :meth:`static_step` closed (no host synchronisation)."""
        if self.ns > 0:
            self._summaries_static(self.closes)
        self.bars_closed.add_(self.closes.long())

    def _capture(self) -> None:
        """Record the static step as a CUDA graph; fall back to eager if that fails."""
        b, dev = self.batch, self.device
        self._in_tokens = torch.zeros(b, dtype=torch.long, device=dev)
        self._in_active = torch.zeros(b, dtype=torch.bool, device=dev)
        t = self._t.clone()
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):  # inactive padding inputs write nothing that a later step reads
                    self.static_step(self._in_tokens, self._in_active)
            torch.cuda.current_stream().wait_stream(side)
            self._t.copy_(t)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._out_logits = self.static_step(self._in_tokens, self._in_active)
            self._graph = graph
        except Exception as error:  # capture is an optimisation: keep decoding without it
            warnings.warn(f"CUDA graph capture failed ({type(error).__name__}: {error}); decoding eagerly",
                          stacklevel=3)
            self.use_graph = False
            self._graph = None
        self._t.copy_(t)

    def _regular(self, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """The new regular token through every layer: writes its K/V, returns logits (B, V) float32.

        Only in-place updates of state tensors and no host synchronisation, so it can be a CUDA graph.
        """
        dec = self.dec
        t = self._t
        length = self.pos_bar.shape[1] if self.static else self.length + 1
        special = tokens < NUM_SPECIALS
        q_bar = torch.where(special | ~active, torch.zeros_like(tokens), self.bars_closed + 1)
        values = self.beat_table[tokens]
        self.running_beat.copy_(torch.where(active & (values > 0), values, self.running_beat))
        beat = torch.where((values == 0) | ~active, torch.zeros_like(values), self.running_beat)
        self.pos_bar.index_copy_(1, t, q_bar[:, None])
        self.pos_valid.index_copy_(1, t, active[:, None])
        r = dec.embed.regular(tokens[:, None], q_bar[:, None], beat[:, None])  # (B, 1, d)
        sbar, svalid = self._summary_bars()
        cross_masks: dict[int, torch.Tensor] = {}  # by layer group (see _share)
        masks: dict[int, torch.Tensor] = {}
        for i, (layer, cache) in enumerate(zip(dec.layers, self.caches, strict=True)):
            attn = layer.attn
            r_hat = layer._pre(layer.attn_norm, r)
            q, k_new, v_new = (_heads(x, self.heads) for x in _project(attn, r_hat, summary=False))
            cache.k.index_copy_(2, t, k_new)
            cache.v.index_copy_(2, t, v_new)
            parts = [(cache.k2, cache.v2), (cache.k[:, :, :length], cache.v[:, :, :length])]
            group = self._regular_group[i]
            if group not in masks:
                masks[group] = self._regular_mask(i, q_bar, sbar, svalid, length)
            mask = masks[group]
            r = layer._post(layer.attn_norm, r + attn.out_proj(_merge(_attend(q, parts, mask))))
            if layer.cross is not None and layer.cross_norm is not None:
                key = self._cross_group[i]
                if key not in cross_masks:
                    cross_masks[key] = self._cross_mask(i, q_bar, active)
                x = layer._pre(layer.cross_norm, r)
                cq = _heads(layer.cross.q_proj(x), self.heads)
                c = layer.cross.out_proj(_merge(_attend(cq, [(cache.cross_k, cache.cross_v)], cross_masks[key])))
                r = layer._post(layer.cross_norm, r + c)
            r = layer._post(layer.ffn_norm, r + layer.ffn(layer._pre(layer.ffn_norm, r)))
        if dec.final_norm is not None:
            r = dec.final_norm(r)
        return dec.output(r[:, 0]).float()

    def _regular_gathered(self, tokens: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """:meth:`_regular` on growing caches, reading only the keys the scheme allows (:class:`_BarContext`)."""
        dec, t = self.dec, self.length
        special = tokens < NUM_SPECIALS
        q_bar = torch.where(special | ~active, torch.zeros_like(tokens), self.bars_closed + 1)
        values = self.beat_table[tokens]
        self.running_beat.copy_(torch.where(active & (values > 0), values, self.running_beat))
        beat = torch.where((values == 0) | ~active, torch.zeros_like(values), self.running_beat)
        self.pos_bar[:, t] = q_bar
        self.pos_valid[:, t] = active
        r = dec.embed.regular(tokens[:, None], q_bar[:, None], beat[:, None])  # (B, 1, d)
        ctx = self._bar_context(q_bar, active)
        col = ctx.append_column()
        n = col + 1
        for i, (layer, cache) in enumerate(zip(dec.layers, self.caches, strict=True)):
            attn = layer.attn
            r_hat = layer._pre(layer.attn_norm, r)
            q, k_new, v_new = (_heads(x, self.heads) for x in _project(attn, r_hat, summary=False))
            cache.k.narrow(2, t, 1).copy_(k_new)
            cache.v.narrow(2, t, 1).copy_(v_new)
            ctx.k[i].narrow(2, col, 1).copy_(k_new)
            ctx.v[i].narrow(2, col, 1).copy_(v_new)
            a = _attend_one(q, ctx.k[i][:, :, :n], ctx.v[i][:, :, :n], ctx.bias[i][..., :n], ctx.keep[i])
            r = layer._post(layer.attn_norm, r + attn.out_proj(_merge(a)))
            if layer.cross is not None and layer.cross_norm is not None:
                cross_k, cross_v, cross_bias = ctx.cross_k[i], ctx.cross_v[i], ctx.cross_bias[i]
                assert cross_k is not None and cross_v is not None and cross_bias is not None
                x = layer._pre(layer.cross_norm, r)
                cq = _heads(layer.cross.q_proj(x), self.heads)
                c = _attend_one(cq, cross_k, cross_v, cross_bias, ctx.cross_keep[i])
                r = layer._post(layer.cross_norm, r + layer.cross.out_proj(_merge(c)))
            r = layer._post(layer.ffn_norm, r + layer.ffn(layer._pre(layer.ffn_norm, r)))
        if dec.final_norm is not None:
            r = dec.final_norm(r)
        return dec.output(r[:, 0]).float()

    def _summaries(self, idx: torch.Tensor) -> None:
        """The summary stream of the bars closed by this step's Bar tokens (elements ``idx``), all layers.

        Runs after the regular pass: the Bar token's own K/V are then in every layer's cache, and no
        regular token of this step reads its own bar's summary (con2sum excludes offset 0).
        """
        bar = self.bars_closed[idx] + 1
        if self.static:
            if int(bar.max()) * self.ns > self.caches[0].k2.shape[2]:
                raise RuntimeError(f"static summary cache full ({self.caches[0].k2.shape[2]} slots)")
        else:
            self._ensure_slots(int(bar.max()))
        ids = torch.arange(1, self.ns + 1, device=self.device).expand(idx.numel(), self.ns)
        s = self.dec.embed.summaries(ids, bar[:, None].expand(-1, self.ns))  # (n, ns, d)
        sbar, _ = self._summary_bars()
        for i in range(len(self.dec.layers)):
            s = self._summary_layer(i, s, idx, bar, sbar)

    def _summary_layer(
        self, i: int, s: torch.Tensor, idx: torch.Tensor, bar: torch.Tensor, sbar: torch.Tensor
    ) -> torch.Tensor:
        """Layer i of the summary stream of the bars that close now (elements ``idx``, bars ``bar``)."""
        layer, cache = self.dec.layers[i], self.caches[i]
        attn, h, ns = layer.attn, self.heads, self.ns
        t = self.length + 1
        s_hat = layer._pre(layer.attn_norm, s)  # (n, ns, d)
        q, k_self, v_self = (_heads(x, h) for x in _project(attn, s_hat, summary=True))
        jb = bar[:, None]
        # earlier complete bars' summaries (sum2sum, offsets < 0), then this bar's own slots, then tokens
        prev_ok = (sbar[None, :] < jb) & self.s2s[i](sbar[None, :] - jb)
        self_ok = self.s2s[i](torch.zeros_like(jb)).expand(-1, ns)
        kb = self.pos_bar[idx, :t]
        reg_ok = self.pos_valid[idx, :t] & (kb >= 1) & (kb <= jb) & self.s2c[i](kb - jb)
        if self.sparse:  # only the allowed tokens (the default scheme: the bar's own), not the whole cache
            cols, reg_ok = _allowed_columns(reg_ok)
            rows = idx[:, None]
            reg_k, reg_v = cache.k[rows, :, cols].transpose(1, 2), cache.v[rows, :, cols].transpose(1, 2)
        else:
            reg_k, reg_v = cache.k[idx, :, :t], cache.v[idx, :, :t]
        allowed = torch.cat([prev_ok, self_ok, reg_ok], dim=1)[:, None, None, :]
        parts = [(cache.ks[idx], cache.vs[idx]), (k_self, v_self), (reg_k, reg_v)]
        s2 = _merge(_attend(q, parts, allowed))  # (n, ns, d)
        k2, v2 = (_heads(x, h) for x in _kv2(attn, s2))  # (n, H, ns, dh)
        slot = ((bar - 1) * ns)[:, None] + torch.arange(ns, device=s.device)  # (n, ns)
        for m in range(ns):
            cache.k2[idx, :, slot[:, m]] = k2[:, :, m]
            cache.v2[idx, :, slot[:, m]] = v2[:, :, m]
            cache.ks[idx, :, slot[:, m]] = k_self[:, :, m]
            cache.vs[idx, :, slot[:, m]] = v_self[:, :, m]
        s = layer._post(layer.attn_norm, s + attn.out_proj(s2))
        return layer._post(layer.ffn_norm, s + layer.ffn(layer._pre(layer.ffn_norm, s)))

    def _summaries_static(self, closes: torch.Tensor) -> None:
        """:meth:`_summaries` for every sequence on the fixed-size caches; slots change only where ``closes``."""
        b = self.batch
        bar = self.bars_closed + 1
        ids = torch.arange(1, self.ns + 1, device=self.device).expand(b, self.ns)
        s = self.dec.embed.summaries(ids, bar[:, None].expand(-1, self.ns))  # (B, ns, d)
        sbar, _ = self._summary_bars()
        rows = torch.arange(b, device=self.device)
        slot = (((bar - 1) * self.ns)[:, None] + torch.arange(self.ns, device=self.device)).clamp(
            max=self.caches[0].k2.shape[2] - 1)  # (B, ns); a row past the last slot does not close a bar
        keep = closes[:, None, None]
        jb = bar[:, None]
        masks: dict[int, torch.Tensor] = {}  # by layer group (see _share)
        for i in range(len(self.dec.layers)):
            layer, cache = self.dec.layers[i], self.caches[i]
            attn, h, ns = layer.attn, self.heads, self.ns
            s_hat = layer._pre(layer.attn_norm, s)
            q, k_self, v_self = (_heads(x, h) for x in _project(attn, s_hat, summary=True))
            key = self._summary_group[i]
            if key not in masks:
                prev_ok = (sbar[None, :] < jb) & self.s2s[i](sbar[None, :] - jb)
                self_ok = self.s2s[i](torch.zeros_like(jb)).expand(-1, ns)
                kb = self.pos_bar
                reg_ok = self.pos_valid & (kb >= 1) & (kb <= jb) & self.s2c[i](kb - jb)
                masks[key] = torch.cat([prev_ok, self_ok, reg_ok], dim=1)[:, None, None, :]
            allowed = masks[key]
            parts = [(cache.ks, cache.vs), (k_self, v_self), (cache.k, cache.v)]
            s2 = _merge(_attend(q, parts, allowed))  # (B, ns, d)
            k2, v2 = (_heads(x, h) for x in _kv2(attn, s2))  # (B, H, ns, dh)
            for m in range(ns):
                for store, new in ((cache.k2, k2), (cache.v2, v2), (cache.ks, k_self), (cache.vs, v_self)):
                    store[rows, :, slot[:, m]] = torch.where(keep, new[:, :, m], store[rows, :, slot[:, m]])
            s = layer._post(layer.attn_norm, s + attn.out_proj(s2))
            s = layer._post(layer.ffn_norm, s + layer.ffn(layer._pre(layer.ffn_norm, s)))
