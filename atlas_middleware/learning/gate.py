"""The learned teaching gate and family guidance reuse: per task family, from its evidence.

**The evidence.** Every call that compared the guided answer with the student's own, in a
way that is an unbiased sample of the family's calls, adds its outcome (``outcomes.py``) to
the family's ``FamilyEvidence`` in the state backend (memory, or Redis for a fleet):

* ``strict`` calls, every one (the baseline runs beside every guided answer);
* ``audit`` calls in the audit sample (the call-id coin, ``audit_rate``), and none other:
  counting the calls where the teacher saw a strong student but only a sample of the
  guided ones would bias the family towards "nothing changes";
* ``shadow`` calls in the shadow sample whose background comparison ran (``strict``'s, made
  after the student's own answer was delivered: ``CallReport.shadow``);
* ``verify`` calls are never counted as they come: only an answer that failed its grade is
  compared, a sample biased towards degradation. Under ``gate: learned`` an ``audit_rate``
  share of ``verify`` calls is *measured*: run as ``strict`` and counted.

Old evidence is discounted (each new outcome multiplies the counts by ``1 - 1/horizon``),
so a family whose behaviour changes (a new student, a new prompt) is re-judged on its
recent calls.

**The posterior.** The three outcome rates (improved ``pi``, degraded ``pd``, unchanged) get
a Dirichlet posterior: a uniform prior (one pseudo-call each) plus the discounted counts.
Two probabilities follow exactly from its Beta marginals (``posterior.py``):

* ``p_gain`` = P(pi > pd): teaching helps more calls than it hurts. Under the Dirichlet,
  pi / (pi + pd) ~ Beta(1 + improved, 1 + degraded), so this is one incomplete beta.
* ``p_effect`` = P(pi > min_gain): teaching improves at least ``min_gain`` of the calls.
  pi ~ Beta(1 + improved, 2 + degraded + unchanged).

**The rule.** A family with fewer than ``min_evidence`` (discounted) outcomes is
``learning`` and taught. Otherwise it is **closed** when ``p_gain < threshold`` (teaching
hurts) or ``p_effect < threshold`` (teaching changes too little to pay for probe and
teacher), or when its mean net tokens per measured call exceed ``max_net_tokens`` while
``p_gain < 1 - threshold`` (costly, and no gain measured with that confidence); a closed
family **re-opens** when both probabilities reach ``reopen`` (above ``threshold``:
hysteresis, so a family at the boundary does not flap) and the budget rule no longer holds.
A closed family's calls skip probe and teacher (reason ``gate_skipped``), except an
``explore`` share (an independent call-id coin) that is taught, run as ``strict`` so that it
measures, and keeps the evidence coming: that is how a closed family is re-opened.

The rule is the same under every policy on purpose. Under ``strict`` the judge delivers the
student's own answer when it sees the guided one is worse, so one could teach any family
whose improvements pay; but the judge is wrong some of the time, and a family where
guidance is more often worse than better is where its mistakes reach the user. Closing such
a family forgoes the few calls guidance did fix there (``bench/learned_gate.py`` measures
both sides).

**Reuse** (``reuse: family``): fresh guidance whose call came out ``improved`` is kept as the
family's guidance; the family's next calls use it instead of probe and teacher
(``CallReport.reused_from`` names the call that wrote it), are compared like any call (every
one under ``strict``, the audit sample under ``audit``), and it is dropped the first time it
loses (``judge_preferred_baseline``, an invalid tool call, ``no_evidence``, or a degraded
audit). A newer winner replaces it.

Evidence is kept per tenant, student model and family (``gate_key``): what teaching does
for a task depends on the student; and the kept guidance is the teacher's text about one
caller's task, which no other caller may be given (``_tenants.py``). The evidence holds no
text, but it is scoped too: the gate's state and evidence count are on every report, and
shared evidence would tell one tenant that others send the same template. Reports without a
tenant (ledger records written before tenants existed) count for ``DEFAULT_TENANT`` and
never leave guidance to reuse: nothing says whose it was. Nothing here waits on anything but
the state backend, and a state failure never fails a call (``state/fallback.py``; ``Atlas``
guards the rest).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .._redact import secret_logger
from .._tenants import DEFAULT_TENANT, scoped
from ..report import GUIDANCE_LOST, AdaptiveInfo, CallReport, GateInfo, Mode, Reason
from ..state.base import FamilyEvidence, FamilyStore
from ..teaching.flow import sampled
from .adaptive import POOLED, RARE, AdaptiveRule
from .modes import ModeSelector
from .outcomes import Outcome, outcome_of
from .posterior import beta_cdf

log = secret_logger("atlas_middleware.learning")

GateMode = Literal["always", "learned"]
ReuseMode = Literal["none", "family"]
GateState = Literal["learning", "open", "closed"]

_SEEN = 100_000  # call ids remembered against learning twice from one call
_EXPLORE_SALT = "explore:"
_MEASURE_SALT = "measure:"


@dataclass(frozen=True)
class GateRule:
    """The gate's settings (``AtlasConfig.gate_*``), validated there."""

    threshold: float = 0.05
    reopen: float = 0.2
    min_gain: float = 0.05
    explore: float = 0.1
    horizon: float = 200.0
    min_evidence: float = 10.0
    max_net_tokens: float | None = None

    @property
    def discount(self) -> float:
        return 1.0 - 1.0 / self.horizon


