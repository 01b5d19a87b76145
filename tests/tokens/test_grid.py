"""The bar grid: anacrusis padding, irregular and long measures, signature normalisation, beats."""

from __future__ import annotations

import numpy as np
import pytest

from instruct_museformer.tokens.grid import BarGrid, Measure
from instruct_museformer.tokens.tokenizer import Vocab


@pytest.fixture(scope="module")
def vocab(tokenizer):
    return Vocab(tokenizer)


def _signatures(grid):
    return [(b.numerator, b.denominator) for b in grid.bars]


def test_regular_measures(vocab):
    grid = BarGrid.from_measures([Measure(4.0 * i, 4.0 * i + 4, 4, 4) for i in range(3)], vocab)
    tpq = vocab.ticks_per_quarter
    assert _signatures(grid) == [(4, 4)] * 3
    assert grid.end_tick == 12 * tpq
    assert np.allclose(grid.quarter_to_tick([0.0, 1.5, 11.0]), [0, 1.5 * tpq, 11 * tpq])


def test_anacrusis_is_padded_to_a_full_bar(vocab):
    measures = [Measure(0.0, 1.0, 3, 4), Measure(1.0, 4.0, 3, 4), Measure(4.0, 7.0, 3, 4)]
    grid = BarGrid.from_measures(measures, vocab)
    tpq = vocab.ticks_per_quarter
    assert grid.num_bars == 3 and _signatures(grid) == [(3, 4)] * 3
    assert grid.bars[0].start_q == -2.0
    # The pickup note sits on beat 3 of bar 1, the first downbeat on bar 2's first tick.
    assert np.allclose(grid.quarter_to_tick([0.0, 1.0]), [2 * tpq, 3 * tpq])


def test_irregular_and_long_measures(vocab):
    measures = [Measure(0.0, 4.0, 4, 4), Measure(4.0, 7.5, 4, 4), Measure(7.5, 34.5, 4, 4), Measure(34.5, 37.5, 6, 8)]
    grid = BarGrid.from_measures(measures, vocab)
    assert _signatures(grid) == [(4, 4), (7, 8)] + [(4, 4)] * 6 + [(3, 4), (6, 8)]
    assert np.isclose(grid.tick_to_quarter(grid.quarter_to_tick(20.25)), 20.25)
    assert grid.bars[-1].start_q == 34.5


@pytest.mark.parametrize("signature, expected", [((2, 2), (4, 4)), ((3, 2), (6, 4)), ((12, 8), (12, 8)),
                                                 ((9, 16), (9, 16)), ((1, 1), (4, 4))])
def test_signatures_are_normalised(vocab, signature, expected):
    n, d = signature
    length = 4.0 * n / d
    grid = BarGrid.from_measures([Measure(0.0, length, n, d), Measure(length, 2 * length, n, d)], vocab)
    assert _signatures(grid) == [expected] * 2
    assert all((b.numerator, b.denominator) in vocab.time_signatures for b in grid.bars)


def test_beats_group_compound_meters(vocab):
    grid = BarGrid.from_measures([Measure(0.0, 3.0, 6, 8), Measure(3.0, 6.0, 3, 4)], vocab)
    tpq = vocab.ticks_per_quarter
    assert list(grid.beat_ticks()) == [0, int(1.5 * tpq), 3 * tpq, 4 * tpq, 5 * tpq, 6 * tpq]


def test_snap_clamps_into_the_piece(vocab):
    grid = BarGrid.from_measures([Measure(0.0, 4.0, 4, 4), Measure(4.0, 8.0, 4, 4)], vocab)
    tpq = vocab.ticks_per_quarter
    step = vocab.ticks_per_position(4)
    bar, pos = grid.snap(np.array([-50.0, 4 * tpq - 0.6 * step, 9 * tpq]))
    assert list(bar) == [0, 0, 1]
    assert pos[0] == 0 and pos[1] == 4 * tpq // step - 1 and pos[2] == 4 * tpq // step - 1
    bar, pos = grid.snap(np.array([4 * tpq - 0.4 * step]))  # rounds onto the bar line
    assert (bar[0], pos[0]) == (1, 0)


def test_empty_measures_rejected(vocab):
    with pytest.raises(ValueError):
        BarGrid.from_measures([Measure(0.0, 0.0, 4, 4)], vocab)
