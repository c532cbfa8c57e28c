"""Savings figures computed from ledger records: one pass, pure, no I/O.

Every figure is defined here once, and every renderer (table, CSV, JSON, HTML) shows these
values and nothing it computed itself, so the formats cannot disagree.

Definitions (``CallReport``'s sign conventions, summed):

* ``tokens_saved``: sum over *measured* calls (those with a baseline, i.e. a non-null
  ``tokens_saved``) of baseline completion minus delivered completion; positive = saved.
* ``saved_rate``: ``tokens_saved`` / the baseline completion tokens of those same calls.
* ``net_tokens``: sum over measured calls of everything spent minus the student-alone
  baseline total; positive = the middleware *cost* tokens, negative = it saved them.
* ``net_rate``: ``net_tokens`` / the baseline's total (prompt + completion) tokens of those
  calls. Unmeasured calls count in the token totals but in neither rate: they have no
  counterfactual, and guessing one would make the rates lie.
* ``cost_usd``: the sum of the known prices (``None`` if none); ``cost_unknown_calls`` says how many calls had
  none (an unknown cost is not zero).
* ``teacher_error_rate``: calls whose teacher path failed / calls that tried the teacher.
* ``taught``: calls in which the student answered with guidance (a guided call ran, with
  fresh or reused guidance), whichever answer was delivered; ``taught_share`` = ``taught``
  / ``calls``.

Per task family (``families``, always there; ``--group-by family`` for every figure): the
groups keyed by ``task_family`` (``teaching/families.py``); records written before
families existed fall under ``(none)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from ..ledger.record import LedgerRecord
from ..report import TEACHER_PATH_FAILURES
from ..usage import ROLES

GroupBy = Literal["day", "model", "session", "decision", "family"]
GROUP_BY: tuple[GroupBy, ...] = ("day", "model", "session", "decision", "family")
DECISIONS: tuple[str, ...] = ("guided", "baseline", "student_only")
# Reasons that mean "the teacher path was tried and failed" (the call then fell back).
TEACHER_FAILURES = frozenset(r.value for r in TEACHER_PATH_FAILURES)
NO_SESSION = "(none)"
NO_FAMILY = "(none)"


class RoleTokens(BaseModel):
    prompt: int = 0
    completion: int = 0
    calls: int = 0
    reasoning: int = 0
    """Of ``completion``: a reasoning model's thinking (already counted in it)."""
    cached: int = 0
    """Of ``prompt``: read from the provider's prompt cache (already counted in it)."""

    @property
    def total(self) -> int:
        return self.prompt + self.completion


class Distribution(BaseModel):
    """Latency figures in milliseconds; all ``None`` when there were no samples."""

    count: int = 0
    mean: float | None = None
    p50: float | None = None
    p95: float | None = None
    max: float | None = None


class GroupSummary(BaseModel):
    key: str = "all"
    calls: int = 0
    failed: int = 0
    decisions: dict[str, int] = Field(default_factory=lambda: dict.fromkeys(DECISIONS, 0))
    reasons: dict[str, int] = Field(default_factory=dict)
    tokens: dict[str, RoleTokens] = Field(default_factory=lambda: {str(r): RoleTokens() for r in ROLES})
    total_tokens: int = 0
    measured_calls: int = 0
    tokens_saved: int = 0
    baseline_completion_tokens: int = 0
    saved_rate: float | None = None
    net_tokens: int = 0
    baseline_total_tokens: int = 0
    net_rate: float | None = None
    cost_usd: float | None = None
    """Sum of the known prices; ``None`` when no call in the group had one."""
    cost_unknown_calls: int = 0
    teacher_tried: int = 0
    teacher_errors: int = 0
    teacher_error_rate: float | None = None
    taught: int = 0
    taught_share: float | None = None
    error_rate: float | None = None
    latency_ms: Distribution = Field(default_factory=Distribution)
    teacher_latency_ms: Distribution = Field(default_factory=Distribution)
    first_call: datetime | None = None
    last_call: datetime | None = None


class TopCall(BaseModel):
    call_id: str
    created_at: datetime
    student_model: str
    session_id: str | None
    decision: str
    reason: str
    total_tokens: int
    net_tokens: int | None
    cost_usd: float | None
    latency_ms: float


class Summary(BaseModel):
    """What every renderer shows."""

    ledger: str
    filters: dict[str, str] = Field(default_factory=dict)
    group_by: GroupBy | None = None
    pending_spooled: int = 0
    overall: GroupSummary
    groups: list[GroupSummary] = Field(default_factory=list)
    daily: list[GroupSummary] = Field(default_factory=list)
    """Always grouped by day: the charts plot savings over time whatever ``group_by`` is."""
    families: list[GroupSummary] = Field(default_factory=list)
    """Always grouped by task family (the table's family section)."""
    top_calls: list[TopCall] = Field(default_factory=list)
    latencies_ms: list[float] = Field(default_factory=list)
    teacher_latencies_ms: list[float] = Field(default_factory=list)


