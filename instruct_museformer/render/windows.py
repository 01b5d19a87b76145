"""Rendering whole scores: bar-aligned windows so that any length renders, and the score-match report.

A window covers score bars ``[start, end)``: the decoder is fed ``[EOS]`` + the already rendered
performance of bars ``[start, first)`` (the context, at most ``context_bars`` bars and half the window)
and then samples bars ``first ..``; the encoder reads score bars ``[start, end + lookahead)`` (the next
score bar too, which cross-attention reads at offset +1), with the score's EOS only when the window
reaches the end of the score; with ``carry`` (a model trained with ``--carry-markings``) its first bar also
gets the metronome mark, tempo word and dynamic in force (``data.carried_markings``), as the chunks it was
trained on did; with ``relative`` (``--tempo-relative-to-mark``) the Tempo tokens the model reads and writes are
relative to the mark in force at their bar (``data.mark_relative``), and the rendered ones are moved back.
Bar ids restart at 1 in every window, as in a training sample. A window
stops at ``window_tokens`` decoder tokens once it has rendered a new bar; its unfinished bar is dropped
and the next window starts there. Several scores render in one batch: each round decodes the next
window of every unfinished score together.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..data.carried_markings import MAX_CARRIED_TOKENS, MarkingsInForce
from ..data.mark_relative import MarkRelativeTempo
from ..tokens.specials import BAR, EOS
from .decode import DecodeRequest, SamplingOptions, decode
from .grammar import DEFAULT_NOTE_TOLERANCE, T_PITCH, T_TIMESIG, TokenGrammar, score_bar_notes
from .progress import RenderProgress


def split_bars(tokens: Sequence[int]) -> list[list[int]]:
    """Token ids -> bars, each ending with its Bar token (a trailing unclosed bar and EOS are dropped)."""
    bars, current = [], []
    for t in tokens:
        t = int(t)
        if t == EOS:
            break
        current.append(t)
        if t == BAR:
            bars.append(current)
            current = []
    return bars


@dataclass
class WindowStats:
    """What the windows did (for tests and the log): count and the largest decoder/encoder inputs."""

    windows: int = 0
    rounds: int = 0
    max_decoder_tokens: int = 0
    max_encoder_tokens: int = 0
    bars_dropped: int = 0
    per_score_windows: list[int] = field(default_factory=list)


def _bar_timesig(bar: list[int], grammar: TokenGrammar) -> int:
    types = grammar.types.cpu()
    for t in bar:
        if int(types[t]) == T_TIMESIG:
            return t
    return -1


def render_token_bars(
    model: nn.Module,
    scores: Sequence[Sequence[int]],
    beat_table: torch.Tensor,
    grammar: TokenGrammar,
    opts: SamplingOptions,
    generator: torch.Generator | None = None,
    window_tokens: int = 4096,
    context_bars: int = 8,
    lookahead_bars: int = 1,
    bar_budget_factor: float = 4.0,
    stats: WindowStats | None = None,
    logprobs: list[list[float]] | None = None,
    constrain_notes: bool = True,
    note_tolerance: int = DEFAULT_NOTE_TOLERANCE,
    compile_step: bool = False,
    progress: RenderProgress | None = None,
    carry: MarkingsInForce | None = None,
    relative: MarkRelativeTempo | None = None,
) -> list[list[int]]:
    """Score token sequences -> performance token sequences (each ending with EOS), bar k for bar k.

    ``compile_step``: see :func:`.decode.decode` (CUDA: the windows share one compiled step).

    ``constrain_notes``: performance bar k plays exactly score bar k's notes (pitches, onsets within
    ``note_tolerance`` positions of the score's); off, the model chooses the notes.
    ``logprobs``, when given a list, receives each output's per-token model log-probabilities (nats).
    ``progress`` is told what each round renders and writes a line every few seconds.
    """
    stats = stats if stats is not None else WindowStats()
    score_bars = [split_bars(s) for s in scores]
    bar_notes = [score_bar_notes(bars, grammar) for bars in score_bars] if constrain_notes else None
    shifts = [relative.bar_shifts(s) for s in scores] if relative is not None else None
    perf_bars: list[list[list[int]]] = [[] for _ in scores]
    read_bars: list[list[list[int]]] = [[] for _ in scores]  # what the model read of them (opts.feed_drawn)
    perf_lp: list[list[float]] = [[] for _ in scores]
    eos_lp: list[float] = [float("nan")] * len(scores)
    stats.per_score_windows = [0] * len(scores)
    while True:
        todo = [i for i, bars in enumerate(score_bars) if len(perf_bars[i]) < len(bars)]
        if not todo:
            break
        requests, plans = [], []
        for i in todo:
            bars, done = score_bars[i], perf_bars[i]
            first = len(done)
            context = min(context_bars, first)
            while context and sum(len(b) for b in done[first - context:]) > window_tokens // 2:
                context -= 1
            start = first - context
            # encoder bars: as many as fit (at least the first bar to render), plus the lookahead
            end, used = first, sum(len(b) for b in bars[start:first]) + (MAX_CARRIED_TOKENS if carry else 0)
            while end < len(bars) and (end == first or used + len(bars[end]) + 1 <= window_tokens):
                used += len(bars[end])
                end += 1
            target_end = end
            if end < len(bars):
                target_end = max(first + 1, end - lookahead_bars)
            final = target_end == len(bars)
            source = [t for b in bars[start:end] for t in b] + ([EOS] if end == len(bars) else [])
            if carry is not None and start > 0:
                source = carry.carry_into(scores[i], sum(len(b) for b in bars[:start]), source)
            prefix = [t for b in read_bars[i][start:first] for t in b]
            if shifts is not None:  # what the model reads: tempo relative to the mark
                source = relative.move(source, shifts[i][start:])
                prefix = relative.move(prefix, shifts[i][start:])
            notes = bar_notes[i][start:target_end] if bar_notes is not None else None
            budget = [int(bar_budget_factor * len(b)) + 64 for b in bars[start:target_end]]
            if notes is not None:  # the budget never cuts a bar short of its notes
                budget += [4 * len(n) + 64 for n in notes]
            requests.append(DecodeRequest(
                source=source,
                prefix=prefix,
                target_bars=target_end - start,
                timesigs=[_bar_timesig(b, grammar) for b in bars[start:target_end]],
                bar_budget=max(budget),
                stop_at=window_tokens,
                final=final,
                notes=notes,
            ))
            plans.append((i, start, first))
            stats.max_encoder_tokens = max(stats.max_encoder_tokens, len(source))
        if progress is not None:
            progress.window([first - start for _, start, first in plans], [len(q.prefix) for q in requests],
                            sum(len(q.source or []) for q in requests))
        results = decode(model, requests, beat_table, grammar, opts, generator, with_logprobs=logprobs is not None,
                         note_tolerance=note_tolerance, compile_step=compile_step,
                         progress=progress.step if progress is not None else None)
        stats.rounds += 1
        kept_bars = sum(len(bars) for bars in perf_bars)
        for (i, start, first), result in zip(plans, results, strict=True):
            stats.windows += 1
            stats.per_score_windows[i] += 1
            stats.max_decoder_tokens = max(stats.max_decoder_tokens, len(result.tokens) + 1)
            new_bars = split_bars(result.tokens)[first - start:]
            limit = len(score_bars[i]) - first
            stats.bars_dropped += max(0, len(new_bars) - limit)
            kept = new_bars[:limit]
            read = split_bars(result.context)[first - start:][:limit] if result.context is not None else None
            if shifts is not None:  # back to the marked tempo
                kept = [relative.move(b, shifts[i][first + j : first + j + 1], sign=-1) for j, b in enumerate(kept)]
                if read is not None:
                    read = [relative.move(b, shifts[i][first + j : first + j + 1], sign=-1) for j, b in enumerate(read)]
            read_bars[i].extend(read if read is not None else kept)
            offset = sum(len(b) for b in perf_bars[i][start:first])
            n_new = sum(len(b) for b in kept)
            perf_lp[i].extend(result.logprobs[offset : offset + n_new])
            if result.tokens[offset + n_new : offset + n_new + 1] == [EOS]:
                eos_lp[i] = result.logprobs[offset + n_new]
            perf_bars[i].extend(kept)
        if progress is not None:
            progress.window_done(sum(len(bars) for bars in perf_bars) - kept_bars,
                                 sum(len(r.tokens) - len(q.prefix) for r, q in zip(results, requests, strict=True)))
    if logprobs is not None:
        logprobs[:] = [lp + [e] for lp, e in zip(perf_lp, eos_lp, strict=True)]
    return [[t for b in bars for t in b] + [EOS] for bars in perf_bars]


@dataclass
class ScoreMatch:
    """How closely a rendering follows its score, bar by bar (pitch multisets)."""

    score_notes: int
    performance_notes: int
    matched: int
    bars_score: int
    bars_performance: int

    @property
    def fraction_present(self) -> float:
        """Fraction of score notes with a same-pitch note in the same performance bar."""
        return self.matched / self.score_notes if self.score_notes else 1.0

    @property
    def extra_notes(self) -> int:
        """Performance notes with no same-pitch score note left in their bar."""
        return self.performance_notes - self.matched

    def as_dict(self) -> dict[str, float | int]:
        return {"score_notes": self.score_notes, "performance_notes": self.performance_notes,
                "matched": self.matched, "fraction_present": round(self.fraction_present, 4),
                "extra_notes": self.extra_notes, "bars_score": self.bars_score,
                "bars_performance": self.bars_performance}


def score_match(score: Sequence[int], performance: Sequence[int], grammar: TokenGrammar) -> ScoreMatch:
    """Per-bar pitch-multiset agreement between score tokens and performance tokens."""
    types = grammar.types.cpu()
    s_bars, p_bars = split_bars(score), split_bars(performance)
    total_s = total_p = matched = 0
    for k in range(max(len(s_bars), len(p_bars))):
        s = Counter(t for t in (s_bars[k] if k < len(s_bars) else []) if int(types[t]) == T_PITCH)
        p = Counter(t for t in (p_bars[k] if k < len(p_bars) else []) if int(types[t]) == T_PITCH)
        total_s += sum(s.values())
        total_p += sum(p.values())
        matched += sum((s & p).values())
    return ScoreMatch(total_s, total_p, matched, len(s_bars), len(p_bars))
