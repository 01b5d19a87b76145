"""Batched, grammar-constrained sampling with the exact KV cache: one call decodes one window per sequence.

fairseq's search semantics where they apply (``--sampling --sampling-topk 8 --beam 1``): top-k / top-p
over the renormalised distribution, temperature, PAD never chosen; on top of them the grammar
(:mod:`.grammar`) removes every token the detokenizer could not place, so that a rendering always has
the score's bars. A request may carry a *prefix* (performance bars already rendered, the context of a
window): it is fed through the cache token by token (teacher forcing) before sampling starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data.batch import collate_bar_tokens
from ..tokens.specials import BAR, EOS, PAD
from .grammar import DEFAULT_NOTE_TOLERANCE, GrammarState, TokenGrammar
from .incremental import IncrementalDecoder


@dataclass
class SamplingOptions:
    topk: int = 8
    topp: float | None = None
    temperature: float = 1.0

    def check(self) -> None:
        from ..errors import UserError

        if self.topk < 0:
            raise UserError(f"--sampling-topk {self.topk}: must be >= 0 (0 = no top-k)")
        if self.topp is not None and not 0.0 < self.topp <= 1.0:
            raise UserError(f"--sampling-topp {self.topp}: must be in (0, 1]")
        if not self.temperature > 0.0:
            raise UserError(f"--temperature {self.temperature}: must be > 0")


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


def sample_next(
    logits: torch.Tensor, allowed: torch.Tensor, opts: SamplingOptions, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, V) logits and allowed mask -> (B,) sampled ids (top-k, top-p, temperature over allowed ids)."""
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
    probs = torch.softmax(x, dim=-1)
    empty = ~torch.isfinite(x).any(dim=-1)
    probs = torch.where(empty[:, None], torch.zeros_like(probs), probs)
    probs[:, PAD] = torch.where(empty, 1.0, probs[:, PAD])
    if generator is not None and generator.device != probs.device:
        probs_s = probs.to(generator.device)
    else:
        probs_s = probs
    return torch.multinomial(probs_s, 1, generator=generator)[:, 0].to(logits.device)


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
) -> list[DecodeResult]:
    """Decode every request in one batch with the cached decoder; see :class:`DecodeRequest`.

    ``static`` (default: on CUDA, when every sequence's length is bounded by ``stop_at`` or ``max_len``):
    fixed-size caches and the regular step replayed as a CUDA graph (one launch instead of hundreds).
    """
    p = next(model.parameters())
    dev = p.device
    b = len(requests)
    encoder_out = None
    if getattr(model, "encoder", None) is not None:
        sources = [torch.tensor(r.source if r.source is not None else [EOS], dtype=torch.long) for r in requests]
        encoder_out = model.encoder(collate_bar_tokens(sources, beat_table.cpu()).to(dev))
    decoder = model.decoder
    capacity = max((len(r.prefix) + 64 for r in requests), default=64)
    bounded = max_len is not None or all(r.stop_at is not None for r in requests)
    if max_len is not None:
        capacity = max(capacity, max_len + 2)
    if any(r.stop_at for r in requests):  # a window stops once its bar closes: the budget bounds the overshoot
        # (over budget, a bar with score notes still open may take up to ~7 tokens per open note to close)
        capacity = max(capacity, max((r.stop_at or 0) + (2 if r.notes else 1) * r.bar_budget + 16 for r in requests))
    if static is None:
        static = dev.type == "cuda" and bounded
    max_bars = max((r.target_bars for r in requests), default=-1)
    max_bars = max_bars + 1 if max_bars >= 0 and all(r.target_bars >= 0 for r in requests) else capacity // 2 + 1
    cache = IncrementalDecoder(decoder, b, beat_table, encoder_out, capacity=capacity, static=static,
                               max_bars=max_bars, cuda_graph=static and dev.type == "cuda")
    state = GrammarState.start(grammar, [r.target_bars for r in requests], [r.timesigs for r in requests],
                               [r.bar_budget for r in requests], min_len=min_len, max_len=max_len,
                               notes=[r.notes for r in requests], note_tolerance=note_tolerance)
    prefix_len = torch.tensor([len(r.prefix) for r in requests], device=dev)
    longest = int(prefix_len.max()) if b else 0
    prefix = torch.full((b, max(longest, 1)), PAD, dtype=torch.long, device=dev)
    for i, r in enumerate(requests):
        if r.prefix:
            prefix[i, : len(r.prefix)] = torch.tensor(r.prefix, dtype=torch.long)
    final = torch.tensor([r.final for r in requests], device=dev)
    stop_at = torch.tensor([r.stop_at if r.stop_at is not None else 2**62 for r in requests], device=dev)
    prefix_bars = torch.tensor([sum(1 for t in r.prefix if t == BAR) for r in requests], device=dev)
    out = torch.full((b, capacity), PAD, dtype=torch.long, device=dev)
    lp = torch.full((b, capacity), float("nan"), device=dev)
    running = torch.ones(b, dtype=torch.bool, device=dev)
    finished = torch.zeros(b, dtype=torch.bool, device=dev)
    tokens = torch.full((b,), EOS, dtype=torch.long, device=dev)
    step = 0
    while bool(running.any()):
        logits = cache.step(tokens, running)
        forced = step < prefix_len
        sampled = sample_next(logits, state.allowed(), opts, generator)
        nxt = torch.where(forced, prefix[:, min(step, prefix.shape[1] - 1)], sampled)
        nxt = torch.where(running, nxt, torch.full_like(nxt, PAD))
        state.advance(nxt, running)
        if step >= out.shape[1]:
            out = nn.functional.pad(out, (0, out.shape[1]), value=PAD)
            lp = nn.functional.pad(lp, (0, lp.shape[1]), value=float("nan"))
        out[:, step] = nxt
        if with_logprobs:  # fairseq-style scores (imf generate); four launches a step otherwise saved
            chosen = torch.log_softmax(logits, dim=-1).gather(1, nxt[:, None])[:, 0]
            lp[:, step] = torch.where(forced, torch.full_like(chosen, float("nan")), chosen)
        step += 1
        # stop: EOS; all target bars of a non-final window; the soft limit once a new bar is complete
        ended = state.done | (~final & (state.target_bars >= 0) & (state.bars_done >= state.target_bars))
        soft = (state.length >= stop_at) & (state.bars_done > prefix_bars) & ~forced
        full = torch.zeros_like(running) if not static else torch.full_like(running, step >= capacity - 1)
        finished |= running & ended
        running &= ~(ended | soft | full)
        tokens = nxt
    results = []
    for i in range(b):
        seq = out[i, :step].tolist()
        seq = seq[: seq.index(PAD)] if PAD in seq else seq
        scores = lp[i, : len(seq)].tolist()
        results.append(DecodeResult(seq, sum(1 for t in seq if t == BAR), bool(finished[i]), scores))
    return results
