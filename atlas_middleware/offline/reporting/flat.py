"""One flat row per group: the columns of the CSV, and the rows of the terminal table."""

from __future__ import annotations

from typing import Any

from ...usage import ROLES
from .summary import DECISIONS, GroupSummary, Rate, ShadowSummary

RATES: tuple[str, ...] = ("improved", "degraded", "unchanged", "delivered_improvement", "delivered_degradation")
"""The ``Rate`` figures; each gives four columns: the count, ``_rate``, ``_low``, ``_high``."""
GATE_FIELDS: tuple[str, ...] = ("state", "p_gain", "p_effect", "evidence", "student_model")

SHADOW_FIELDS: tuple[str, ...] = (
    "calls", "sampled", "busy", "compared", "improved_rate", "improved_low", "improved_high", "degraded_rate",
    "degraded_low", "degraded_high", "accuracy_change", "accuracy_change_low", "accuracy_change_high", "ndr",
    "ndr_low", "ndr_high", "priced", "unchecked_saved_usd_per_call", "unchecked_vs_alone",
    "checked_saved_usd_per_call", "checked_vs_alone",
)
"""``policy: shadow``: what teaching would have delivered (``ShadowSummary``); empty elsewhere."""

DOLLARS: tuple[str, ...] = ("cost_saved_usd", "cost_vs_alone", "student_alone_cost_usd", "dollar_calls",
                            "dollar_calls_estimated", "cost_saved_estimated_usd")
"""The net-dollar figures, which lead every row after the group's size."""

COLUMNS: tuple[str, ...] = (
    "group", "calls", *DOLLARS, "failed",
    *(f"decision_{d}" for d in DECISIONS),
    *(f"{role}_{part}_tokens" for role in ROLES for part in ("prompt", "completion")),
    "total_tokens", "measured_calls", "tokens_saved", "saved_rate", "net_tokens", "net_rate",
    "estimated_calls", "tokens_saved_estimated", "net_tokens_estimated", "cost_usd", "cost_unknown_calls", "teacher_tried", "teacher_errors", "teacher_error_rate",
    "error_rate", "latency_p50_ms", "latency_p95_ms", "teacher_latency_p50_ms",
    "teacher_latency_p95_ms", "taught", "taught_share",
    "compared", *(f"{name}{part}" for name in RATES for part in ("", "_rate", "_low", "_high")),
    "net_tokens_per_call", "gate_skipped", "budget_exhausted", "teacher_calls_avoided", "reused_family",
    "reused_session", *(f"gate_{f}" for f in GATE_FIELDS), *(f"shadow_{f}" for f in SHADOW_FIELDS),
)


def flat_row(g: GroupSummary) -> dict[str, Any]:
    row: dict[str, Any] = {"group": g.key, "calls": g.calls, **{name: getattr(g, name) for name in DOLLARS},
                           "failed": g.failed}
    for d in DECISIONS:
        row[f"decision_{d}"] = g.decisions.get(d, 0)
    for role in ROLES:
        row[f"{role}_prompt_tokens"] = g.tokens[role].prompt
        row[f"{role}_completion_tokens"] = g.tokens[role].completion
    row.update(
        total_tokens=g.total_tokens, measured_calls=g.measured_calls, tokens_saved=g.tokens_saved,
        saved_rate=g.saved_rate, net_tokens=g.net_tokens, net_rate=g.net_rate, estimated_calls=g.estimated_calls,
        tokens_saved_estimated=g.tokens_saved_estimated, net_tokens_estimated=g.net_tokens_estimated,
        cost_usd=g.cost_usd,
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
        net_tokens_per_call=g.net_tokens_per_call, gate_skipped=g.gate_skipped, budget_exhausted=g.budget_exhausted,
        teacher_calls_avoided=g.teacher_calls_avoided, reused_family=g.reused_family,
        reused_session=g.reused_session,
    )
    for f in GATE_FIELDS:  # family groups only; empty cells elsewhere
        row[f"gate_{f}"] = None if g.gate is None else getattr(g.gate, f)
    for f in SHADOW_FIELDS:  # groups with shadow calls only
        row[f"shadow_{f}"] = None if g.shadow is None else _shadow_value(g.shadow, f)
    return row


def _shadow_value(x: ShadowSummary, name: str) -> Any:
    """A ``SHADOW_FIELDS`` value: a ``Rate``'s part (``improved_rate``), or a field."""
    head, _, part = name.rpartition("_")
    if head in ("improved", "degraded") and part in ("rate", "low", "high"):
        return getattr(getattr(x, head), part)
    return getattr(x, name)


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


def fmt_net_usd(saved: float | None) -> str:
    """Net dollars against the student alone: ``+$0.001234`` saved, ``-$0.001234`` spent."""
    return "n/a" if saved is None else f"{'+' if saved >= 0 else '-'}${abs(saved):,.6f}"


def fmt_usd(x: float) -> str:
    """Dollars a person reads: cents from a cent up, else three significant digits."""
    return f"${x:,.2f}" if x == 0 or abs(x) >= 0.01 else f"${x:.3g}"


def fmt_saved_tokens(net: int) -> str:
    """``net_tokens`` (spent - the student alone) shown as tokens saved: + saved, - spent."""
    return fmt_signed(-net)


def fmt_saved_rate(net_rate: float | None) -> str:
    return fmt_rate(None if net_rate is None else -net_rate)


def fmt_saved_per_call(net_per_call: float | None) -> str:
    return fmt_tokens(None if net_per_call is None else -net_per_call)


def fmt_times(ratio: float | None) -> str:
    """What was spent as a multiple of the student alone: ``1.66x``."""
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def fmt_cost(cost: float | None, unknown: int) -> str:
    text = "n/a" if cost is None else f"${cost:,.4f}"
    return text + (f" (+{unknown} unpriced)" if unknown and cost is not None else "")
