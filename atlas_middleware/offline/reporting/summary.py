"""Savings figures computed from ledger records: one pass, pure, no I/O.

Every figure is defined here once, and every renderer (table, CSV, JSON, HTML) shows these
values and nothing it computed itself, so the formats cannot disagree.

Definitions (``CallReport``'s sign conventions, summed):

* ``cost_saved_usd``, the lead figure: net dollars against the student alone, the sum of the
  calls' ``cost_saved_usd`` (student-alone price minus everything spent) over the calls that
  have one (``dollar_calls``); positive = saved, negative = teaching cost money. A call's
  student-alone price is its own baseline's (``measured``) or, where it ran none, its
  family's mean baseline (``estimated``): ``dollar_calls_estimated`` and
  ``cost_saved_estimated_usd`` say how much of the figure is estimated. A call with no
  student-alone price (no baseline and no family estimate, or an unknown price) is in none
  of these. ``student_alone_cost_usd`` is the student-alone price of the same calls, and
  ``cost_vs_alone`` what they cost over it (1.66: 66% more than the student alone).
* ``tokens_saved``: sum over *measured* calls (those with their own baseline: basis
  ``measured``, or a record written before the basis existed with a non-null
  ``tokens_saved``) of baseline completion minus delivered completion; positive = saved.
* ``saved_rate``: ``tokens_saved`` / the baseline completion tokens of those same calls.
* ``net_tokens``: sum over measured calls of everything spent minus the student-alone
  baseline total; positive = the middleware *cost* tokens, negative = it saved them.
* ``net_rate``: ``net_tokens`` / the baseline's total (prompt + completion) tokens of those
  calls. Unmeasured calls count in the token totals but in neither rate: their counterfactual
  is at best an estimate, and mixing it in would present it as measured.
* ``estimated_calls``, ``tokens_saved_estimated``, ``net_tokens_estimated``: the same token
  sums over the calls whose counterfactual was estimated from their family's baselines.
* ``cost_usd``: the sum of the known prices (``None`` if none); ``cost_unknown_calls`` says how many calls had
  none (an unknown cost is not zero).
* ``teacher_error_rate``: calls whose teacher path failed / calls that tried the teacher.
* ``taught``: calls in which the student answered with guidance (a guided call ran, with
  fresh or reused guidance), whichever answer was delivered; ``taught_share`` = ``taught``
  / ``calls``.

What teaching did (every group; the point of the per-family view, ``learning/``):

* ``compared``: the calls whose comparison of the guided answer with the student's own is an
  unbiased sample of the group's calls, the very calls the learned gate counts
  (``learning.gate.counted_outcome``): every ``strict`` call that compared (including the
  teacher's "strong student", an ``unchanged``), and the ``audit`` calls in the audit sample.
  A ``verify`` call is never one (only a failing grade is compared: a sample biased towards
  degradation), unless the gate ran it as ``strict`` to measure it.
* ``improved`` / ``degraded`` / ``unchanged``: the teaching effect, ``outcome_of`` those
  calls (``learning/outcomes.py``), guided against the student alone whatever was delivered:
  what the gate sees.
* ``delivered_improvement``: compared calls whose *delivered* answer was judged better than
  the student's own (outcome ``improved`` and the guided answer delivered: the judge's
  pick under ``strict``, an audit won by the guided answer).
* ``delivered_degradation``: compared calls whose delivered answer was judged worse than the
  student's own (outcome ``degraded`` and the guided answer delivered: an audit that
  preferred the baseline after the guided answer had gone out). Under ``strict`` the judge
  delivers the baseline when it prefers it, so a strict call is never one.
* Each of those is a ``Rate``: the count, the share of ``compared`` and its 95% interval,
  the equal-tailed Beta credible interval from a uniform prior
  (``learning.posterior.beta_interval``; not Wilson's score interval), reaching down to 0
  at a count of 0 and up to 1 at a count of all; ``None`` with no compared call.
* ``net_tokens_per_call``: ``net_tokens`` / ``measured_calls`` (the calls with a baseline).
* ``gate_skipped``: calls the learned gate did not teach (reason ``gate_skipped``).
* ``budget_exhausted``: calls run untaught because the day's teaching budget was spent, or
  could not be read (reason ``budget_exhausted``, ``budgets.py``).
* ``teacher_calls_avoided``: calls that used earlier guidance instead of probe and teacher
  (``guidance_reused``): ``reused_family`` (``reuse: family``; ``reused_from`` counts the
  calls per call id whose guidance was reused) and ``reused_session`` (an agent session's).

What teaching would have delivered (``shadow``, a ``ShadowSummary``, in every group that holds
``policy: shadow`` calls; docs/policies.md#shadow-the-first-step): of the shadow calls, how many
were ``sampled`` (taught in the background), ``busy`` (sampled but not run: ``shadow.max_pending``)
and ``compared`` (their comparison gave an outcome: the gate's rule, ``outcome_of``); the
``improved`` / ``degraded`` / ``unchanged`` ``Rate`` of those; the **accuracy change** had the
guided answer been delivered (``improved`` share - ``degraded`` share) with an approximate 95%
interval (normal, centred on the observed change, its variance the Dirichlet posterior's
from a uniform prior: never zero at 0 or n of n); the **NDR** had it been delivered unchecked
(1 - the ``degraded`` share, the interval from that share's Beta interval; under ``strict``
the judge delivers the student's own answer where it found a degradation); and the dollars
of the sampled calls with every price known (``priced``): per call, the student alone's price
minus what teaching would have cost, unchecked (probe + teacher + guided answer: ``audit``
unsampled, ``off``) and checked (everything: ``strict``), and each as a multiple of the
student alone.

Per task family (``families``, always there; ``--group-by family`` for every figure): the
groups keyed by ``task_family`` (``teaching/families.py``); records written before
families existed fall under ``(none)``. A derived (``f:``) family group has a ``label``, the
masked start of its template (``family_label``), where the ledger kept texts. A family group also has ``gate``: the learned gate's
state, ``p_gain``, ``p_effect`` and evidence after replaying the last ``gate_records`` of
the summarised records through ``TeachingGate.observe`` with the configured rule
(``learning/rebuild.replay``): what a process starting now would rebuild, whether or not the
gate is on (``gate_mode``). A family none of those records counted is ``learning``.

One pass: each record's ``report_json`` is read once, for the two fields the columns lack
(``audit``, ``reused_from``), and only when it has them (a strict call without reuse is read
from its columns alone); only the records replayed become ``CallReport`` objects.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..._tenants import DEFAULT_TENANT
from ...learning.gate import GateRule, GateState, TeachingGate, assess, counted_outcome, gate_key
from ...learning.outcomes import OUTCOMES, Outcome
from ...learning.posterior import beta_interval
from ...learning.rebuild import replay
from ...ledger.record import LedgerRecord
from ...report import TEACHER_PATH_FAILURES, AuditInfo, CallReport, Reason, ShadowInfo
from ...state.families import MemoryFamilies
from ...teaching.families import FINGERPRINT_PREFIX, text_of, windowed
from ...usage import ROLES, Usage, UsageByRole

GroupBy = Literal["day", "model", "session", "decision", "family"]
GROUP_BY: tuple[GroupBy, ...] = ("day", "model", "session", "decision", "family")
DECISIONS: tuple[str, ...] = ("guided", "baseline", "student_only")
# Reasons that mean "the teacher path was tried and failed" (the call then fell back).
TEACHER_FAILURES = frozenset(r.value for r in TEACHER_PATH_FAILURES)
NO_SESSION = "(none)"
NO_FAMILY = "(none)"
LABEL_CHARS = 48


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


class Rate(BaseModel):
    """A count of compared calls, its share of them, and the share's 95% interval."""

    count: int = 0
    rate: float | None = None
    low: float | None = None
    """Equal-tailed 95% Beta credible interval, uniform prior (0 at a count of 0, 1 at all);
    None with no compared call."""
    high: float | None = None


