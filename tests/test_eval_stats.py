"""Statistics of the evaluation against figures worked out by hand.

Student-t quantiles are the printed table values (t(0.975, 2) = 4.302653,
t(0.975, 3) = 3.182446); two-sided p-values use the closed forms of the t distribution
with 2 and 3 degrees of freedom:

    df=2: p = 1 - t / sqrt(2 + t^2)
    df=3: p = 1 - (2/pi) (theta + sin(theta) cos(theta)),  theta = atan(t / sqrt(3))
"""

from __future__ import annotations

import math

import pytest

from atlas_middleware.offline.eval.stats import mean_ci, paired_test


def test_paired_test_three_problems() -> None:
    # differences 1, 0, 0.5: mean 0.5, sd 0.5, se 0.5/sqrt(3) = 0.288675, t = sqrt(3)
    res = paired_test([1.0, 1.0, 0.5], [0.0, 1.0, 0.0])
    assert res.n == 3
    assert res.mean_diff == pytest.approx(0.5)
    assert res.t == pytest.approx(math.sqrt(3))
    assert res.p_value == pytest.approx(1 - math.sqrt(3 / 5), abs=1e-9)  # 0.225403
    half = 4.302653 * 0.5 / math.sqrt(3)  # 1.242069
    assert res.low == pytest.approx(0.5 - half, abs=1e-6)
    assert res.high == pytest.approx(0.5 + half, abs=1e-6)


def test_paired_test_four_problems_df3() -> None:
    # differences 0, 0, 0, 0.5: mean 0.125, sd 0.25, se 0.125, t = 1
    res = paired_test([1, 0, 1, 1], [1, 0, 1, 0.5])
    assert res.t == pytest.approx(1.0)
    assert res.p_value == pytest.approx(1 - 1 / 3 - math.sqrt(3) / (2 * math.pi), abs=1e-9)  # 0.391002
    assert res.low == pytest.approx(0.125 - 3.182446 * 0.125, abs=1e-6)
    assert res.high == pytest.approx(0.125 + 3.182446 * 0.125, abs=1e-6)


def test_mean_ci_of_proportions() -> None:
    # 0, 1, 1, 0: mean 0.5, sd sqrt(1/3) = 0.577350, se 0.288675
    ci = mean_ci([0.0, 1.0, 1.0, 0.0])
    assert ci.mean == pytest.approx(0.5)
    assert ci.low == pytest.approx(0.5 - 3.182446 * 0.288675, abs=1e-5)
    assert ci.high == pytest.approx(0.5 + 3.182446 * 0.288675, abs=1e-5)


def test_degenerate_cases_are_undefined_not_guessed() -> None:
    one = paired_test([1.0], [0.0])
    assert (one.mean_diff, one.low, one.high, one.t, one.p_value) == (1.0, None, None, None, None)
    same = paired_test([1.0, 0.5, 0.0], [0.5, 0.0, -0.5])  # every difference is 0.5
    assert (same.mean_diff, same.low, same.high, same.p_value) == (0.5, 0.5, 0.5, None)
    assert mean_ci([]).mean is None
    with pytest.raises(ValueError):
        paired_test([1.0], [1.0, 0.0])


def test_bounds_clip_the_interval_not_the_mean() -> None:
    # 0, 1, 1: mean 2/3, sd sqrt(1/3), se 1/3; t(0.975, 2) = 4.302653 -> [-0.767551, 2.100884]
    raw = mean_ci([0.0, 1.0, 1.0])
    assert raw.low == pytest.approx(2 / 3 - 4.302653 / 3, abs=1e-6)
    clipped = mean_ci([0.0, 1.0, 1.0], bounds=(0.0, 1.0))
    assert (clipped.mean, clipped.low, clipped.high) == (pytest.approx(2 / 3), 0.0, 1.0)
