"""Shared by the report, spool and Postgres tests: real calls into a ledger, and the
expected report figures computed straight from ledger rows, independently of
``atlas_middleware.offline.reporting`` (plain sums over the flat columns, written differently on
purpose so that a mistake in the summary code cannot hide in both)."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from atlas_middleware import Atlas
from atlas_middleware.ledger import Ledger, LedgerRecord
from atlas_middleware.testing import PairwiseJudge, ScriptedBackend, teacher_reply

ROLES = ("probe", "teacher", "guided", "baseline", "judge")
QUESTION = [{"role": "user", "content": "What is 20 + 22?"}]
LONG_BASELINE = "Twenty plus twenty-two: add the tens, then the units, then check again. The answer is 42"

# (student model, student script, teacher script, policy, per-call atlas options)
SCENARIOS: list[tuple[str, dict[str, Any], dict[str, Any], str, dict[str, Any]]] = [
    # guided and baseline agree: the cheaper (guided) answer is delivered, tokens saved
    ("gpt-small", {"probe": "add them", "baseline": LONG_BASELINE, "guided": "The answer is 42"},
     {"teacher": teacher_reply("Add tens then units.")}, "strict", {"session_id": "alpha"}),
    # they disagree and the judge (the teacher, by default) prefers the baseline
    ("gpt-small", {"probe": "add", "baseline": "The answer is 42",
                   "guided": "Carrying wrongly the answer is 41"},
     {"teacher": teacher_reply("Carry."), "judge_pair": PairwiseJudge(lambda a: a.endswith("42"))}, "strict", {}),
    # the teacher is down: fail open to the student alone
    ("llama-local", {"probe": "add", "baseline": "The answer is 42"}, {"teacher": RuntimeError("down")},
     "strict", {"session_id": "beta"}),
    # verify passes (the teacher grades the guided answer): no baseline, so no savings figure
    ("llama-local", {"probe": "add", "baseline": "The answer is 42", "guided": "The answer is 42"},
     {"teacher": teacher_reply("x"), "judge_score": "<verdict>9</verdict>"}, "verify", {"task": "graded sums"}),
    # opted out
    ("gpt-small", {"baseline": "The answer is 42"}, {"teacher": teacher_reply("x")}, "strict", {"teach": False}),
]


# Prices the LiteLLM way (``pricing.py``) for one student model and its teacher: those calls
# have dollar figures, the others' prices stay unknown.
STUDENT_PRICES = {"gpt-small": {"input_cost_per_token": 2e-6, "output_cost_per_token": 8e-6}}
TEACHER_PRICES = {"gpt-small": {"input_cost_per_token": 1e-7, "output_cost_per_token": 3e-7}}


def make_calls(ledger: Ledger | str, rounds: int = 1, **atlas_kwargs: Any) -> list[str]:
    """Run every scenario ``rounds`` times through a real ``Atlas``; returns the call ids.

    Each ``Atlas`` is closed afterwards, which closes a ledger it was given as an object
    too: pass a URL, or a ledger whose ``close`` the caller controls."""
    ids: list[str] = []
    for _ in range(rounds):
        for i, (model, student, teacher, policy, opts) in enumerate(SCENARIOS):
            # A few milliseconds of latency, different per scenario, so latencies mean something.
            student_backend = ScriptedBackend(student, delays={"baseline": 0.004 * (i + 1), "guided": 0.003})
            teacher_backend = ScriptedBackend(teacher, delays={"teacher": 0.005 * (i + 1)})
            with Atlas(student_backend=student_backend, teacher_backend=teacher_backend,
                       ledger=ledger, teacher="scripted-teacher", policy=policy,
                       teacher_params=TEACHER_PRICES.get(model, {}), **atlas_kwargs) as atlas:
                response = atlas.completion(model, QUESTION, atlas=dict(opts), **STUDENT_PRICES.get(model, {}))
                ids.append(response.atlas.call_id)
    return ids


def restamped(records: list[LedgerRecord], days_back: int, cost: float | None) -> list[LedgerRecord]:
    """Copies of real records moved ``days_back`` days earlier, with new ids (and a price)."""
    out = []
    for i, r in enumerate(records):
        out.append(r.model_copy(update={
            "call_id": f"{r.call_id[:20]}-d{days_back}-{i}",
            "created_at": r.created_at - timedelta(days=days_back),
            "cost_usd": cost if (cost is not None and i % 2 == 0) else r.cost_usd,
        }))
    return out


def nearest_rank(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def expected(rows: list[LedgerRecord]) -> dict[str, Any]:
    """The figures a report must show for these rows."""
    measured = [r for r in rows if r.tokens_saved is not None and r.counterfactual_basis != "estimated"]
    base_completion = sum(r.tokens["baseline"]["completion"] for r in measured)
    base_total = sum(r.tokens["baseline"]["completion"] + r.tokens["baseline"]["prompt"] for r in measured)
    saved = sum(r.tokens_saved or 0 for r in measured)
    net = sum(r.net_tokens or 0 for r in measured)
    priced = [r.cost_usd for r in rows if r.cost_usd is not None]
    failures = {"teacher_timeout", "teacher_error", "teacher_unparseable", "teacher_truncated",
                "guidance_leaks_answer", "probe_error", "probe_empty"}
    tried = [r for r in rows if r.reason in failures or r.tokens["teacher"]["calls"] > 0]
    teacher_lat = [r.teacher_latency_ms for r in rows if r.teacher_latency_ms is not None]
    dollars = [r for r in rows if r.cost_saved_usd is not None and r.student_alone_cost_usd is not None]
    alone_usd = sum(r.student_alone_cost_usd or 0.0 for r in dollars)
    saved_usd = sum(r.cost_saved_usd or 0.0 for r in dollars)
    return {
        "cost_saved_usd": saved_usd if dollars else None,
        "student_alone_cost_usd": alone_usd if dollars else None,
        "cost_vs_alone": (alone_usd - saved_usd) / alone_usd if dollars and alone_usd else None,
        "dollar_calls": len(dollars),
        "dollar_calls_estimated": sum(1 for r in dollars if r.counterfactual_basis == "estimated"),
        "calls": len(rows),
        "failed": sum(1 for r in rows if r.failed),
        "decisions": {d: sum(1 for r in rows if r.decision == d) for d in ("guided", "baseline", "student_only")},
        "tokens": {role: {"prompt": sum(r.tokens[role]["prompt"] for r in rows),
                          "completion": sum(r.tokens[role]["completion"] for r in rows)} for role in ROLES},
        "total_tokens": sum(t["prompt"] + t["completion"] for r in rows for t in r.tokens.values()),
        "measured_calls": len(measured),
        "tokens_saved": saved,
        "saved_rate": saved / base_completion if base_completion else None,
        "net_tokens": net,
        "net_rate": net / base_total if base_total else None,
        "cost_usd": sum(priced) if priced else None,
        "cost_unknown_calls": len(rows) - len(priced),
        "teacher_error_rate": (sum(1 for r in tried if r.reason in failures) / len(tried)) if tried else None,
        "error_rate": (sum(1 for r in rows if r.failed) / len(rows)) if rows else None,
        "teacher_p50": nearest_rank(teacher_lat, 0.5),
        "teacher_p95": nearest_rank(teacher_lat, 0.95),
        "taught": sum(1 for r in rows if r.tokens["guided"]["calls"] > 0),
    }


def by(rows: list[LedgerRecord], group_by: str) -> dict[str, list[LedgerRecord]]:
    out: dict[str, list[LedgerRecord]] = defaultdict(list)
    for r in rows:
        if group_by == "day":
            key = r.created_at.astimezone(UTC).strftime("%Y-%m-%d")
        elif group_by == "session":
            key = r.session_id or "(none)"
        elif group_by == "family":
            key = r.task_family or "(none)"
        else:
            key = r.student_model if group_by == "model" else r.decision
        out[key].append(r)
    return dict(out)


def now() -> datetime:
    return datetime.now(UTC)


def _close(a: float | None, b: float | None) -> bool:
    return a == b if a is None or b is None else abs(a - b) < 1e-9


def check_group_json(data: dict[str, Any], rows: list[LedgerRecord]) -> None:
    """A group of ``report --json`` against the figures expected from ``rows``."""
    want = expected(rows)
    assert data["calls"] == want["calls"]
    assert data["failed"] == want["failed"]
    assert data["decisions"] == want["decisions"]
    for role in ROLES:
        assert data["tokens"][role]["prompt"] == want["tokens"][role]["prompt"], role
        assert data["tokens"][role]["completion"] == want["tokens"][role]["completion"], role
    for key in ("total_tokens", "measured_calls", "tokens_saved", "net_tokens", "cost_unknown_calls", "dollar_calls",
                "dollar_calls_estimated"):
        assert data[key] == want[key], key
    for key in ("saved_rate", "net_rate", "cost_usd", "teacher_error_rate", "error_rate", "cost_saved_usd",
                "student_alone_cost_usd", "cost_vs_alone"):
        assert _close(data[key], want[key]), (key, data[key], want[key])
    assert _close(data["teacher_latency_ms"]["p50"], want["teacher_p50"])
    assert _close(data["teacher_latency_ms"]["p95"], want["teacher_p95"])
    assert data["taught"] == want["taught"]
    assert _close(data["taught_share"], want["taught"] / want["calls"] if want["calls"] else None)