@dataclass(frozen=True)
class Assessment:
    """What the posterior says about one family."""

    state: GateState
    p_gain: float
    p_effect: float
    evidence: float
    mean_net_tokens: float | None


def probabilities(e: FamilyEvidence, rule: GateRule) -> tuple[float, float]:
    """``(p_gain, p_effect)`` of the family's posterior (module docstring)."""
    p_gain = 1.0 - beta_cdf(0.5, 1.0 + e.improved, 1.0 + e.degraded)
    p_effect = 1.0 - beta_cdf(rule.min_gain, 1.0 + e.improved, 2.0 + e.degraded + e.unchanged)
    return p_gain, p_effect


def _mean_net(e: FamilyEvidence) -> float | None:
    return e.net_tokens / e.net_calls if e.net_calls > 0 else None


def should_close(e: FamilyEvidence, rule: GateRule) -> bool:
    """The gate's next state for a family whose evidence is ``e`` (``e.closed``: its state now)."""
    if e.outcomes < rule.min_evidence:
        return False
    p_gain, p_effect = probabilities(e, rule)
    mean_net = _mean_net(e)
    over_budget = rule.max_net_tokens is not None and mean_net is not None and mean_net > rule.max_net_tokens
    if over_budget and p_gain < 1.0 - rule.threshold:
        return True
    if e.closed:
        return not (p_gain >= rule.reopen and p_effect >= rule.reopen)
    return p_gain < rule.threshold or p_effect < rule.threshold


def assess(e: FamilyEvidence | None, rule: GateRule) -> Assessment:
    e = e or FamilyEvidence()
    p_gain, p_effect = probabilities(e, rule)
    state: GateState = "closed" if e.closed else "learning" if e.outcomes < rule.min_evidence else "open"
    return Assessment(state, p_gain, p_effect, e.outcomes, _mean_net(e))


@dataclass
class Admission:
    """What the gate decided for one call before it runs."""

    teach: bool = True
    guidance: str | None = None
    """The family's reusable guidance (``reuse: family``): no probe, no teacher."""
    reused_from: str | None = None
    measure: bool = False
    """Run this call as ``strict`` so that it measures (an exploration or a measured
    ``verify`` call)."""
    info: GateInfo | None = None
    mode: Mode | None = None
    """``adapt``: the adaptive policy's mode for the family (``learning/adaptive.py``)."""
    adaptive: AdaptiveInfo | None = None
    policy: str | None = None
    """``adapt``: the policy the call runs under (``strict`` when measured or explored)."""
    audit_rate: float | None = None
    """``adapt``: the audit rate of an ``audit`` call (``adaptive.audit_rate``)."""


def _info(a: Assessment, **flags: bool) -> GateInfo:
    return GateInfo(state=a.state, p_gain=round(a.p_gain, 4), p_effect=round(a.p_effect, 4),
                    evidence=round(a.evidence, 2), **flags)