class ShadowSummary(BaseModel):
    """``policy: shadow``: what teaching would have delivered (module docstring)."""

    calls: int = 0
    sampled: int = 0
    busy: int = 0
    compared: int = 0
    improved: Rate = Field(default_factory=Rate)
    degraded: Rate = Field(default_factory=Rate)
    unchanged: Rate = Field(default_factory=Rate)
    accuracy_change: float | None = None
    """Improved share - degraded share of the compared calls, had the guided answer been delivered."""
    accuracy_change_low: float | None = None
    accuracy_change_high: float | None = None
    ndr: float | None = None
    """1 - the degraded share: delivered unchecked, the share of calls no worse than the student alone."""
    ndr_low: float | None = None
    ndr_high: float | None = None
    priced: int = 0
    alone_usd: float | None = None
    """The student alone's price, summed over the ``priced`` calls."""
    unchecked_saved_usd_per_call: float | None = None
    """Mean of (student alone - probe, teacher and guided answer): + saved, - spent."""
    unchecked_vs_alone: float | None = None
    checked_saved_usd_per_call: float | None = None
    """Mean of (student alone - everything ``strict`` spends): + saved, - spent."""
    checked_vs_alone: float | None = None


class FamilyGate(BaseModel):
    """The learned gate's view of a family, from the replayed records (module docstring)."""

    state: GateState
    p_gain: float
    p_effect: float
    evidence: float
    """The discounted number of counted outcomes behind the two probabilities."""
    mean_net_tokens: float | None = None
    student_model: str | None = None
    """The gate keeps evidence per student model: this family's most frequent one."""


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
    estimated_calls: int = 0
    tokens_saved_estimated: int = 0
    net_tokens_estimated: int = 0
    cost_saved_usd: float | None = None
    """Net dollars against the student alone, over ``dollar_calls``: positive = saved."""
    cost_saved_estimated_usd: float | None = None
    """The part of ``cost_saved_usd`` whose student-alone price was estimated."""
    student_alone_cost_usd: float | None = None
    cost_vs_alone: float | None = None
    """What the ``dollar_calls`` cost / what the student alone would have (1.0: the same)."""
    dollar_calls: int = 0
    dollar_calls_estimated: int = 0
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
    compared: int = 0
    improved: Rate = Field(default_factory=Rate)
    degraded: Rate = Field(default_factory=Rate)
    unchanged: Rate = Field(default_factory=Rate)
    delivered_improvement: Rate = Field(default_factory=Rate)
    delivered_degradation: Rate = Field(default_factory=Rate)
    net_tokens_per_call: float | None = None
    gate_skipped: int = 0
    budget_exhausted: int = 0
    """Calls run untaught because the day's teaching budget was spent (or could not be read)."""
    shadow: ShadowSummary | None = None
    """Groups with ``policy: shadow`` calls: what teaching would have delivered."""
    reused_family: int = 0
    reused_session: int = 0
    teacher_calls_avoided: int = 0
    reused_from: dict[str, int] = Field(default_factory=dict)
    """``reuse: family``: the calls whose guidance was reused, and how many calls reused it."""
    gate: FamilyGate | None = None
    """Family groups only (module docstring)."""
    label: str | None = None
    """Derived (``f:``) family groups only, when the ledger kept texts (``store_texts``): the
    masked start of the template (``family_label``), so a reader can tell families apart."""


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
    gate_mode: str | None = None
    """The configured ``gate`` (``always``/``learned``); the families' ``gate`` is what the
    learned gate would decide either way."""
    gate_records: int = 0
    """How many of the records were replayed for the families' ``gate``."""
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


