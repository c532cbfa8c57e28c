"""The ``x-atlas-*`` response headers, and the report as a JSON body field.

Only figures and keys go into headers: first the call's net dollars against the student
alone (``x-atlas-cost-saved-usd``: positive = saved, negative = spent) with what it is made
of (its cost, the student-alone cost, and whether that was ``measured`` or ``estimated`` from
how many of the family's baselines), then the call id, the decision and its reason, the
policy, tokens saved and net tokens, the task family, the learned gate's state, the call
whose guidance was reused, and under ``policy: adaptive`` the family's mode with why and the
evidence behind it (``x-atlas-mode``, ``x-atlas-mode-why``, ``x-atlas-degradation-bound``:
the credible upper bound of the family's degradation rate, ``x-atlas-evidence``: its own
compared calls), and for a call the day's teaching budget kept untaught (reason
``budget_exhausted``) which cap (``x-atlas-budget``: ``total``, ``family`` or
``state_unavailable``). A figure not known is an empty value. Never guidance text or
anything from the teacher's configuration.
"""

from __future__ import annotations

from typing import Any

from ..report import CallReport

BODY_FIELD = "atlas"


def _figure(value: int | None) -> str:
    return "" if value is None else str(value)


def _dollars(value: float | None) -> str:
    # Ten significant digits: a per-call price is a few millionths of a dollar.
    return "" if value is None else format(value, ".10g")


def report_headers(report: CallReport) -> dict[str, str]:
    return {
        "x-atlas-cost-saved-usd": _dollars(report.cost_saved_usd),
        "x-atlas-cost-usd": _dollars(report.cost_usd),
        "x-atlas-student-alone-cost-usd": _dollars(report.student_alone_cost_usd),
        "x-atlas-counterfactual": report.counterfactual_basis or "",
        "x-atlas-counterfactual-samples": _figure(report.counterfactual_samples),
        "x-atlas-call-id": report.call_id,
        "x-atlas-decision": report.decision,
        "x-atlas-reason": report.reason.value,
        "x-atlas-policy": report.policy,
        "x-atlas-protocol": report.protocol or "",
        "x-atlas-tokens-saved": _figure(report.tokens_saved),
        "x-atlas-net-tokens": _figure(report.net_tokens),
        "x-atlas-task-family": report.task_family or "",
        "x-atlas-gate": report.gate.state if report.gate is not None else "",
        "x-atlas-reused-from": report.reused_from or "",
        "x-atlas-budget": report.budget.why if report.budget is not None else "",
        **_mode_headers(report),
    }


def _mode_headers(report: CallReport) -> dict[str, str]:
    """``policy: adaptive``: the family's mode and the evidence behind it (empty otherwise)."""
    a = report.adaptive
    return {
        "x-atlas-mode": report.mode or "",
        "x-atlas-mode-why": a.why if a is not None else "",
        "x-atlas-degradation-bound": "" if a is None else format(a.degradation_bound, ".6g"),
        "x-atlas-evidence": "" if a is None else format(a.evidence, ".6g"),
    }


def report_body(report: CallReport) -> dict[str, Any]:
    """The report as the proxy returns it: JSON-safe, without the guidance text.

    Guidance is the teacher's work product and may echo the user's task; the ledger keeps
    it (when configured to), the HTTP body does not need it to explain a decision.
    """
    # The teacher's private reasoning, the student's probe and any kept answers echo the task
    # (and may state the answer): like the guidance, they stay out of what clients receive.
    return report.model_dump(mode="json", exclude={"guidance": True, "answers": True, "probe": True,
                                                   "diagnosis": {"text"}})