class TeachingGate:
    """``admit`` before a call, ``observe`` its final report (after any audit)."""

    def __init__(self, store: FamilyStore, rule: GateRule, *, learned: bool, reuse: bool,
                 audit_rate: float, log_changes: bool = True, adaptive: AdaptiveRule | None = None,
                 adaptive_default: bool = False, available: Callable[[], bool] | None = None) -> None:
        self.store = store
        self.log_changes = log_changes
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()
        self.rule = rule
        self.learned = learned
        self.reuse = reuse
        self.audit_rate = audit_rate
        self.adaptive_rule = adaptive or AdaptiveRule()
        """The adaptive policy's rule, for calls under ``policy: adaptive`` (``adapt``)."""
        self.adaptive_default = adaptive_default
        """The configured policy is ``adaptive``: the evidence is rebuilt at start."""
        self.modes = ModeSelector(store, self.adaptive_rule, available, log_changes)

    @property
    def active(self) -> bool:
        return self.learned or self.reuse or self.adaptive_default

    def admit(self, model: str, family: str, call_id: str, policy: str,
              tenant: str = DEFAULT_TENANT) -> Admission:
        evidence = self.store.get(gate_key(model, family, tenant))
        out = Admission()
        if self.learned:
            a = assess(evidence, self.rule)
            if a.state == "closed":
                if not sampled(call_id, self.rule.explore, _EXPLORE_SALT):
                    return Admission(teach=False, info=_info(a))
                out.measure, out.info = True, _info(a, explored=True)
            else:
                out.measure = policy == "verify" and sampled(call_id, self.audit_rate, _MEASURE_SALT)
                out.info = _info(a, measured=out.measure)
        if self.reuse and evidence is not None and evidence.guidance and evidence.guidance_from:
            out.guidance, out.reused_from = evidence.guidance, evidence.guidance_from
        return out

    def adapt(self, model: str, family: str, call_id: str, tenant: str = DEFAULT_TENANT) -> Admission:
        """The adaptive policy's word on one call (``learning/adaptive.py``): the family's mode,
        the policy the call runs under, and the evidence for its report."""
        choice, evidence, info = self.modes.admit(gate_key(model, family, tenant), gate_key(model, POOLED, tenant),
                                                  call_id, gate_key(model, RARE, tenant))
        out = Admission(mode=choice.mode, adaptive=info, policy=choice.mode)
        if choice.mode == "skip":
            if not info.explored:
                return Admission(teach=False, mode="skip", adaptive=info)
            out.policy = "strict"
        elif choice.mode == "audit":
            out.audit_rate = self.adaptive_rule.audit_rate
        elif info.measured:
            out.policy = "strict"
        if self.reuse and evidence is not None and evidence.guidance and evidence.guidance_from:
            out.guidance, out.reused_from = evidence.guidance, evidence.guidance_from
        return out

    def observe(self, report: CallReport, graded: Outcome | None = None) -> None:
        """Learn from a finished call: its comparison's outcome when the gate counts it
        (``counted_outcome``), or ``graded``, the outcome of grading both answers against a
        gold answer (an evaluation grades every sample, so it is always counted)."""
        if not report.task_family or report.reason == Reason.GATE_SKIPPED:
            return
        if not self._first_time(report.call_id):
            return
        tenant = report.tenant or DEFAULT_TENANT
        key = gate_key(report.student_model, report.task_family, tenant)
        rate = self.adaptive_rule.audit_rate if report.mode is not None else self.audit_rate
        outcome = graded if graded is not None else counted_outcome(report, rate)
        # An adaptive call, or a shadow's comparison (strict's, made after delivery): the family's
        # evidence and mode, so that a family switched from shadow to adaptive starts informed.
        if report.mode is not None or report.policy == "shadow":
            if graded is not None or in_sample(report, rate):
                self.modes.observe(report, key, gate_key(report.student_model, POOLED, tenant), outcome,
                                   gate_key(report.student_model, RARE, tenant), graded=graded is not None)
        elif self.learned and outcome is not None:
            evidence = self.store.observe(key, outcome, report.net_tokens, self.rule.discount)
            closed = should_close(evidence, self.rule)
            if closed != evidence.closed:
                self.store.set_closed(key, closed)
                self._changed(key, closed, evidence)
        if self.reuse and report.tenant is not None:  # guidance whose tenant is unknown is nobody's to reuse
            self._reuse(report, key, outcome)

    def _first_time(self, call_id: str) -> bool:
        """Whether this process has not learned from ``call_id`` yet (``Atlas.learn`` twice on
        one call must not count it twice); the last ``_SEEN`` call ids are remembered."""
        with self._lock:
            if call_id in self._seen:
                return False
            self._seen[call_id] = None
            if len(self._seen) > _SEEN:
                self._seen.popitem(last=False)
            return True

    def _changed(self, family: str, closed: bool, evidence: FamilyEvidence) -> None:
        if self.log_changes:
            a = assess(evidence, self.rule)
            log.info("teaching gate %s for family %s: P(gain>0)=%.3f, P(improved>%g)=%.3f over %.1f outcomes",
                     "closed" if closed else "re-opened", family, a.p_gain, self.rule.min_gain, a.p_effect,
                     a.evidence)

    def _reuse(self, report: CallReport, family: str, outcome: Outcome | None) -> None:
        if report.reused_from is not None:
            lost = (outcome == "degraded" or report.reason in GUIDANCE_LOST
                    or (report.audit is not None and report.audit.degraded is True))
            if lost:
                self.store.drop_guidance(family, report.reused_from)
        elif report.guidance and not report.guidance_reused and outcome == "improved":
            self.store.keep_guidance(family, report.guidance, report.call_id)


def gate_key(model: str, family: str, tenant: str) -> str:
    """Where a family's evidence is kept: per tenant (``tenants.scoped``; module docstring),
    and per student model, since what teaching does for a task depends on who is taught (one
    proxy may serve a strong and a weak model alike)."""
    return scoped(tenant, f"{model}|{family}")


def counted_outcome(report: CallReport, audit_rate: float) -> Outcome | None:
    """The call's outcome if the gate counts it: an unbiased sample of its family's calls
    (module docstring); None otherwise. An ``audit`` call that never reached the audit (the
    teacher saw a strong student) is counted when the audit's own coin would have chosen it.
    A call served from an agent session's cache (its guidance, or its "strong student") is
    not a new sample: one diagnosis would be counted once per step."""
    return outcome_of(report) if in_sample(report, audit_rate) else None


def in_sample(report: CallReport, audit_rate: float) -> bool:
    """Whether the call is in its family's unbiased sample (``counted_outcome``)."""
    if not (report.usage.probe.calls or report.usage.teacher.calls or report.reused_from):
        return False  # no probe, no teacher, no family guidance: nothing about teaching was tried
    if report.policy == "strict":
        return True
    if report.policy == "shadow":  # its sampled calls, whose background comparison ran
        return report.shadow is not None and report.shadow.reason is not None
    if report.policy == "audit":
        return report.audit.sampled if report.audit is not None else sampled(report.call_id, audit_rate)
    return False
