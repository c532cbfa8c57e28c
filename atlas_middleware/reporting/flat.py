"""One flat row per group: the columns of the CSV, and the rows of the terminal table."""

from __future__ import annotations

from typing import Any

from ..usage import ROLES
from .summary import DECISIONS, GroupSummary

COLUMNS: tuple[str, ...] = (
    "group", "calls", "failed",
    *(f"decision_{d}" for d in DECISIONS),
    *(f"{role}_{part}_tokens" for role in ROLES for part in ("prompt", "completion")),
    "total_tokens", "measured_calls", "tokens_saved", "saved_rate", "net_tokens", "net_rate",
    "cost_usd", "cost_unknown_calls", "teacher_tried", "teacher_errors", "teacher_error_rate",
    "error_rate", "latency_p50_ms", "latency_p95_ms", "teacher_latency_p50_ms",
    "teacher_latency_p95_ms", "taught", "taught_share",
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
    )
    return row


def fmt_int(n: int) -> str:
    return f"{n:,}"


def fmt_signed(n: int) -> str:
    return f"{n:+,}"


def fmt_rate(x: float | None) -> str:
    return "n/a" if x is None else f"{x:+.1%}"


def fmt_share(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def fmt_ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.1f}"


def fmt_cost(cost: float | None, unknown: int) -> str:
    text = "n/a" if cost is None else f"${cost:,.4f}"
    return text + (f" (+{unknown} unpriced)" if unknown and cost is not None else "")
