"""Confidence intervals and the paired t-test (scipy), on per-problem figures.

The unit of analysis is the problem, not the sample: the samples of one problem are not
independent, so each problem contributes the mean of its samples, and the teacher+student
and student-alone means of the same problem form a pair (the published protocol: paired
t-test, 95% confidence intervals).

Degenerate cases are reported as undefined rather than guessed: with fewer than two
problems there is no interval and no test; when every difference is the same, the interval
is that single value and the t statistic and p-value are ``None`` (scipy would return NaN).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from pydantic import BaseModel

from ...errors import MissingExtraError


def _scipy_stats() -> object:
    try:
        from scipy import stats
    except ImportError as exc:
        raise MissingExtraError("the evaluation's statistics", "eval", "scipy") from exc
    return stats


class MeanCI(BaseModel):
    mean: float | None
    low: float | None = None
    high: float | None = None
    n: int = 0


class PairedTest(BaseModel):
    """``a - b`` over pairs: the mean difference, its interval, the t statistic and p-value."""

    mean_diff: float | None
    low: float | None = None
    high: float | None = None
    t: float | None = None
    p_value: float | None = None
    n: int = 0


def _sd(values: Sequence[float], mean: float) -> float:
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def mean_ci(
    values: Sequence[float], level: float = 0.95, bounds: tuple[float, float] | None = None
) -> MeanCI:
    """Mean and two-sided Student-t interval: mean ± t(1-α/2, n-1) · sd / √n.

    ``bounds`` clips the interval to the values the quantity can take (an accuracy lies in
    [0, 1]; the symmetric t interval of a few problems does not know that).
    """
    n = len(values)
    if n == 0:
        return MeanCI(mean=None, n=0)
    mean = math.fsum(values) / n
    if n < 2:
        return MeanCI(mean=mean, n=n)
    sd = _sd(values, mean)
    if sd == 0:
        return MeanCI(mean=mean, low=mean, high=mean, n=n)
    stats: object = _scipy_stats()
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)  # type: ignore[attr-defined]
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return MeanCI(mean=mean, low=low, high=high, n=n)


def paired_test(
    a: Sequence[float], b: Sequence[float], level: float = 0.95, bounds: tuple[float, float] | None = None
) -> PairedTest:
    """Paired t-test of ``a`` against ``b`` (``scipy.stats.ttest_rel``), two-sided."""
    if len(a) != len(b):
        raise ValueError("paired samples must have the same length")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    ci = mean_ci(diffs, level, bounds)
    out = PairedTest(mean_diff=ci.mean, low=ci.low, high=ci.high, n=ci.n)
    if ci.n < 2 or ci.mean is None or _sd(diffs, ci.mean) == 0:
        return out
    stats: object = _scipy_stats()
    res = stats.ttest_rel(list(a), list(b))  # type: ignore[attr-defined]
    out.t, out.p_value = float(res.statistic), float(res.pvalue)
    return out
