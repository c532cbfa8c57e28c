"""The per-call report: what was delivered, why, and what it cost.

Sign conventions, so that nobody has to guess:

* ``tokens_saved`` = completion tokens of the student-alone baseline minus completion
  tokens of the delivered answer. Positive means the delivered answer was shorter.
* ``net_tokens`` = every token spent on the call (probe, teacher, guided, baseline, judge;
  prompt and completion) minus the tokens the student alone spent (the baseline's total).
  Positive means the middleware cost tokens, negative means it saved them.
* ``cost_usd`` = summed prices of every call (each role priced by its own model: LiteLLM's
  cost map, or the LiteLLM custom prices given for it, ``pricing.py``); ``None`` when any
  price is unknown.
* ``student_alone_cost_usd`` = what the student alone would have cost: the price of the
  call's own baseline.
* ``cost_saved_usd`` = ``student_alone_cost_usd - cost_usd``: positive means the call cost
  less than the student alone would have, net of everything spent (teacher, judge, probe,
  the baseline itself); negative means teaching cost money.

The student-alone figures (the baseline) are the *counterfactual*, and
``counterfactual_basis`` says where it came from: ``measured`` when this call ran a
baseline, ``estimated`` when it did not (``verify`` calls that passed, ``audit`` calls not
sampled, ``off``) and its family had measured baselines of the same student: then the
family's mean baseline stands in (``state/baselines.py``) and ``counterfactual_samples`` is
the (effective) number of measured baselines behind the mean. ``None`` when neither: the
four figures are then ``None`` too. An estimate is never reported as ``measured``.

A reasoning model's thinking is part of its completion tokens (``Usage.reasoning_tokens``
says how many), so both figures include it, once.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .usage import UsageByRole

Decision = Literal["guided", "baseline", "student_only"]
Counterfactual = Literal["measured", "estimated"]


class Reason(StrEnum):
    """Why the delivered answer was delivered."""

    AGREEMENT = "agreement"  # guided and baseline agree: the cheaper one, no judge
    JUDGE_GUIDED = "judge_preferred_guided"
    JUDGE_BASELINE = "judge_preferred_baseline"
    JUDGE_TIE = "judge_tie"  # equal quality: the cheaper one
    NO_EVIDENCE = "no_evidence"  # the answers differ and nothing says which is right: the baseline
    JUDGE_ERROR = "judge_error"  # the judge failed: the baseline wins
    INVALID_TOOL_CALL = "guided_invalid_tool_call"
    VERIFIED = "verified"  # verify: the guided answer passed the judge
    POLICY_OFF = "policy_off"
    AUDIT_UNCHECKED = "audit_unchecked"  # audit: delivered guided, not sampled
    AUDIT_SAMPLED = "audit_sampled"  # audit: delivered guided, compared in the background
    STRONG_STUDENT = "strong_student"  # the teacher judged no guidance needed
    NO_GUIDANCE = "no_guidance"  # the teacher wrote empty guidance
    TEACHER_TIMEOUT = "teacher_timeout"
    TEACHER_ERROR = "teacher_error"
    TEACHER_UNPARSEABLE = "teacher_unparseable"
    TEACHER_TRUNCATED = "teacher_truncated"  # cut at teacher_max_tokens before any guidance
    GUIDANCE_LEAKS_ANSWER = "guidance_leaks_answer"  # withheld under leak_action (see leaks.py)
    PROBE_ERROR = "probe_error"
    PROBE_EMPTY = "probe_empty"  # the student's probe held no plan; the teacher was not asked
    GUIDED_ERROR = "guided_error"  # the guided call failed: the baseline
    BASELINE_ERROR = "baseline_error"  # the baseline failed: the guided answer
    STUDENT_ERROR = "student_error"  # nothing could be delivered; the student's error raised
    OPTED_OUT = "opted_out"  # the request asked for no teaching
    CIRCUIT_OPEN = "circuit_open"  # the teacher kept failing; skipped without calling it
    GATE_SKIPPED = "gate_skipped"  # the learned gate: teaching this task family does not pay
    BUDGET_EXHAUSTED = "budget_exhausted"  # the day's teaching budget is spent (or cannot be read)
    SHADOW_SAMPLED = "shadow_sampled"  # shadow: the student's own answer; teaching ran after, in the background
    SHADOW_UNSAMPLED = "shadow_unsampled"  # shadow: the student's own answer; not in the sample


TEACHER_PATH_FAILURES = frozenset({
    Reason.TEACHER_TIMEOUT, Reason.TEACHER_ERROR, Reason.TEACHER_UNPARSEABLE, Reason.TEACHER_TRUNCATED,
    Reason.GUIDANCE_LEAKS_ANSWER, Reason.PROBE_ERROR, Reason.PROBE_EMPTY,
})
"""Reasons that mean the guidance path was tried and failed, so the call fell back."""

GUIDANCE_LOST = frozenset({Reason.JUDGE_BASELINE, Reason.INVALID_TOOL_CALL, Reason.NO_EVIDENCE})
"""Reasons that mean reused guidance lost its comparison (or nothing showed it helped): a
session's and a family's reused guidance are dropped on them."""


class ErrorInfo(BaseModel):
    model_config = ConfigDict(defer_build=True)

    role: str
    type: str
    message: str


class DiagnosisInfo(BaseModel):
    model_config = ConfigDict(defer_build=True)

    level: int | None = None
    text: str = ""


class JudgeInfo(BaseModel):
    model_config = ConfigDict(defer_build=True)

    name: str
    winner: Literal["guided", "baseline", "tie", "undecided"] | None = None
    """``undecided``: the judge could not tell (the answer judge on two different
    answers, the teacher judge changing its verdict with the order); the baseline wins."""
    scores: dict[str, float] = Field(default_factory=dict)
    detail: str = ""


class AuditInfo(BaseModel):
    model_config = ConfigDict(defer_build=True)

    sampled: bool = False
    winner: Literal["guided", "baseline", "tie"] | None = None
    degraded: bool | None = None
    """True when the baseline was judged better than the delivered guided answer."""


class ShadowInfo(BaseModel):
    """``policy: shadow``: what teaching would have delivered, found after the student's own
    answer was delivered (docs/policies.md#shadow-the-first-step). Filled in when the background
    work ends: the caller's copy of the report has ``sampled`` only; the ledger's has the rest."""

    model_config = ConfigDict(defer_build=True)

    sampled: bool = True
    """Chosen for teaching in the background (``shadow.rate``, a coin drawn from the call id)."""
    skipped: Literal["busy"] | None = None
    """``busy``: sampled, but ``shadow.max_pending`` background comparisons were running: not run."""
    reason: Reason | None = None
    """The reason ``strict`` would have given: ``judge_preferred_guided``, ``agreement``,
    ``teacher_timeout``, ...; None until the background work ends, or when it did not run."""
    decision: Decision | None = None
    """What ``strict`` would have delivered: ``guided``, ``baseline`` or ``student_only``."""
    alone_usd: float | None = None
    """The student's own answer's price (the call that was delivered)."""
    unchecked_usd: float | None = None
    """What the call would have cost taught without a comparison (``audit`` unsampled, ``off``):
    probe + teacher + the guided answer (the student's own where no guidance came)."""
    checked_usd: float | None = None
    """What it would have cost under ``strict``: everything it spent (probe, teacher, guided,
    the student's own answer, judge)."""


class BudgetInfo(BaseModel):
    """Why a call ran untaught under a teaching budget (``budget``; reason ``budget_exhausted``)."""

    model_config = ConfigDict(defer_build=True)

    why: Literal["total", "family", "state_unavailable"]
    """``total``: the day's ``budget.daily_usd`` is spent; ``family``: the family's
    ``budget.family_daily_usd``; ``state_unavailable``: the shared state that counts the
    spend could not be read, and a budget fails safe (untaught)."""
    spent_usd: float | None = None
    """The UTC day's teaching spend counted against that cap when the call came; None when unknown."""
    limit_usd: float | None = None
    """The cap (US dollars per UTC day); None for ``state_unavailable``."""


class GateInfo(BaseModel):
    """The learned gate's view of the call's task family when the call came (``gate: learned``)."""

    model_config = ConfigDict(defer_build=True)

    state: Literal["learning", "open", "closed"]
    """``learning``: too little evidence yet; ``closed``: teaching the family does not pay."""
    p_gain: float
    """P(teaching improves more of the family's calls than it degrades), from its posterior."""
    p_effect: float
    """P(teaching improves more than ``gate_min_gain`` of the family's calls)."""
    evidence: float
    """The (discounted) number of compared calls behind the two probabilities."""
    explored: bool = False
    """A closed family's call taught anyway (``gate_explore``), run as ``strict`` to measure."""
    measured: bool = False
    """A ``verify`` call run as ``strict`` so that the gate learns from it (``audit_rate``)."""


Mode = Literal["skip", "audit", "verify", "strict"]
"""The adaptive policy's modes (``learning/adaptive.py``), from the least checking to the most."""


class AdaptiveInfo(BaseModel):
    """The evidence behind the adaptive policy's mode for the call's family (``policy: adaptive``),
    as it stood when the call came. ``CallReport.mode`` is the mode chosen."""

    model_config = ConfigDict(defer_build=True)

    why: Literal["learning", "prior", "rare", "prospect", "bound", "checked", "settling", "degraded", "no_gain",
                 "state_unavailable"]
    """``learning``: too little evidence of its own (strict); ``prior``: little of its own, and
    the student's other families say teaching does not pay (skip); ``rare``: little of its own, and
    the student's rare families as a class bound verify's degradation rate within the target
    (verify, the class's figures shown as borrowed); ``prospect``: teaching does
    not pay under strict, but audit would cost less than skipping and the family's evidence so
    far could admit it soon (strict, to learn); ``bound``: the evidence
    bounds the degradation rate of this cheaper mode below the target; ``checked``: no cheaper
    mode's bound is met (strict); ``settling``: a cheaper mode's bound is met, but the family
    has not shown enough outcomes since its last move; ``degraded``: an audited degradation
    moved it back to strict; ``no_gain``: teaching does not pay for its checking (skip);
    ``state_unavailable``: the shared state is down (strict)."""
    evidence: float
    """The family's own (discounted) compared calls."""
    borrowed: float
    """Pseudo-calls borrowed from the student model's other families (the shared prior)."""
    degradation_bound: float
    """Credible upper bound (``adaptive.credibility``) of the share of the family's calls a
    guided answer makes worse, inflated for the judge's misses."""
    judge_miss: float
    """The judge's assumed miss rate (at least its both-orders disagreement rate, doubled)."""
    gain: float
    """Posterior mean of the share of calls teaching improves minus the share it degrades."""
    cost: float
    """The mode's expected cost per call, the student alone = 1 (dollars when priced, else tokens)."""
    explored: bool = False
    """A skipped family's call taught anyway (``adaptive.explore``), under ``strict``, to measure."""
    measured: bool = False
    """A ``verify`` family's call run as ``strict`` to measure (``adaptive.audit_rate``)."""


class KeptAnswer(BaseModel):
    """A student answer kept on the report for evaluation (opt-in, see ``CallReport.answers``)."""

    model_config = ConfigDict(defer_build=True)

    content: str | None = None
    finish_reason: str | None = None


class CallReport(BaseModel):
    model_config = ConfigDict(defer_build=True)

    call_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    student_model: str
    teacher_model: str | None = None
    policy: str
    protocol: str | None = None
    """The teacher protocol the call used (``atlas`` or ``structured``)."""
    session_id: str | None = None
    tenant: str | None = None
    """Whose sessions and family guidance the call used (``_tenants.py``): the name the caller
    gave, ``key:<32 hex>`` (a digest of its key, never the key) or ``default``. None only in
    records written before tenants existed."""
    task_family: str | None = None
    """The task this call is an instance of: ``t:<tag>`` when the caller named it, else
    ``f:<12 hex>`` derived from the request (``teaching/families.py``)."""
    decision: Decision = "student_only"
    reason: Reason = Reason.STUDENT_ERROR
    probe: str | None = None
    """The student's own approach, as its probe stated it (thinking removed): what the
    teacher diagnosed. Kept in a ledger only with ``store_texts``."""
    diagnosis: DiagnosisInfo | None = None
    guidance: str | None = None
    guidance_reused: bool = False
    reused_from: str | None = None
    """``reuse: family``: the call id whose teacher wrote the guidance this call reused."""
    gate: GateInfo | None = None
    """``gate: learned``: the gate's view of the family, and why this call was (not) taught."""
    mode: Mode | None = None
    """``policy: adaptive``: the mode chosen for the call's family (``policy`` is the one the
    call ran under: ``strict`` for a measured or explored call); None under an explicit policy."""
    adaptive: AdaptiveInfo | None = None
    """``policy: adaptive``: the evidence behind ``mode``."""
    learn: bool = True
    """False when the caller kept the gate from learning from this call (``atlas={"learn":
    False}``); the rebuild from the ledger skips it too."""
    guidance_leak: Literal["stripped", "withheld", "allowed"] | None = None
    """What was done with guidance that stated an answer (``leak_action``); None: no leak."""
    judge: JudgeInfo | None = None
    audit: AuditInfo | None = None
    shadow: ShadowInfo | None = None
    """``policy: shadow``, a sampled call: what teaching would have delivered (``ShadowInfo``)."""
    budget: BudgetInfo | None = None
    """A call run untaught because the day's teaching budget is spent (``budget_exhausted``)."""
    usage: UsageByRole = Field(default_factory=UsageByRole)
    latency_ms: dict[str, float] = Field(default_factory=dict)
    tokens_saved: int | None = None
    net_tokens: int | None = None
    cost_usd: float | None = None
    student_alone_cost_usd: float | None = None
    """What the student alone would have cost (``counterfactual_basis`` says how it is known)."""
    cost_saved_usd: float | None = None
    """``student_alone_cost_usd - cost_usd``: positive = saved, net of everything spent."""
    counterfactual_basis: Counterfactual | None = None
    """``measured``: this call's own baseline; ``estimated``: its family's mean baseline;
    None: no student-alone figure (then ``tokens_saved``, ``net_tokens`` and the dollars are None)."""
    counterfactual_samples: int | None = None
    """For an ``estimated`` counterfactual: the measured baselines behind the mean (effective
    count, recent ones weigh most); None when ``measured``."""
    errors: list[ErrorInfo] = Field(default_factory=list)
    failed: bool = False
    """True when the user got the student's error instead of an answer."""
    answers: dict[str, KeptAnswer] | None = None
    """The guided and baseline answers by role, kept when the call passed
    ``atlas={"keep_answers": True}`` (the evaluation grades both) or the middleware stores
    texts (``store_texts``: a ledger that keeps them can train a teacher, ``learning/export.py``)."""

    def summary(self) -> str:
        """One line, net dollars first; an estimated counterfactual says so."""
        saved_usd = self.cost_saved_usd
        dollars = ("dollars saved n/a" if saved_usd is None
                   else f"saved ${saved_usd:.6f} against the student alone" if saved_usd >= 0
                   else f"spent ${-saved_usd:.6f} more than the student alone")
        if saved_usd is not None and self.counterfactual_basis == "estimated":
            dollars += f" (estimated from {self.counterfactual_samples} baselines)"
        # One sign everywhere, as in the savings report: + is saved, - is what teaching cost.
        saved = "n/a" if self.tokens_saved is None else f"{self.tokens_saved:+d}"
        net = "n/a" if self.net_tokens is None else f"{-self.net_tokens:+d}"
        return (
            f"{self.decision} ({self.reason.value}); {dollars}; answer tokens saved {saved}, "
            f"net tokens saved {net}; "
            f"{self.latency_ms.get('total', 0):.0f} ms"
        )
