"""Batched, grammar-constrained sampling with the exact KV cache: one call decodes one window per sequence.

fairseq's search semantics where they apply (``--sampling --sampling-topk 8 --beam 1``): top-k / top-p
over the renormalised distribution, temperature, PAD never chosen; on top of them the grammar
(:mod:`.grammar`) removes every token the detokenizer could not place, so that a rendering always has
the score's bars. A request may carry a *prefix* (performance bars already rendered, the context of a
window): the part all sequences have goes into the caches through one full forward (prefill), the rest
is forced token by token (teacher forcing) before sampling starts.

One decoding step -- cached model step, grammar mask, top-k/top-p/temperature sampling, grammar advance,
output write, stop conditions -- is a fixed-shape function of device tensors updated in place
(:class:`_Loop`). On CUDA with static caches it is captured once as a CUDA graph and replayed, and the
summary pass (needed only after a step whose fed token closes a bar) as a second graph that the host
replays when it sees such a step; the host checks for termination every ``SYNC_EVERY`` steps. With
``compile_step`` the step goes through ``torch.compile`` before the capture. Sampling is Gumbel-max (argmax
of the filtered logits plus Gumbel noise, the same distribution as multinomial sampling), the noise drawn
from the caller's generator ``NOISE_CHUNK`` steps at a time outside the graph, so a seed gives the same
tokens with and without the graphs. On CPU the same functions run eagerly and the host checks every step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data.batch import collate_bar_tokens
from ..model.masks import round_up
from ..tokens.specials import BAR, EOS, PAD
from .grammar import DEFAULT_NOTE_TOLERANCE, NUM_TYPES, ORDINAL_TYPES, GrammarState, TokenGrammar
from .incremental import IncrementalDecoder, step_threads

ORDINAL_MODES = ("sample", "median", "mean")
FEEDABLE_TYPES = ("tempo", "velocity")  # the grammar reads neither's value, so the two sequences keep one state


@dataclass
class SamplingOptions:
    """fairseq's sampling flags, and how the ordinal token types are chosen.

    ``ordinal``: "sample" draws every token (fairseq); "median" / "mean" draw the token *type* as usual (its
    probability is the mass of its allowed bins), then, for the types in ``ordinal_types``, take the median
    bin -- or the bin nearest the mean value -- of that type's filtered distribution instead of a random bin:
    the model's expected tempo, velocity or duration without the sampling noise around it.
    ``ordinal_temperature`` (with "sample"): the bins of ``ordinal_types`` are drawn at this temperature within
    their type, the type's own probability unchanged -- between a sample (1) and the most likely bin (-> 0).
    ``feed_drawn`` (some of ``ordinal_types``, tempo or velocity): the output keeps the picked bin, but the model
    reads back a drawn one, so that its history stays like the performances it was trained on (a history of
    picked bins is flatter than any pianist's, and the model follows it: docs/model.md, section 9).
    """

    topk: int = 8
    topp: float | None = None
    temperature: float = 1.0
    ordinal: str = "sample"
    ordinal_types: tuple[str, ...] = ("tempo", "velocity", "duration")
    ordinal_temperature: float = 1.0
    feed_drawn: tuple[str, ...] = ()

    def check(self) -> None:
        from ..errors import UserError

        if self.ordinal not in ORDINAL_MODES:
            raise UserError(f"--ordinal {self.ordinal}: expected one of {', '.join(ORDINAL_MODES)}")
        unknown = [t for t in self.ordinal_types if t not in ORDINAL_TYPES]
        if unknown:
            raise UserError(f"--ordinal-types {','.join(unknown)}: expected some of {', '.join(ORDINAL_TYPES)}")

        if self.topk < 0:
            raise UserError(f"--sampling-topk {self.topk}: must be >= 0 (0 = no top-k)")
        if self.topp is not None and not 0.0 < self.topp <= 1.0:
            raise UserError(f"--sampling-topp {self.topp}: must be in (0, 1]")
        if not self.temperature > 0.0:
            raise UserError(f"--temperature {self.temperature}: must be > 0")
        if not self.ordinal_temperature > 0.0:
            raise UserError(f"--ordinal-temperature {self.ordinal_temperature}: must be > 0")
        if self.ordinal_temperature != 1.0 and self.ordinal != "sample":
            raise UserError(f"--ordinal-temperature needs --ordinal sample (a {self.ordinal} bin is not drawn)")
        if self.feed_drawn:
            unknown = [t for t in self.feed_drawn if t not in FEEDABLE_TYPES]
            if unknown:
                raise UserError(f"--ordinal-feed-drawn {','.join(unknown)}: expected some of "
                                f"{', '.join(FEEDABLE_TYPES)}")
            if self.ordinal == "sample" or not set(self.feed_drawn) <= set(self.ordinal_types):
                raise UserError(f"--ordinal-feed-drawn {','.join(self.feed_drawn)}: needs --ordinal median or mean "
                                f"with these types in --ordinal-types (only a picked bin can be fed back as drawn)")


@dataclass
class DecodeRequest:
    """One sequence to decode.

    source:      encoder input (score tokens + optional EOS) for translation, None for the LM
    prefix:      decoder tokens forced after the EOS-as-BOS (complete bars of context)
    target_bars: bars the output must have in total, prefix bars included (-1: unbounded, LM)
    timesigs:    TimeSig id each of those bars must start with (empty: free)
    bar_budget:  tokens per bar before the bar is made to close
    stop_at:     soft length limit (tokens after the BOS): stop there once a new bar is complete
    final:       the window ends the piece: emit EOS after the last bar (else stop without it)
    notes:       per bar (prefix bars included), the score notes (position, Pitch id) it must play exactly;
                 None: the model chooses the notes
    """

    source: list[int] | None
    prefix: list[int] = field(default_factory=list)
    target_bars: int = -1
    timesigs: list[int] = field(default_factory=list)
    bar_budget: int = 1024
    stop_at: int | None = None
    final: bool = True
    notes: list[list[tuple[int, int]]] | None = None


@dataclass
class DecodeResult:
    tokens: list[int]  # the decoder output after the BOS: prefix + generated (+ EOS when finished)
    bars: int  # complete bars in ``tokens``
    finished: bool  # EOS emitted or all target bars done
    logprobs: list[float] = field(default_factory=list)  # model log-prob (nats) of each token; NaN if forced
    context: list[int] | None = None  # what the model read, where it differs from ``tokens`` (feed_drawn)


SYNC_EVERY = 32  # CUDA: steps between the host's termination checks (each one is a synchronisation)
NOISE_CHUNK = 32  # steps of sampling noise drawn at once
CPU_SYNC_EVERY = 1  # CPU: a check costs nothing there, and steps past the end would (no graph)
PREFILL_MIN_TOKENS = 16  # a shorter common prefix is fed step by step


def filtered_logits(logits: torch.Tensor, allowed: torch.Tensor, opts: SamplingOptions) -> torch.Tensor:
    """(B, V) float32 logits / temperature, -inf outside the allowed ids and the top-k / top-p set."""
    x = logits.float().masked_fill(~allowed, float("-inf")) / opts.temperature
    if opts.topk and opts.topk < x.shape[-1]:
        kth = torch.topk(x, opts.topk, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if opts.topp is not None and opts.topp < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = torch.softmax(sorted_x, dim=-1)
        before = probs.cumsum(-1) - probs  # mass strictly before each token
        drop_sorted = before >= opts.topp  # the first token is always kept
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    return x


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard Gumbel noise (-log of Exp(1)) from ``generator`` (on its own device), moved to ``device``."""
    where = generator.device if generator is not None else device
    e = torch.empty(shape, device=where).exponential_(generator=generator)
    return (-torch.log(e.clamp_min(1e-30))).to(device)


def pick(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Gumbel-max: (B,) argmax of filtered logits + noise, a sample of softmax(x); PAD for an empty row."""
    ids = torch.argmax(x + noise, dim=-1)
    return torch.where(torch.isfinite(x).any(dim=-1), ids, torch.full_like(ids, PAD))


def ordinal_types_mask(opts: SamplingOptions, device: torch.device) -> torch.Tensor | None:
    """(NUM_TYPES,) bool: the token types whose bin is a median/mean instead of a sample; None if none."""
    if opts.ordinal == "sample" or not opts.ordinal_types:
        return None
    return _types_mask(opts.ordinal_types, device)


def feed_drawn_mask(opts: SamplingOptions, device: torch.device) -> torch.Tensor | None:
    """(NUM_TYPES,) bool: the token types whose drawn bin is fed back instead of the picked one; None if none."""
    return _types_mask(opts.feed_drawn, device) if opts.feed_drawn else None


def _types_mask(names: Sequence[str], device: torch.device) -> torch.Tensor:
    mask = torch.zeros(NUM_TYPES, dtype=torch.bool)
    for name in names:
        mask[ORDINAL_TYPES[name]] = True
    return mask.to(device)


def tempered_groups(opts: SamplingOptions, grammar: TokenGrammar, device: torch.device) -> torch.Tensor | None:
    """(G, V) bool: the ids of each ordinal type whose bins ``temper_within_types`` sharpens; None if none."""
    if opts.ordinal != "sample" or opts.ordinal_temperature == 1.0 or not opts.ordinal_types:
        return None
    types = grammar.types.to(device)
    return torch.stack([types == ORDINAL_TYPES[name] for name in opts.ordinal_types])


def temper_within_types(x: torch.Tensor, groups: torch.Tensor, temperature: float) -> torch.Tensor:
    """(B, V) filtered logits with each group's part at ``temperature`` and the group's total mass kept:
    one Gumbel-max pick then draws the token type as before and its bin from the sharpened distribution."""
    for group in groups:  # a few ordinal types
        part = x.masked_fill(~group, float("-inf"))
        mass = torch.logsumexp(part, dim=-1, keepdim=True)  # log of the type's probability (unnormalised)
        sharp = part / temperature
        sharp = sharp - torch.logsumexp(sharp, dim=-1, keepdim=True) + mass
        x = torch.where(group & torch.isfinite(mass), sharp, x)
    return x


def ordinal_pick(
    x: torch.Tensor, sampled: torch.Tensor, grammar: TokenGrammar, types_mask: torch.Tensor, mode: str
) -> torch.Tensor:
    """(B,) ids: where ``sampled`` is of an ordinal type in ``types_mask``, the median bin (``mode`` "median") or the
    bin nearest the mean value ("mean") of that type's part of the filtered logits ``x`` (B, V); else ``sampled``.

    Fixed-shape tensor work (graph-capturable): the type's bins are found by comparing types, not by indexing.
    """
    kind = grammar.types[sampled]  # (B,)
    use = types_mask[kind]
    if x.device.type == "cpu" and not bool(use.any()):  # most steps (a pitch, a position): nothing to do
        return sampled  # (on a GPU this check would wait for the device, and a captured graph cannot take it)
    same = (grammar.types[None, :] == kind[:, None]) & torch.isfinite(x)
    probs = torch.softmax(x.masked_fill(~same, float("-inf")), dim=-1).nan_to_num(0.0)  # (B, V)
    if mode == "median":
        order = grammar.value_order
        cdf = probs.index_select(1, order).cumsum(-1)
        at = (cdf < 0.5).sum(-1).clamp(max=len(order) - 1)
        chosen = order[at]
    else:
        values = grammar.value.nan_to_num(0.0)
        mean = (probs * values).sum(-1, keepdim=True)
        distance = (values[None, :] - mean).abs().masked_fill(~same, float("inf"))
        chosen = distance.argmin(-1)
    return torch.where(use, chosen, sampled)


def sample_next(
    logits: torch.Tensor, allowed: torch.Tensor, opts: SamplingOptions, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, V) logits and allowed mask -> (B,) sampled ids (top-k, top-p, temperature over allowed ids)."""
    x = filtered_logits(logits, allowed, opts)
    return pick(x, gumbel_noise(tuple(x.shape), generator, x.device))


class _Loop:
    """The decoding state of one batch as fixed-shape device tensors, and the step that advances it in place.

    ``step`` has no host synchronisation when the cache is static, so it can be captured as one CUDA graph.
    """

    def __init__(
        self,
        cache: IncrementalDecoder,
        state: GrammarState,
        requests: Sequence[DecodeRequest],
        opts: SamplingOptions,
        generator: torch.Generator | None,
        capacity: int,
        with_logprobs: bool,
        compile_step: bool = False,
    ) -> None:
        dev = cache.device
        b = len(requests)
        self.cache, self.state, self.opts, self.generator = cache, state, opts, generator
        self.static, self.with_logprobs = cache.static, with_logprobs
        self.device, self.capacity = dev, capacity
        self.prefix_len = torch.tensor([len(r.prefix) for r in requests], device=dev)
        longest = max((len(r.prefix) for r in requests), default=0)
        self.common_prefix = min((len(r.prefix) for r in requests), default=0)
        width = capacity if compile_step else max(longest, 1)  # compiled: one shape whatever the prefix
        self.prefix = torch.full((b, width), PAD, dtype=torch.long, device=dev)
        for i, r in enumerate(requests):
            if r.prefix:
                self.prefix[i, : len(r.prefix)] = torch.tensor(r.prefix, dtype=torch.long)
        self.final = torch.tensor([r.final for r in requests], device=dev)
        self.stop_at = torch.tensor([r.stop_at if r.stop_at is not None else 2**62 for r in requests], device=dev)
        bar = getattr(state.grammar, "bar_token", BAR)
        self.prefix_bars = torch.tensor([sum(1 for t in r.prefix if t == bar) for r in requests], device=dev)
        self.out = torch.full((b, capacity), PAD, dtype=torch.long, device=dev)
        self.feed_mask = feed_drawn_mask(opts, dev)
        self.fed = torch.full_like(self.out, PAD) if self.feed_mask is not None else None  # what the model read
        self.lp = torch.full((b, capacity if with_logprobs else 1), float("nan"), device=dev)
        self.running = torch.ones(b, dtype=torch.bool, device=dev)
        self.finished = torch.zeros(b, dtype=torch.bool, device=dev)
        self.tokens = torch.full((b,), EOS, dtype=torch.long, device=dev)
        self.t = torch.zeros((), dtype=torch.long, device=dev)  # steps taken (device copy of the host's count)
        self.noise = torch.zeros(NOISE_CHUNK, b, state.grammar.vocab_size, device=dev)
        self.noise_at = torch.zeros((), dtype=torch.long, device=dev)
        self.ordinal_mask = ordinal_types_mask(opts, dev)
        self.tempered = tempered_groups(opts, state.grammar, dev)
        self.step_fn = self.step
        if compile_step:
            compiled = _compiled_step()
            self.step_fn = lambda: compiled(self)

    def step(self) -> None:
        """One token per running sequence: model, grammar mask, sampling (or the forced prefix), bookkeeping."""
        st, running, t = self.state, self.running, self.t
        logits = self.cache.static_step(self.tokens, running) if self.static else self.cache.step(self.tokens, running)
        forced = t < self.prefix_len
        x = filtered_logits(logits, st.allowed(), self.opts)
        if self.tempered is not None:
            x = temper_within_types(x, self.tempered, self.opts.ordinal_temperature)
        drawn = pick(x, self.noise.index_select(0, self.noise_at.view(1))[0])
        sampled = drawn
        if self.ordinal_mask is not None:
            sampled = ordinal_pick(x, drawn, st.grammar, self.ordinal_mask, self.opts.ordinal)
        col = t.clamp(max=self.prefix.shape[1] - 1).view(1, 1).expand(len(sampled), 1)
        forced_token = self.prefix.gather(1, col)[:, 0]
        pad = torch.full_like(sampled, PAD)
        nxt = torch.where(running, torch.where(forced, forced_token, sampled), pad)
        fed = nxt
        if self.feed_mask is not None:  # the output keeps the picked bin, the model reads the drawn one
            fed = torch.where(self.feed_mask[st.grammar.types[drawn]], drawn, sampled)
            fed = torch.where(running, torch.where(forced, forced_token, fed), pad)
        st.advance(fed, running)
        at = t.clamp(max=self.out.shape[1] - 1).view(1)
        self.out.index_copy_(1, at, nxt[:, None])
        if self.fed is not None:
            self.fed.index_copy_(1, at, fed[:, None])
        if self.with_logprobs:  # fairseq-style scores (imf generate); a few launches a step otherwise saved
            chosen = torch.log_softmax(logits, dim=-1).gather(1, nxt[:, None])
            self.lp.index_copy_(1, at, torch.where(forced[:, None], torch.full_like(chosen, float("nan")), chosen))
        t.add_(1)
        self.noise_at.copy_((self.noise_at + 1) % NOISE_CHUNK)
        # stop: EOS; all target bars of a non-final window; the soft limit once a new bar is complete
        ended = st.done | (~self.final & (st.target_bars >= 0) & (st.bars_done >= st.target_bars))
        soft = (st.length >= self.stop_at) & (st.bars_done > self.prefix_bars) & ~forced
        stop = ended | soft
        if self.static:  # the cache is full
            stop = stop | (t >= self.capacity - 1)
        self.finished.copy_(self.finished | (running & ended))
        running.copy_(running & ~stop)
        self.tokens.copy_(fed)

    def run(self, progress: Callable[[int, torch.Tensor], None] | None = None) -> int:
        """Step until every sequence stopped; returns the steps taken (a few no-op steps past the end on CUDA).
        ``progress`` is called at each host check with the steps and the (B,) bars closed so far.

        Static caches: after every step the host looks at whether a fed token closed a bar (one small
        device-to-host read) and if so runs the summary pass -- a second graph on CUDA -- before the next
        step; the host checks for termination every ``SYNC_EVERY`` steps.
        """
        use_graph = self.static and self.device.type == "cuda"
        sync_every = SYNC_EVERY if self.device.type == "cuda" else CPU_SYNC_EVERY
        graphs: tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph] | None = None
        start = steps = self._prefill()
        for _ in range(-(-start // NOISE_CHUNK)):  # the noise the prefilled steps would have drawn
            self.noise.copy_(gumbel_noise(tuple(self.noise.shape), self.generator, self.device))
        self.noise_at.fill_(start % NOISE_CHUNK)
        while True:
            if steps % NOISE_CHUNK == 0:
                self.noise.copy_(gumbel_noise(tuple(self.noise.shape), self.generator, self.device))
            if not self.static and steps >= self.out.shape[1]:  # growing caches: grow the outputs too
                self.out = nn.functional.pad(self.out, (0, self.out.shape[1]), value=PAD)
                if self.fed is not None:
                    self.fed = nn.functional.pad(self.fed, (0, self.fed.shape[1]), value=PAD)
                if self.with_logprobs:
                    self.lp = nn.functional.pad(self.lp, (0, self.lp.shape[1]), value=float("nan"))
            if graphs is None and use_graph and steps >= start + 2:  # two eager steps first (kernels, allocators)
                graphs = self._capture()
                use_graph = graphs is not None
            if graphs is not None:
                graphs[0].replay()
                if bool(self.cache.closes.any()):
                    graphs[1].replay()
            else:
                self._eager(self.step_fn, side_stream=use_graph)
                if self.static and bool(self.cache.closes.any()):
                    self._eager(self.cache.static_summaries, side_stream=use_graph)
            steps += 1
            if steps % sync_every == 0:
                if progress is not None:
                    progress(steps, self.state.bars_done)
                if not bool(self.running.any()):
                    return steps

    def _prefill(self) -> int:
        """The prefix every sequence has (a window's context) through one forward instead of step by step:
        returns the steps it stands for (0 when the common prefix is short). Same tokens, grammar state and
        outputs as the forced steps; the cache gets what they would have written."""
        p = self.common_prefix
        if p < PREFILL_MIN_TOKENS:
            return 0
        eos = torch.full_like(self.prefix[:, :1], EOS)
        self.cache.prefill(torch.cat([eos, self.prefix[:, : p - 1]], dim=1))  # the tokens the steps would feed
        for k in range(p):  # the tokens they would have output
            self.state.advance(self.prefix[:, k], self.running)
        self.out[:, :p] = self.prefix[:, :p]
        if self.fed is not None:
            self.fed[:, :p] = self.prefix[:, :p]
        self.tokens.copy_(self.prefix[:, p - 1])
        self.t.fill_(p)
        return p

    @staticmethod
    def _eager(fn, side_stream: bool) -> None:
        """Run ``fn`` now; before a CUDA graph capture, on a side stream (as capture warm-up must be)."""
        if not side_stream:
            fn()
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)

    def _capture(self) -> tuple[torch.cuda.CUDAGraph, torch.cuda.CUDAGraph] | None:
        """Record :meth:`step` and the summary pass as two CUDA graphs (capturing runs nothing); None, with
        a warning, if that fails. The summary pass is warmed up first (it may not have run eagerly yet) with
        nothing closing, which changes no state."""
        import warnings

        try:
            closes = self.cache.closes.clone()
            self.cache.closes.zero_()  # a warm-up with nothing closing changes no state
            self._eager(self.cache.static_summaries, side_stream=True)
            step_graph, summary_graph = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
            with torch.cuda.graph(summary_graph):
                self.cache.static_summaries()
            self.cache.closes.copy_(closes)
            with torch.cuda.graph(step_graph):
                self.step_fn()
            return step_graph, summary_graph
        except Exception as error:  # capture is an optimisation: keep decoding eagerly
            warnings.warn(f"CUDA graph capture of the decoding step failed ({type(error).__name__}: {error}); "
                          "decoding eagerly", stacklevel=3)
            return None


_COMPILED_STEP = None
COMPILE_CAPACITY_STEP = 1024  # compiled steps: capacities rounded up to this, so that similar calls share shapes
COMPILE_BARS_STEP = 64
COMPILE_WINDOW_MIN_BARS = 256  # render windows: bar tables of at least this many bars, notes per bar
COMPILE_WINDOW_MIN_NOTES = 64
COMPILE_WINDOW_OVERSHOOT = 2048  # render windows: capacity at least stop_at + this


def _compiled_step():
    """``_Loop.step`` through torch.compile (inductor fuses the step's ~600 small kernels), made once per
    process: every later decode call with the same shapes reuses the compiled code."""
    global _COMPILED_STEP
    if _COMPILED_STEP is None:
        _COMPILED_STEP = torch.compile(_Loop.step, dynamic=False)
    return _COMPILED_STEP


@torch.no_grad()
def decode(
    model: nn.Module,
    requests: Sequence[DecodeRequest],
    beat_table: torch.Tensor,
    grammar: TokenGrammar,
    opts: SamplingOptions,
    generator: torch.Generator | None = None,
    min_len: int = 0,
    max_len: int | None = None,
    static: bool | None = None,
    with_logprobs: bool = True,
    note_tolerance: int = DEFAULT_NOTE_TOLERANCE,
    compile_step: bool = False,
    progress: Callable[[int, torch.Tensor], None] | None = None,
) -> list[DecodeResult]:
    """Decode every request in one batch with the cached decoder; see :class:`DecodeRequest`.

    ``progress``: called at each host check with the steps taken and the (B,) bars closed (see
    :class:`.progress.RenderProgress`).

    ``compile_step`` (static caches only): the step through ``torch.compile`` before the CUDA graph capture;
    the first call per shape compiles (tens of seconds). Capacities, source lengths and the per-bar tables
    are padded up (``COMPILE_*``; masked, the logits do not change), for render windows to fixed floors, so
    that later calls -- every window of a piece -- reuse the compiled step.

    ``static`` (default: on CUDA, when every sequence's length is bounded by ``stop_at`` or ``max_len``):
    fixed-size caches, and on CUDA the step replayed as a CUDA graph (the summary pass as a second one).
    """
    p = next(model.parameters())
    dev = p.device
    b = len(requests)
    bar = getattr(grammar, "bar_token", BAR)  # render.free's grammars name their own bar token
    encoder_out = None
    if getattr(model, "encoder", None) is not None:
        sources = [torch.tensor(r.source if r.source is not None else [EOS], dtype=torch.long) for r in requests]
        encoder_out = model.encoder(collate_bar_tokens(sources, beat_table.cpu(), bar).to(dev))
    capacity = max((len(r.prefix) + 64 for r in requests), default=64)
    bounded = max_len is not None or all(r.stop_at is not None for r in requests)
    if max_len is not None:
        capacity = max(capacity, max_len + 2)
    if any(r.stop_at for r in requests):  # a window stops once its bar closes: the budget bounds the overshoot
        # (over budget, a bar with score notes still open may take up to ~7 tokens per open note to close)
        capacity = max(capacity, max((r.stop_at or 0) + (2 if r.notes else 1) * r.bar_budget + 16 for r in requests))
    if static is None:
        static = dev.type == "cuda" and bounded
    compile_step = compile_step and static
    # compiled step: shapes rounded up, and for the windows of imf render (stop_at) raised to fixed floors, so
    # that every window of a piece (the first, the middle ones, the shorter final one) has the same shapes
    windows = compile_step and any(r.stop_at for r in requests)
    min_bars, min_notes = (COMPILE_WINDOW_MIN_BARS, COMPILE_WINDOW_MIN_NOTES) if windows else (1, 1)
    if windows:  # room for the usual overshoot past stop_at, so that bar budgets rarely change the shape
        capacity = max(capacity, max(r.stop_at or 0 for r in requests) + COMPILE_WINDOW_OVERSHOOT)
    if compile_step:
        capacity = round_up(capacity, COMPILE_CAPACITY_STEP)
    max_bars = max((r.target_bars for r in requests), default=-1)
    max_bars = max_bars + 1 if max_bars >= 0 and all(r.target_bars >= 0 for r in requests) else capacity // 2 + 1
    source_size = None
    if compile_step:
        max_bars = round_up(max(max_bars, min_bars), COMPILE_BARS_STEP)
        if encoder_out is not None:
            side = encoder_out.side
            regular = round_up(max(side.bar.shape[1], capacity if windows else 1), COMPILE_CAPACITY_STEP)
            per_bar = max(model.decoder.cfg.num_summary_tokens_each_chunk, 1)
            slots = round_up(max(side.sum_bar.shape[1], min_bars * per_bar), COMPILE_BARS_STEP)
            source_size = (regular, slots)
    cache = IncrementalDecoder(model.decoder, b, beat_table, encoder_out, capacity=capacity, static=static,
                               max_bars=max_bars, source_size=source_size, bar_token=bar)
    state_type = getattr(grammar, "state_type", GrammarState)  # render.free's grammars have their own state
    state = state_type.start(grammar, [r.target_bars for r in requests], [r.timesigs for r in requests],
                               [r.bar_budget for r in requests], min_len=min_len, max_len=max_len,
                               notes=[r.notes for r in requests], note_tolerance=note_tolerance,
                               pad_multiple=(COMPILE_BARS_STEP, 16) if compile_step else (1, 1),
                               min_size=(min_bars, min_notes))
    loop = _Loop(cache, state, requests, opts, generator, capacity, with_logprobs, compile_step)
    with step_threads(dev):  # CPU: one thread by default (small kernels; a busy machine's pool spins)
        steps = loop.run(progress)
    out = loop.out[:, :steps].tolist()
    fed = loop.fed[:, :steps].tolist() if loop.fed is not None else None
    lp = loop.lp[:, :steps].tolist() if with_logprobs else []
    results = []
    for i in range(b):
        seq = out[i][: out[i].index(PAD)] if PAD in out[i] else out[i]
        scores = lp[i][: len(seq)] if with_logprobs else [float("nan")] * len(seq)
        context = fed[i][: len(seq)] if fed is not None else None
        results.append(DecodeResult(seq, sum(1 for t in seq if t == bar), bool(loop.finished[i]), scores, context))
    return results
