"""What one call says about teaching: improved, degraded, unchanged, or nothing. Pure.

Only a call that compared the guided answer with the student's own says anything:

=====================================  =================  ==================================
the call                               outcome            because
=====================================  =================  ==================================
``agreement``, ``judge_tie``           ``unchanged``      same answer, or judged equal
``strong_student``, ``no_guidance``    ``unchanged``      the teacher had nothing to add: the
                                                          student's own answer, for the
                                                          price of probe and teacher
``teacher_unparseable``,               ``unchanged``      the teacher's work could not be
``teacher_truncated``,                                    used: the student's own answer,
``guidance_leaks_answer``,                                for the same price (a family whose
``probe_empty``                                           teacher never helps is one to stop
                                                          paying for)
``judge_preferred_guided``             ``improved``       the judge preferred the guided one
``judge_preferred_baseline``,          ``degraded``       the guided answer was worse (or
``guided_invalid_tool_call``                              called a tool wrongly)
shadow sampled: ``shadow.reason``      as above           strict's decision, made after the
                                                          student's own answer was delivered
audit sampled, ``winner`` guided /     ``improved`` /     the background comparison
baseline / tie                         ``degraded`` /
                                       ``unchanged``
anything else                          None               no comparison, or one that taught
                                                          nothing (``no_evidence``, a judge
                                                          error, a failed call, a teacher
                                                          that timed out or failed: the
                                                          circuit breaker's business)
=====================================  =================  ==================================

``no_evidence`` is not counted on purpose: the answers differed and nothing said which was
right, so it is neither a win nor a loss for the guidance (the baseline was delivered). A
``verified`` call graded the guided answer alone: good news about the answer, no comparison.

Evaluation records (``atlas-middleware eval``) grade both answers against the gold answer:
``from_grades`` maps them the same way (right guided and wrong alone: ``improved``).
"""

from __future__ import annotations

from typing import Literal

from ..report import CallReport, Reason

Outcome = Literal["improved", "degraded", "unchanged"]
OUTCOMES: tuple[Outcome, ...] = ("improved", "degraded", "unchanged")

_BY_REASON: dict[str, Outcome] = {
    Reason.AGREEMENT.value: "unchanged",
    Reason.JUDGE_TIE.value: "unchanged",
    Reason.STRONG_STUDENT.value: "unchanged",
    Reason.NO_GUIDANCE.value: "unchanged",
    Reason.TEACHER_UNPARSEABLE.value: "unchanged",
    Reason.TEACHER_TRUNCATED.value: "unchanged",
    Reason.GUIDANCE_LEAKS_ANSWER.value: "unchanged",
    Reason.PROBE_EMPTY.value: "unchanged",
    Reason.JUDGE_GUIDED.value: "improved",
    Reason.JUDGE_BASELINE.value: "degraded",
    Reason.INVALID_TOOL_CALL.value: "degraded",
}
_BY_AUDIT_WINNER: dict[str, Outcome] = {"guided": "improved", "baseline": "degraded", "tie": "unchanged"}


def outcome_of(report: CallReport) -> Outcome | None:
    """The call's outcome for teaching (module docstring); None when it compared nothing."""
    if report.shadow is not None:  # what strict would have decided, after the student's own answer
        return _BY_REASON.get(report.shadow.reason.value) if report.shadow.reason is not None else None
    if report.audit is not None:
        winner = report.audit.winner
        return _BY_AUDIT_WINNER.get(winner) if winner is not None else None
    return _BY_REASON.get(report.reason.value)


def from_grades(guided_correct: bool, alone_correct: bool) -> Outcome:
    """The outcome of an evaluated call whose two answers were graded against the gold one."""
    if guided_correct == alone_correct:
        return "unchanged"
    return "improved" if guided_correct else "degraded"