def record_total_tokens(record: LedgerRecord) -> int:
    return sum(v.get("prompt", 0) + v.get("completion", 0) for v in record.tokens.values())


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile: a value that occurred, never an interpolation."""
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def distribution(values: Iterable[float]) -> Distribution:
    data = sorted(values)
    if not data:
        return Distribution()
    return Distribution(
        count=len(data), mean=sum(data) / len(data), p50=_percentile(data, 0.5),
        p95=_percentile(data, 0.95), max=data[-1],
    )


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else num / den


def summarize_group(records: list[LedgerRecord], key: str = "all") -> GroupSummary:
    g = GroupSummary(key=key)
    for r in records:
        g.calls += 1
        g.failed += int(r.failed)
        g.decisions[r.decision] = g.decisions.get(r.decision, 0) + 1
        g.reasons[r.reason] = g.reasons.get(r.reason, 0) + 1
        for role in ROLES:
            t = r.tokens.get(role, {})
            acc = g.tokens[role]
            acc.prompt += t.get("prompt", 0)
            acc.completion += t.get("completion", 0)
            acc.calls += t.get("calls", 0)
            acc.reasoning += t.get("reasoning", 0)
            acc.cached += t.get("cached", 0)
        if r.tokens_saved is not None and r.net_tokens is not None:
            base = r.tokens.get("baseline", {})
            g.measured_calls += 1
            g.tokens_saved += r.tokens_saved
            g.net_tokens += r.net_tokens
            g.baseline_completion_tokens += base.get("completion", 0)
            g.baseline_total_tokens += base.get("prompt", 0) + base.get("completion", 0)
        if r.cost_usd is None:
            g.cost_unknown_calls += 1
        else:
            g.cost_usd = (g.cost_usd or 0.0) + r.cost_usd
        failed_teacher = r.reason in TEACHER_FAILURES
        if failed_teacher or r.tokens.get("teacher", {}).get("calls", 0) > 0:
            g.teacher_tried += 1
            g.teacher_errors += int(failed_teacher)
        g.taught += int(r.tokens.get("guided", {}).get("calls", 0) > 0)
        g.first_call = r.created_at if g.first_call is None else min(g.first_call, r.created_at)
        g.last_call = r.created_at if g.last_call is None else max(g.last_call, r.created_at)
    g.total_tokens = sum(t.total for t in g.tokens.values())
    g.saved_rate = _ratio(g.tokens_saved, g.baseline_completion_tokens)
    g.net_rate = _ratio(g.net_tokens, g.baseline_total_tokens)
    g.teacher_error_rate = _ratio(g.teacher_errors, g.teacher_tried)
    g.taught_share = _ratio(g.taught, g.calls)
    g.error_rate = _ratio(g.failed, g.calls)
    g.latency_ms = distribution(r.latency_ms for r in records)
    g.teacher_latency_ms = distribution(
        r.teacher_latency_ms for r in records if r.teacher_latency_ms is not None
    )
    return g


def utc_day(when: datetime) -> str:
    """The UTC date; a naive timestamp is taken as UTC (that is how the ledgers store them)."""
    return (when.astimezone(UTC) if when.tzinfo is not None else when).date().isoformat()


def group_key(group_by: GroupBy) -> Callable[[LedgerRecord], str]:
    keys: dict[GroupBy, Callable[[LedgerRecord], str]] = {
        "day": lambda r: utc_day(r.created_at),
        "model": lambda r: r.student_model,
        "session": lambda r: r.session_id or NO_SESSION,
        "decision": lambda r: r.decision,
        "family": lambda r: r.task_family or NO_FAMILY,
    }
    return keys[group_by]


def grouped(records: list[LedgerRecord], group_by: GroupBy) -> list[GroupSummary]:
    key = group_key(group_by)
    buckets: dict[str, list[LedgerRecord]] = {}
    for r in records:
        buckets.setdefault(key(r), []).append(r)
    return [summarize_group(rs, k) for k, rs in sorted(buckets.items())]


def top_calls(records: list[LedgerRecord], n: int = 10) -> list[TopCall]:
    """The calls that spent most tokens (all roles): prices are often unknown, tokens never."""
    ranked = sorted(records, key=lambda r: (record_total_tokens(r), r.created_at), reverse=True)[:n]
    return [
        TopCall(
            call_id=r.call_id, created_at=r.created_at, student_model=r.student_model,
            session_id=r.session_id, decision=r.decision, reason=r.reason,
            total_tokens=record_total_tokens(r), net_tokens=r.net_tokens, cost_usd=r.cost_usd,
            latency_ms=r.latency_ms,
        )
        for r in ranked
    ]


def summarize(
    records: list[LedgerRecord],
    *,
    ledger: str,
    group_by: GroupBy | None = None,
    filters: dict[str, str] | None = None,
    pending_spooled: int = 0,
    top: int = 10,
) -> Summary:
    return Summary(
        ledger=ledger,
        filters=dict(filters or {}),
        group_by=group_by,
        pending_spooled=pending_spooled,
        overall=summarize_group(records),
        groups=grouped(records, group_by) if group_by else [],
        daily=grouped(records, "day"),
        families=grouped(records, "family"),
        top_calls=top_calls(records, top),
        latencies_ms=[r.latency_ms for r in records],
        teacher_latencies_ms=[r.teacher_latency_ms for r in records if r.teacher_latency_ms is not None],
    )