DEFAULT_AUDIT_RATE = 0.1
_AUDIT = re.compile(r'"audit":(null|\{[^{}]*\})')
_SHADOW = re.compile(r'"shadow":(null|\{[^{}]*\})')
_REUSED_FROM = re.compile(r'"reused_from":(null|"[0-9A-Za-z_-]*")')
_REASONS = {r.value: r for r in Reason}
_NOW = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Learning:
    """What one record says about teaching (module docstring), read once per record."""

    outcome: Outcome | None = None
    """The outcome if the gate counts the call (``compared``), else None."""
    delivered_guided: bool = False
    reused: bool = False
    reused_from: str | None = None
    audit: AuditInfo | None = None
    shadow: ShadowInfo | None = None
    """A ``policy: shadow`` call's background comparison, as the ledger has it."""


def _shadow_field(report_json: str) -> ShadowInfo | None:
    """A shadow record's ``shadow`` field (flat, so found without parsing the whole report)."""
    found = _SHADOW.search(report_json)
    data = json.loads(found.group(1)) if found is not None else json.loads(report_json).get("shadow")
    return ShadowInfo.model_validate(data) if data is not None else None


def _report_fields(report_json: str) -> tuple[AuditInfo | None, bool, str | None]:
    """``audit``, ``guidance_reused`` and ``reused_from`` of a record's report.

    ``model_dump_json`` writes compact JSON in field order, and a key's quotes inside a
    string value are escaped, so ``"audit":null`` can only be the field itself: the common
    record (no audit, nothing reused) is answered without parsing. Anything unexpected is
    parsed in full."""
    if '"audit":null' in report_json and '"guidance_reused":false' in report_json:
        return None, False, None
    audit_m, from_m = _AUDIT.search(report_json), _REUSED_FROM.search(report_json)
    reused = '"guidance_reused":true' in report_json
    if audit_m is None or from_m is None or (not reused and '"guidance_reused":false' not in report_json):
        data = json.loads(report_json)
        audit_data, reused, reused_from = data.get("audit"), bool(data.get("guidance_reused")), data.get("reused_from")
    else:
        audit_data = json.loads(audit_m.group(1))
        reused_from = json.loads(from_m.group(1))
    audit = AuditInfo.model_validate(audit_data) if audit_data is not None else None
    return audit, reused, reused_from


