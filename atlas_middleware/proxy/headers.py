"""The ``x-atlas-*`` response headers, and the report as a JSON body field.

Only figures and keys go into headers: the call id, the decision and its reason, the policy,
tokens saved and net tokens, the task family, the learned gate's state and the call whose
guidance was reused. Never guidance text or anything from the teacher's configuration.
"""

from __future__ import annotations

from typing import Any

from ..report import CallReport

HEADER_PREFIX = "x-atlas-"
BODY_FIELD = "atlas"


def _figure(value: int | None) -> str:
    return "" if value is None else str(value)


def report_headers(report: CallReport) -> dict[str, str]:
    return {
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
