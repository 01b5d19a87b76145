"""RenderProgress: plain lines at most every ``every`` seconds, bars of the current window counted once."""

from __future__ import annotations

import io
import time

import torch

from instruct_museformer.render.progress import RenderProgress


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_are_due_every_interval_and_count_new_bars_only():
    clock, stream = FakeClock(), io.StringIO()
    progress = RenderProgress(10, every=5.0, stream=stream, clock=clock)
    clock.now = 1.0  # reading the score took 1 s: not part of the decoding speed
    progress.window([0], [0], 400)
    assert stream.getvalue() == "imf render: window 1: 1 sequence(s), encoding 400 score tokens, 0/10 bars done\n"
    clock.now = 3.0
    progress.step(40, torch.tensor([1]))  # not due yet
    assert len(stream.getvalue().splitlines()) == 1
    clock.now = 6.0
    progress.step(100, torch.tensor([3]))
    assert stream.getvalue().splitlines()[-1] == "imf render: bar 3/10 (30%), 100 tokens, 20 tokens/s, 6 s"
    progress.window_done(4, 130)
    clock.now = 7.0
    progress.window([2], [50], 300)  # next window: 2 bars (50 tokens) of context, not counted again
    assert stream.getvalue().splitlines()[-1].endswith("window 2: 1 sequence(s), encoding 300 score tokens, "
                                                       "4/10 bars done")
    clock.now = 12.0
    progress.step(110, torch.tensor([5]))  # 60 new tokens, 3 new bars
    assert stream.getvalue().splitlines()[-1] == "imf render: bar 7/10 (70%), 190 tokens, 17 tokens/s, 12 s"
    clock.now = 13.0
    progress.step(120, torch.tensor([6]))
    assert len(stream.getvalue().splitlines()) == 4


def test_note_writes_at_once():
    stream = io.StringIO()
    RenderProgress(0, stream=stream, clock=FakeClock()).note("reading a.krn")
    assert stream.getvalue() == "imf render: reading a.krn\n"


def test_reading_line_only_when_reading_is_slow():
    stream = io.StringIO()
    progress = RenderProgress(0, every=60.0, stream=stream)
    with progress.reading("quick.krn"):
        pass
    assert stream.getvalue() == ""
    progress.every = 0.0
    with progress.reading("slow.mxl"):
        for _ in range(200):
            if stream.getvalue():
                break
            time.sleep(0.01)
    assert stream.getvalue() == "imf render: reading slow.mxl ...\n"