def light_report(r: LedgerRecord, learning: Learning) -> CallReport:
    """The parts of a record's ``CallReport`` the gate reads, without validating the JSON."""
    return CallReport.model_construct(
        call_id=r.call_id, created_at=_NOW, student_model=r.student_model, policy=r.policy,
        task_family=r.task_family, decision=r.decision, reason=_REASONS[r.reason],
        audit=learning.audit, shadow=learning.shadow, guidance_reused=learning.reused,
        reused_from=learning.reused_from,
        guidance=None, net_tokens=r.net_tokens, tokens_saved=r.tokens_saved, latency_ms={}, errors=[],
        usage=UsageByRole(probe=Usage(calls=_calls(r, "probe")), teacher=Usage(calls=_calls(r, "teacher"))),
        learn='"learn":false' not in r.report_json,
    )


def _calls(r: LedgerRecord, role: str) -> int:
    return int(r.tokens.get(role, {}).get("calls", 0))


def learn(records: Sequence[LedgerRecord], audit_rate: float = DEFAULT_AUDIT_RATE) -> list[Learning]:
    """Each record's ``Learning``: ``counted_outcome`` (the gate's own rule) of its report,
    memoised on what that rule reads, so most records build no ``CallReport``."""
    memo: dict[tuple[Any, ...], Outcome | None] = {}
    out = []
    for r in records:
        audit, reused, reused_from = _report_fields(r.report_json)
        shadow = _shadow_field(r.report_json) if r.policy == "shadow" else None
        partial = Learning(reused=reused, reused_from=reused_from, audit=audit, shadow=shadow)
        if r.reason not in _REASONS:  # a reason this version does not know compared nothing it can read
            outcome = None
        elif r.policy == "audit" and audit is None:  # the audit's coin: drawn from the call id
            outcome = counted_outcome(light_report(r, partial), audit_rate)
        else:
            tried = bool(_calls(r, "probe") or _calls(r, "teacher") or reused_from)
            key = (r.policy, r.reason, tried,
                   None if audit is None else (audit.sampled, audit.winner, audit.degraded),
                   None if shadow is None else shadow.reason)
            if key not in memo:
                memo[key] = counted_outcome(light_report(r, partial), audit_rate)
            outcome = memo[key]
        out.append(Learning(outcome, r.decision == "guided", reused, reused_from, audit, shadow))
    return out


