"""Progress of a long rendering as plain lines (not a terminal bar), so a log file or a pipe shows it too.

A line every ``every`` seconds -- bars rendered of the total, tokens decoded, tokens/s, elapsed time -- is
enough for a user or a script to tell a slow rendering from a stuck one. The decoder calls :meth:`step` at
each host check with its device counters; they are read only when a line is due (on CUDA that read is a
synchronisation, so it happens every few seconds, not every step).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TextIO

import torch


class RenderProgress:
    """Bars done of ``total_bars`` and decoding speed, one line on ``stream`` every ``every`` seconds."""

    def __init__(self, total_bars: int, every: float = 5.0, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic, prefix: str = "imf render") -> None:
        self.total_bars = total_bars
        self.every = every
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.prefix = prefix
        self.start = clock()
        self.last = self.start
        self.bars_done = 0  # bars of finished windows
        self.tokens_done = 0  # tokens of finished windows
        self.window_context: list[int] = []
        self.window_forced = 0
        self.windows = 0
        self.decode_start = self.start
        self.lines = 0

    def note(self, text: str) -> None:
        """A line now (e.g. how many bars there are to render), which also restarts the interval."""
        self._write(text)

    @contextlib.contextmanager
    def reading(self, path: object) -> Iterator[None]:
        """Around reading a score: a line if it is still being read after ``every`` seconds (a large
        MusicXML takes tens of seconds), none for a quick read, so a bad file's error stays one line."""
        timer = threading.Timer(self.every, self._write, args=(f"reading {path} ...",))
        timer.daemon = True
        timer.start()
        try:
            yield
        finally:
            timer.cancel()

    def window(self, context_bars: Sequence[int], context_tokens: Sequence[int], source_tokens: int = 0) -> None:
        """A decoding round starts; sequence j is fed ``context_bars[j]`` already rendered bars
        (``context_tokens[j]`` tokens), which its step and bar counts include. Says so in a line: the
        encoder's pass over ``source_tokens`` score tokens comes first and can take a while on a CPU."""
        self.window_context = list(context_bars)
        self.window_forced = sum(context_tokens)
        if self.windows == 0:
            self.decode_start = self.clock()
        self.windows += 1
        self._write(f"window {self.windows}: {len(self.window_context)} sequence(s), encoding {source_tokens} "
                    f"score tokens, {self.bars_done}/{self.total_bars} bars done")

    def step(self, steps: int, bars_in_window: torch.Tensor) -> None:
        """Called by the decoder at each host check: ``steps`` taken in this round, (B,) bars closed so far
        (context bars included). Writes a line when one is due."""
        now = self.clock()
        if now - self.last < self.every:
            return
        closed = bars_in_window.tolist()
        new_bars = sum(max(0, int(b) - c) for b, c in zip(closed, self.window_context, strict=False))
        tokens = self.tokens_done + max(0, steps * len(self.window_context) - self.window_forced)
        self._report(self.bars_done + new_bars, tokens, now)

    def window_done(self, new_bars: int, tokens: int) -> None:
        """A round finished with ``new_bars`` bars kept and ``tokens`` tokens decoded (all sequences)."""
        self.bars_done += new_bars
        self.tokens_done += tokens

    def _report(self, bars: int, tokens: int, now: float) -> None:
        """Tokens/s since decoding began (reading the scores is not counted); elapsed time since the start."""
        share = 100.0 * bars / self.total_bars if self.total_bars else 100.0
        speed = tokens / max(now - self.decode_start, 1e-9)
        self._write(f"bar {min(bars, self.total_bars)}/{self.total_bars} ({share:.0f}%), {tokens} tokens, "
                    f"{speed:.0f} tokens/s, {now - self.start:.0f} s")

    def _write(self, text: str) -> None:
        print(f"{self.prefix}: {text}", file=self.stream, flush=True)
        self.last = self.clock()
        self.lines += 1
