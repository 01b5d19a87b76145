import numpy as np
import pytest

from instruct_museformer.evaluate.metrics import (
    BINS,
    common,
    curve_mae,
    curve_r,
    histogram,
    js_divergence,
    make_curve,
    mean_curve,
    mean_or_none,
    pearson,
)


def test_pearson_known_answers():
    x = np.array([1.0, 2.0, 4.0, 3.0, 7.0])
    assert pearson(x, x) == pytest.approx(1.0)
    assert pearson(x, -2 * x + 5) == pytest.approx(-1.0)
    assert pearson(x, 3 * x + 1) == pytest.approx(1.0)
    assert pearson(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])) == pytest.approx(0.5)


def test_pearson_undefined_is_none():
    assert pearson(np.array([1.0, 2.0]), np.array([2.0, 1.0])) is None  # too few points
    assert pearson(np.full(10, 64.0), np.arange(10.0)) is None  # a flat curve has no correlation
    assert pearson(np.arange(5.0), np.arange(4.0)) is None


def test_curves_are_compared_on_common_keys_only():
    a = make_curve([0, 1, 2, 3, 10], [1.0, 2.0, 3.0, 4.0, 100.0])
    b = make_curve([1, 2, 3, 4, 20], [2.0, 3.0, 4.0, -50.0, 7.0])
    x, y = common(a, b)
    assert x.tolist() == [2.0, 3.0, 4.0] and y.tolist() == [2.0, 3.0, 4.0]
    assert curve_r(a, b) == pytest.approx(1.0)
    assert curve_mae(a, b) == pytest.approx(0.0)
    assert curve_mae(make_curve([0, 1], [1.0, 5.0]), make_curve([0, 1], [2.0, 2.0])) == pytest.approx(2.0)


def test_make_curve_drops_non_finite_and_averages_repeated_keys():
    keys, values = make_curve([3, 1, 3, 2], [1.0, np.nan, 3.0, -np.inf])
    assert keys.tolist() == [3] and values.tolist() == [2.0]


def test_mean_curve_over_the_union_of_keys():
    keys, values = mean_curve([make_curve([0, 1], [1.0, 3.0]), make_curve([1, 2], [5.0, 6.0])])
    assert keys.tolist() == [0, 1, 2] and values.tolist() == [1.0, 4.0, 6.0]


def test_js_divergence_bounds():
    p = np.array([1.0, 2.0, 3.0, 0.0])
    assert js_divergence(p, p) == pytest.approx(0.0)
    assert js_divergence(p, 10 * p) == pytest.approx(0.0)  # counts are normalised
    assert js_divergence(np.array([1.0, 1.0, 0.0, 0.0]), np.array([0.0, 0.0, 2.0, 5.0])) == pytest.approx(1.0)
    half = js_divergence(np.array([1.0, 0.0]), np.array([1.0, 1.0]))
    assert 0.0 < half < 1.0
    assert half == pytest.approx(js_divergence(np.array([1.0, 1.0]), np.array([1.0, 0.0])))  # symmetric
    assert js_divergence(np.zeros(3), p[:3]) is None


def test_histograms_use_fixed_bins_with_overflow():
    counts = histogram(np.array([0.0, 0.01, 0.03, 1.99, 2.5, 100.0]), "ioi")
    assert len(counts) == len(BINS["ioi"]) - 1
    assert counts.sum() == 6
    assert counts[0] == 2 and counts[1] == 1 and counts[-1] == 2
    velocity = histogram(np.array([0, 3, 4, 127]), "velocity")
    assert velocity[0] == 2 and velocity[1] == 1 and velocity[-1] == 1
    pedal = histogram(np.array([0, 0, 64, 127]), "pedal")
    assert pedal.tolist() == [2.0, 0.0, 1.0, 1.0]


def test_mean_or_none():
    assert mean_or_none([None, 1.0, 3.0]) == 2.0
    assert mean_or_none([None, float("nan")]) is None