@lru_cache(maxsize=4096)
def _interval(count: int, n: int) -> tuple[float, float]:
    return beta_interval(count, n - count)


def rate(count: int, n: int) -> Rate:
    if n == 0:
        return Rate(count=count)
    low, high = _interval(count, n)
    # At 0 of n (n of n) the equal-tailed interval would leave out the observed 0% (100%):
    # its bound there is the boundary itself, as for the Jeffreys interval (Brown, Cai and
    # DasGupta, 2001).
    return Rate(count=count, rate=count / n, low=0.0 if count == 0 else low, high=1.0 if count == n else high)


def _learning_figures(g: GroupSummary, learnings: Iterable[Learning]) -> None:
    counts = dict.fromkeys(OUTCOMES, 0)
    better = worse = by_session = 0
    reused_from: dict[str, int] = {}
    for x in learnings:
        if x.outcome is not None:
            counts[x.outcome] += 1
            better += x.outcome == "improved" and x.delivered_guided
            worse += x.outcome == "degraded" and x.delivered_guided
        if x.reused:
            if x.reused_from is not None:
                reused_from[x.reused_from] = reused_from.get(x.reused_from, 0) + 1
            else:
                by_session += 1
    n = g.compared = sum(counts.values())
    g.improved, g.degraded, g.unchanged = (rate(counts[k], n) for k in OUTCOMES)
    g.delivered_improvement, g.delivered_degradation = rate(better, n), rate(worse, n)
    g.reused_from, g.reused_family, g.reused_session = reused_from, sum(reused_from.values()), by_session
    g.teacher_calls_avoided = g.reused_family + g.reused_session


