"""One flat row per group: the columns of the CSV, and the rows of the terminal table."""

from __future__ import annotations

from typing import Any

from ..usage import ROLES
from .summary import DECISIONS, GroupSummary, Rate

RATES: tuple[str, ...] = ("improved", "degraded", "unchanged", "delivered_improvement", "delivered_degradation")
"""The ``Rate`` figures; each gives four columns: the count, ``_rate``, ``_low``, ``_high``."""
GATE_FIELDS: tuple[str, ...] = ("state", "p_gain", "p_effect", "evidence", "student_model")

COLUMNS: tuple[str, ...] = (
    "group", "calls", "failed",
    *(f"decision_{d}" for d in DECISIONS),
    *(f"{role}_{part}_tokens" for role in ROLES for part in ("prompt", "completion")),
    "total_tokens", "measured_calls", "tokens_saved", "saved_rate", "net_tokens", "net_rate",
    "cost_usd", "cost_unknown_calls", "teacher_tried", "teacher_errors", "teacher_error_rate",
    "error_rate", "latency_p50_ms", "latency_p95_ms", "teacher_latency_p50_ms",
    "teacher_latency_p95_ms", "taught", "taught_share",
    "compared", *(f"{name}{part}" for name in RATES for part in ("", "_rate", "_low", "_high")),
    "net_tokens_per_call", "gate_skipped", "teacher_calls_avoided", "reused_family", "reused_session",
    *(f"gate_{f}" for f in GATE_FIELDS),
)


def flat_row(g: GroupSummary) -> dict[str, Any]:
    row: dict[str, Any] = {"group": g.key, "calls": g.calls, "failed": g.failed}
    for d in DECISIONS:
        row[f"decision_{d}"] = g.decisions.get(d, 0)
    for role in ROLES:
        row[f"{role}_prompt_tokens"] = g.tokens[role].prompt
        row[f"{role}_completion_tokens"] = g.tokens[role].completion
    row.update(
        total_tokens=g.total_tokens, measured_calls=g.measured_calls, tokens_saved=g.tokens_saved,
        saved_rate=g.saved_rate, net_tokens=g.net_tokens, net_rate=g.net_rate, cost_usd=g.cost_usd,
        cost_unknown_calls=g.cost_unknown_calls, teacher_tried=g.teacher_tried,
        teacher_errors=g.teacher_errors, teacher_error_rate=g.teacher_error_rate,
        error_rate=g.error_rate, latency_p50_ms=g.latency_ms.p50, latency_p95_ms=g.latency_ms.p95,
        teacher_latency_p50_ms=g.teacher_latency_ms.p50,
        teacher_latency_p95_ms=g.teacher_latency_ms.p95, taught=g.taught, taught_share=g.taught_share,
        compared=g.compared,
    )
    for name in RATES:
        r: Rate = getattr(g, name)
        row.update({name: r.count, f"{name}_rate": r.rate, f"{name}_low": r.low, f"{name}_high": r.high})
    row.update(
        net_tokens_per_call=g.net_tokens_per_call, gate_skipped=g.gate_skipped,
        teacher_calls_avoided=g.teacher_calls_avoided, reused_family=g.reused_family,
        reused_session=g.reused_session,
    )
    for f in GATE_FIELDS:  # family groups only; empty cells elsewhere
        row[f"gate_{f}"] = None if g.gate is None else getattr(g.gate, f)
    return row


def fmt_int(n: int) -> str:
    return f"{n:,}"


def fmt_signed(n: int) -> str:
    return f"{n:+,}"


def fmt_rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1%}"


def fmt_share(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def fmt_interval(r: Rate) -> str:
    """``25.0% [8.5, 52.4]``: the share and its 95% interval, in percent."""
    if r.rate is None or r.low is None or r.high is None:
        return "n/a"
    return f"{r.rate:.1%} [{r.low * 100:.1f}, {r.high * 100:.1f}]"


def fmt_tokens(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+,.1f}"


def fmt_ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.1f}"


def fmt_cost(cost: float | None, unknown: int) -> str:
    text = "n/a" if cost is None else f"${cost:,.4f}"
    return text + (f" (+{unknown} unpriced)" if unknown and cost is not None else "")
