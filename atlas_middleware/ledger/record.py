"""What the ledger keeps of one call: flat columns for reports, the report as JSON.

Texts are private by default: the prompt and the delivered answer are kept as a SHA-256
hash and a length; the student's probe, the teacher's diagnosis and guidance (which
paraphrase the prompt) and the guided and baseline answers are dropped. ``store_texts=True``
keeps all of them (what ``atlas-middleware export`` needs to train a teacher).
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..report import CallReport
from ..usage import ROLES


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class LedgerRecord(BaseModel):
    model_config = ConfigDict(defer_build=True)

    call_id: str
    created_at: datetime
    student_model: str
    teacher_model: str | None
    policy: str
    session_id: str | None
    task_family: str | None = None
    """``CallReport.task_family``; None for records written before families existed."""
    decision: str
    reason: str
    failed: bool
    tokens: dict[str, dict[str, int]]
    """Per role: prompt, completion, calls, and the parts of those counts a provider
    reported: reasoning (of completion) and cached (of prompt). Records written before
    those two existed lack them: read them as 0."""
    tokens_saved: int | None
    net_tokens: int | None
    cost_usd: float | None
    student_alone_cost_usd: float | None = None
    """``CallReport.student_alone_cost_usd``; the four counterfactual columns are None in
    records written before they existed (schema version 3)."""
    cost_saved_usd: float | None = None
    counterfactual_basis: str | None = None
    counterfactual_samples: int | None = None
    mode: str | None = None
    """``CallReport.mode``: the adaptive policy's mode for the call's family; None under an
    explicit policy, and in records written before it existed (schema version 3)."""
    latency_ms: float
    teacher_latency_ms: float | None
    errors: int
    prompt_sha256: str
    prompt_chars: int
    answer_sha256: str | None
    answer_chars: int | None
    prompt_text: str | None = None
    answer_text: str | None = None
    report_json: str

    @classmethod
    def from_report(
        cls, report: CallReport, prompt: str, answer: str | None, store_texts: bool
    ) -> LedgerRecord:
        # Without store_texts every text the model wrote about the prompt goes: it may quote it.
        kept = report if store_texts else report.model_copy(
            update={"guidance": None, "answers": None, "probe": None,
                    "diagnosis": report.diagnosis and report.diagnosis.model_copy(update={"text": ""})}
        )
        tokens: dict[str, dict[str, int]] = {}
        for role in ROLES:
            u = getattr(report.usage, role)
            tokens[role] = {"prompt": u.prompt_tokens, "completion": u.completion_tokens, "calls": u.calls,
                            "reasoning": u.reasoning_tokens, "cached": u.cached_tokens}
        return cls(
            call_id=report.call_id,
            created_at=report.created_at,
            student_model=report.student_model,
            teacher_model=report.teacher_model,
            policy=report.policy,
            session_id=report.session_id,
            task_family=report.task_family,
            decision=report.decision,
            reason=report.reason.value,
            failed=report.failed,
            tokens=tokens,
            tokens_saved=report.tokens_saved,
            net_tokens=report.net_tokens,
            cost_usd=report.cost_usd,
            student_alone_cost_usd=report.student_alone_cost_usd,
            cost_saved_usd=report.cost_saved_usd,
            counterfactual_basis=report.counterfactual_basis,
            counterfactual_samples=report.counterfactual_samples,
            mode=report.mode,
            latency_ms=report.latency_ms.get("total", 0.0),
            teacher_latency_ms=report.latency_ms.get("teacher"),
            errors=len(report.errors),
            prompt_sha256=_digest(prompt),
            prompt_chars=len(prompt),
            answer_sha256=None if answer is None else _digest(answer),
            answer_chars=None if answer is None else len(answer),
            prompt_text=prompt if store_texts else None,
            answer_text=answer if store_texts else None,
            report_json=kept.model_dump_json(),
        )

    def report(self) -> CallReport:
        return CallReport.model_validate_json(self.report_json)

    def row(self) -> dict[str, Any]:
        data = self.model_dump()
        data["tokens"] = json.dumps(self.tokens, sort_keys=True)
        data["created_at"] = self.created_at.isoformat()
        data["failed"] = int(self.failed)
        return data