def summarize_group(records: list[LedgerRecord], key: str = "all",
                    learnings: Sequence[Learning] | None = None) -> GroupSummary:
    """The figures of one group; ``learnings``: ``learn(records)``, when already read.

    Sums are kept in locals and set on the model once: a pydantic attribute write costs
    more than the addition, and a big ledger makes millions of them."""
    decisions: dict[str, int] = dict.fromkeys(DECISIONS, 0)
    reasons: dict[str, int] = {}
    parts = ("prompt", "completion", "calls", "reasoning", "cached")
    role_sums = {role: dict.fromkeys(parts, 0) for role in ROLES}
    failed = measured = saved = net = base_completion = base_total = 0
    unpriced = tried = teacher_errors = taught = skipped = exhausted = 0
    cost: float | None = None
    first: datetime | None = None
    last: datetime | None = None
    for r in records:
        failed += r.failed
        decisions[r.decision] = decisions.get(r.decision, 0) + 1
        reasons[r.reason] = reasons.get(r.reason, 0) + 1
        tokens = r.tokens
        for role, acc in role_sums.items():
            t = tokens.get(role)
            if t:
                for part in parts:
                    acc[part] += t.get(part, 0)
        figures = _measured(r)
        if figures is not None:
            base = tokens.get("baseline", {})
            measured += 1
            saved += figures[0]
            net += figures[1]
            base_completion += base.get("completion", 0)
            base_total += base.get("prompt", 0) + base.get("completion", 0)
        if r.cost_usd is None:
            unpriced += 1
        else:
            cost = (cost or 0.0) + r.cost_usd
        failed_teacher = r.reason in TEACHER_FAILURES
        if failed_teacher or tokens.get("teacher", {}).get("calls", 0) > 0:
            tried += 1
            teacher_errors += failed_teacher
        taught += tokens.get("guided", {}).get("calls", 0) > 0
        skipped += r.reason == "gate_skipped"
        exhausted += r.reason == "budget_exhausted"
        first = r.created_at if first is None else min(first, r.created_at)
        last = r.created_at if last is None else max(last, r.created_at)
    g = GroupSummary(
        key=key, calls=len(records), failed=failed, decisions=decisions, reasons=reasons,
        tokens={role: RoleTokens(**acc) for role, acc in role_sums.items()},
        measured_calls=measured, tokens_saved=saved, net_tokens=net,
        baseline_completion_tokens=base_completion, baseline_total_tokens=base_total,
        cost_usd=cost, cost_unknown_calls=unpriced, teacher_tried=tried, teacher_errors=teacher_errors,
        taught=taught, gate_skipped=skipped, budget_exhausted=exhausted, first_call=first, last_call=last,
    )
    g.total_tokens = sum(t.total for t in g.tokens.values())
    g.saved_rate = _ratio(g.tokens_saved, g.baseline_completion_tokens)
    g.net_rate = _ratio(g.net_tokens, g.baseline_total_tokens)
    g.teacher_error_rate = _ratio(g.teacher_errors, g.teacher_tried)
    g.taught_share = _ratio(g.taught, g.calls)
    g.error_rate = _ratio(g.failed, g.calls)
    g.net_tokens_per_call = _ratio(g.net_tokens, g.measured_calls)
    _counterfactual_figures(g, records)
    learnings = learn(records) if learnings is None else learnings
    _learning_figures(g, learnings)
    g.shadow = shadow_summary(records, learnings)
    g.latency_ms = distribution(r.latency_ms for r in records)
    g.teacher_latency_ms = distribution(
        r.teacher_latency_ms for r in records if r.teacher_latency_ms is not None
    )
    return g


def _measured(r: LedgerRecord) -> tuple[int, int] | None:
    """``(tokens_saved, net_tokens)`` when they are against the call's own baseline (records
    written before the basis existed had figures only then); else None."""
    if r.tokens_saved is None or r.net_tokens is None or r.counterfactual_basis not in (None, "measured"):
        return None
    return r.tokens_saved, r.net_tokens


def _counterfactual_figures(g: GroupSummary, records: Iterable[LedgerRecord]) -> None:
    """The estimated token sums and the dollar figures (module docstring)."""
    estimated = saved = net = dollar_calls = dollar_estimated = 0
    saved_usd = saved_estimated_usd = alone_usd = 0.0
    for r in records:
        guessed = r.counterfactual_basis == "estimated"
        if guessed and r.tokens_saved is not None and r.net_tokens is not None:
            estimated, saved, net = estimated + 1, saved + r.tokens_saved, net + r.net_tokens
        if r.cost_saved_usd is not None and r.student_alone_cost_usd is not None:
            dollar_calls += 1
            saved_usd += r.cost_saved_usd
            alone_usd += r.student_alone_cost_usd
            if guessed:
                dollar_estimated += 1
                saved_estimated_usd += r.cost_saved_usd
    g.estimated_calls, g.tokens_saved_estimated, g.net_tokens_estimated = estimated, saved, net
    g.dollar_calls, g.dollar_calls_estimated = dollar_calls, dollar_estimated
    if dollar_calls:
        g.cost_saved_usd, g.student_alone_cost_usd = saved_usd, alone_usd
        g.cost_saved_estimated_usd = saved_estimated_usd
        g.cost_vs_alone = _ratio(alone_usd - saved_usd, alone_usd)


