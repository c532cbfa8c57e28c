"""Beta posteriors in pure Python (the core installs without numpy or scipy).

``beta_cdf`` is the regularised incomplete beta function I_x(a, b), evaluated with the
continued fraction of Numerical Recipes (Press et al., section 6.4), switched to the
symmetric form where that converges faster; ``beta_quantile`` inverts it by bisection. The
tests hold both to scipy.special to 1e-9.

Counts may be fractional: the gate discounts old evidence (``gate.py``).
"""

from __future__ import annotations

import math

_EPS = 1e-15
_TINY = 1e-300
_MAX_TERMS = 500


def _continued_fraction(x: float, a: float, b: float) -> float:
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _MAX_TERMS + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return h


def beta_cdf(x: float, a: float, b: float) -> float:
    """P(X <= x) for X ~ Beta(a, b), a, b > 0."""
    if a <= 0 or b <= 0:
        raise ValueError(f"Beta parameters must be positive, got a={a}, b={b}")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _continued_fraction(x, a, b) / a
    return 1.0 - math.exp(log_front) * _continued_fraction(1.0 - x, b, a) / b


def beta_quantile(q: float, a: float, b: float, tol: float = 1e-10) -> float:
    """The x with ``beta_cdf(x, a, b) == q`` (bisection: monotone, and fast enough here)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"a quantile's probability is in [0, 1], got {q}")
    lo, hi = 0.0, 1.0
    while hi - lo > tol:
        mid = (lo + hi) / 2
        if beta_cdf(mid, a, b) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def beta_interval(successes: float, failures: float, level: float = 0.95,
                  prior: tuple[float, float] = (1.0, 1.0)) -> tuple[float, float]:
    """The equal-tailed ``level`` credible interval of a rate after ``successes`` in
    ``successes + failures`` trials, from a Beta ``prior`` (uniform by default)."""
    a, b = prior[0] + successes, prior[1] + failures
    tail = (1.0 - level) / 2
    return beta_quantile(tail, a, b), beta_quantile(1.0 - tail, a, b)
