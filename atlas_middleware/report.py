"""The per-call report: what was delivered, why, and what it cost.

Sign conventions, so that nobody has to guess:

* ``tokens_saved`` = completion tokens of the student-alone baseline minus completion
  tokens of the delivered answer. Positive means the delivered answer was shorter. ``None``
  when no baseline was measured on this call (``verify`` calls that passed, ``off``).
* ``net_tokens`` = every token spent on the call (probe, teacher, guided, baseline, judge;
  prompt and completion) minus the tokens the student alone spent (the baseline's total).
  Positive means the middleware cost tokens, negative means it saved them. ``None`` when no
  baseline was measured.
* ``cost_usd`` = summed LiteLLM prices of every call; ``None`` when any price is unknown.

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
    learn: bool = True
    """False when the caller kept the gate from learning from this call (``atlas={"learn":
    False}``); the rebuild from the ledger skips it too."""
    guidance_leak: Literal["stripped", "withheld", "allowed"] | None = None
    """What was done with guidance that stated an answer (``leak_action``); None: no leak."""
    judge: JudgeInfo | None = None
    audit: AuditInfo | None = None
    usage: UsageByRole = Field(default_factory=UsageByRole)
    latency_ms: dict[str, float] = Field(default_factory=dict)
    tokens_saved: int | None = None
    net_tokens: int | None = None
    cost_usd: float | None = None
    errors: list[ErrorInfo] = Field(default_factory=list)
    failed: bool = False
    """True when the user got the student's error instead of an answer."""
    answers: dict[str, KeptAnswer] | None = None
    """The guided and baseline answers by role, kept when the call passed
    ``atlas={"keep_answers": True}`` (the evaluation grades both) or the middleware stores
    texts (``store_texts``: a ledger that keeps them can train a teacher, ``learning/export.py``)."""

    def summary(self) -> str:
        saved = "n/a" if self.tokens_saved is None else f"{self.tokens_saved:+d}"
        net = "n/a" if self.net_tokens is None else f"{self.net_tokens:+d}"
        return (
            f"{self.decision} ({self.reason.value}); tokens saved {saved}, net {net}; "
            f"{self.latency_ms.get('total', 0):.0f} ms"
        )