def shadow_summary(records: Sequence[LedgerRecord], learnings: Sequence[Learning]) -> ShadowSummary | None:
    """What teaching would have delivered on the group's shadow calls (module docstring);
    None when it has none."""
    shadows = [x for r, x in zip(records, learnings, strict=True) if r.policy == "shadow"]
    if not shadows:
        return None
    out = ShadowSummary(calls=len(shadows))
    counts = dict.fromkeys(OUTCOMES, 0)
    priced: list[tuple[float, float, float]] = []
    for x in shadows:
        info = x.shadow
        if info is None or not info.sampled:
            continue
        out.sampled += 1
        out.busy += info.skipped == "busy"
        if x.outcome is not None:
            counts[x.outcome] += 1
        if info.alone_usd is not None and info.unchecked_usd is not None and info.checked_usd is not None:
            priced.append((info.alone_usd, info.unchecked_usd, info.checked_usd))
    n = out.compared = sum(counts.values())
    out.improved, out.degraded, out.unchanged = (rate(counts[k], n) for k in OUTCOMES)
    if n:
        out.accuracy_change, out.accuracy_change_low, out.accuracy_change_high = change_interval(
            counts["improved"], counts["degraded"], n)
        assert out.degraded.rate is not None and out.degraded.low is not None and out.degraded.high is not None
        out.ndr, out.ndr_low, out.ndr_high = 1 - out.degraded.rate, 1 - out.degraded.high, 1 - out.degraded.low
    if priced:
        alone = sum(p[0] for p in priced)
        out.priced, out.alone_usd = len(priced), alone
        out.unchecked_saved_usd_per_call = sum(p[0] - p[1] for p in priced) / len(priced)
        out.checked_saved_usd_per_call = sum(p[0] - p[2] for p in priced) / len(priced)
        out.unchecked_vs_alone = _ratio(sum(p[1] for p in priced), alone)
        out.checked_vs_alone = _ratio(sum(p[2] for p in priced), alone)
    return out


def change_interval(improved: int, degraded: int, n: int) -> tuple[float, float, float]:
    """The observed change ``(improved - degraded) / n`` and its approximate 95% interval:
    normal, centred on it, with the variance of (pi - pd) under the Dirichlet posterior from
    a uniform prior (so never zero, even at 0 or n of n), clipped to [-1, 1]."""
    a_i, a_d = 1.0 + improved, 1.0 + degraded
    a0 = n + 3.0
    var = (a_i * (a0 - a_i) + a_d * (a0 - a_d) + 2 * a_i * a_d) / (a0 * a0 * (a0 + 1))
    change, half = (improved - degraded) / n, 1.959964 * math.sqrt(var)
    return change, max(-1.0, change - half), min(1.0, change + half)


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


def grouped(records: list[LedgerRecord], group_by: GroupBy, learnings: Sequence[Learning] | None = None,
            gates: dict[str, FamilyGate] | None = None) -> list[GroupSummary]:
    """One summary per group, sorted by key; ``gates``: the family groups' gate views."""
    key = group_key(group_by)
    learnings = learn(records) if learnings is None else learnings
    buckets: dict[str, tuple[list[LedgerRecord], list[Learning]]] = {}
    for r, x in zip(records, learnings, strict=True):
        rs, xs = buckets.setdefault(key(r), ([], []))
        rs.append(r)
        xs.append(x)
    out = [summarize_group(rs, k, xs) for k, (rs, xs) in sorted(buckets.items())]
    if group_by == "family":
        for g in out:
            if gates is not None:
                g.gate = gates.get(g.key) if g.key != NO_FAMILY else None
            if g.key.startswith(FINGERPRINT_PREFIX):
                g.label = next((family_label(r.prompt_text) for r in buckets[g.key][0] if r.prompt_text), None)
    return out


def family_label(prompt_text: str) -> str | None:
    """The masked start of a derived family's template, from a call's stored prompt (the JSON
    of its messages): the system text, else the last user message, normalised as the
    fingerprint reads it (``teaching/families.py``: quoted strings, numbers, ids, dates, URLs
    and e-mail addresses masked), cut at ``LABEL_CHARS``.

    Only ledgers written with ``store_texts`` have the prompt, and so a label: the ledger
    holds nothing else of the template, and a label stored beside every record would keep
    the user's template text where they chose to keep none. A tag (``t:``) names itself."""
    try:
        messages = json.loads(prompt_text)
    except ValueError:
        return None
    system: list[str] = []
    user = ""
    for m in messages if isinstance(messages, list) else ():
        if isinstance(m, dict) and m.get("role") in ("system", "developer"):
            system.append(text_of(m.get("content")))
        elif isinstance(m, dict) and m.get("role") == "user":
            user = text_of(m.get("content"))
    # Masked whole, then cut: cut first, a quoted string split by the cut would lose its
    # closing quote and show unmasked. ``windowed`` bounds the work on a long prompt.
    text = windowed("\n".join(system)) or windowed(user)
    if not text:
        return None
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1].rstrip() + "…"


def family_gates(records: Sequence[LedgerRecord], learnings: Sequence[Learning], rule: GateRule,
                 audit_rate: float, last: int) -> dict[str, FamilyGate]:
    """Every family's gate view after replaying the last ``last`` records (module docstring)."""
    tail = range(max(0, len(records) - last), len(records)) if last > 0 else range(0)
    # Only counted calls change the evidence (``TeachingGate.observe``), so only they are built.
    reports = (light_report(records[i], learnings[i]) for i in tail
               if records[i].task_family and learnings[i].outcome is not None)
    gate = TeachingGate(MemoryFamilies(), rule, learned=True, reuse=False, audit_rate=audit_rate, log_changes=False)
    evidence = replay(reports, gate)
    # The gate keeps evidence per student model (``gate_key``): a family shows the view of
    # the model with most of its replayed, counted calls (what the gate decides on now),
    # else of the model that made most of its calls; ``student_model`` names it. The live gate
    # keeps each tenant's evidence apart; the replayed reports carry no tenant, so this view
    # pools every tenant's calls (``DEFAULT_TENANT``): the ledger's reader sees them all.
    counted: dict[str, Counter[str]] = {}
    for i in tail:
        if records[i].task_family and learnings[i].outcome is not None:
            counted.setdefault(records[i].task_family or "", Counter())[records[i].student_model] += 1
    calls: dict[str, Counter[str]] = {}
    for r in records:
        if r.task_family:
            calls.setdefault(r.task_family, Counter())[r.student_model] += 1
    calls.update(counted)
    out = {}
    for family, models in calls.items():
        model = models.most_common(1)[0][0]
        a = assess(evidence.get(gate_key(model, family, DEFAULT_TENANT)), rule)
        out[family] = FamilyGate(state=a.state, p_gain=a.p_gain, p_effect=a.p_effect, evidence=a.evidence,
                                 mean_net_tokens=a.mean_net_tokens, student_model=model)
    return out


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
    gate_rule: GateRule | None = None,
    audit_rate: float = DEFAULT_AUDIT_RATE,
    gate_records: int = 5000,
    gate_mode: str | None = None,
) -> Summary:
    """``records`` oldest first (as ledgers return them); ``gate_rule``, ``audit_rate`` and
    ``gate_records`` are the configuration's (``gate_*``, ``audit_rate``, ``gate_rebuild``)."""
    learnings = learn(records, audit_rate)
    rule = gate_rule or GateRule()
    gates = family_gates(records, learnings, rule, audit_rate, gate_records)
    return Summary(
        ledger=ledger,
        filters=dict(filters or {}),
        group_by=group_by,
        pending_spooled=pending_spooled,
        overall=summarize_group(records, learnings=learnings),
        groups=grouped(records, group_by, learnings, gates) if group_by else [],
        daily=grouped(records, "day", learnings),
        families=grouped(records, "family", learnings, gates),
        gate_mode=gate_mode,
        gate_records=min(len(records), max(gate_records, 0)),
        top_calls=top_calls(records, top),
        latencies_ms=[r.latency_ms for r in records],
        teacher_latencies_ms=[r.teacher_latency_ms for r in records if r.teacher_latency_ms is not None],
    )
