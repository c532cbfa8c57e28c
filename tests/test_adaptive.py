"""The adaptive policy through ``Atlas``: every move between modes, on both drivers (the
``call`` fixture) and both state backends (process memory, or Redis when ``TEST_REDIS_URL``
is set), the fallback when the state is down or lost, the rebuild from the ledger, and where
the mode shows (report, headers, ledger, metrics, the LangChain middleware).

Families are scripted as in ``test_gate.py``: in ``help`` the guided answer is right and the
student's own wrong, in ``harm`` the reverse. The judge is exact (it scores the right total
1), so each call's outcome is known, and the settings are small so that moves come in tens of
calls: target 0.9 at credibility 0.8, five outcomes per move.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from typing import Any

import pytest

from atlas_middleware._tenants import DEFAULT_TENANT
from atlas_middleware.learning.adaptive import POOLED, RARE
from atlas_middleware.learning.gate import gate_key
from atlas_middleware.proxy.headers import report_headers
from atlas_middleware.report import CallReport, Reason
from atlas_middleware.state.base import FamilyEvidence
from atlas_middleware.testing import teacher_reply

REDIS_URL = os.environ.get("TEST_REDIS_URL", "")
RIGHT, WRONG = "20 + 22 = 42. The answer is 42", "20 + 22 = 41. The answer is 41"
FAMILIES = {"help": (WRONG, RIGHT), "harm": (RIGHT, WRONG)}


def is_right(messages: list[dict[str, Any]], answer: str) -> float:
    return 1.0 if "The answer is 42" in answer else 0.0


def _answer(guided: bool) -> Any:
    def reply(request: Any) -> str:
        text = str(request.messages[-1]["content"])
        return FAMILIES[next(name for name in FAMILIES if text.startswith(name))][guided]

    return reply


STUDENT = {"baseline": _answer(False), "guided": _answer(True)}
TEACHER = {"teacher": teacher_reply("Carry the one.")}
FAST = {"ndr_target": 0.9, "credibility": 0.8, "min_evidence": 5, "prior_weight": 0, "gain_per_cost": 0,
        "explore": 0.0, "audit_rate": 0.5}


def settings(**adaptive: Any) -> dict[str, Any]:
    return {"judge": is_right, "adaptive": {**FAST, **adaptive}}


def ask(call: Any, atlas: Any, family: str, n: int = 1, **options: Any) -> list[CallReport]:
    return [call(atlas, messages=[{"role": "user", "content": f"{family}: what is 20 + 22?"}],
                 atlas={"task": family, **options}).atlas for _ in range(n)]


def until(call: Any, atlas: Any, family: str, mode: str, limit: int = 80) -> list[CallReport]:
    """Ask until a call comes under ``mode``; every report on the way."""
    out: list[CallReport] = []
    while not out or out[-1].mode != mode:
        assert len(out) < limit, [(r.mode, r.adaptive and r.adaptive.why) for r in out]
        out += ask(call, atlas, family)
    return out


# -- every move ------------------------------------------------------------------------------

def test_a_helping_family_moves_from_strict_to_verify_to_audit(make_atlas, call, state) -> None:
    atlas, *_ = make_atlas(STUDENT, TEACHER, **settings(), **state)
    reports = until(call, atlas, "help", "audit")
    modes = [r.mode for r in reports]
    whys = [r.adaptive.why for r in reports if r.adaptive]
    assert modes[0] == "strict" and whys[0] == "learning"
    first_verify = modes.index("verify")
    assert set(modes[:first_verify]) == {"strict"} and first_verify >= 5  # min_evidence outcomes of its own
    assert set(modes[first_verify:-1]) == {"verify"} and whys[first_verify] == "bound"
    verify = reports[first_verify:-1]
    measured = [r for r in verify if r.adaptive and r.adaptive.measured]
    assert measured and all(r.policy == "strict" and r.reason == Reason.JUDGE_GUIDED for r in measured)
    assert all(r.policy == "verify" and r.reason == Reason.VERIFIED for r in verify if r not in measured)
    last = reports[-1]
    assert last.policy == "audit" and last.decision == "guided" and last.adaptive is not None
    assert last.adaptive.degradation_bound <= 0.1 and last.adaptive.why == "bound"
    # The bound fell as the evidence grew; every delivered answer was the guided (right) one.
    bounds = [r.adaptive.degradation_bound for r in reports if r.adaptive]
    assert bounds[-1] < bounds[0] and all("42" in (r.answers or {}).get("guided", "42") for r in reports)
    e = atlas.gate.store.get(gate_key("student-model", "t:help", DEFAULT_TENANT))
    assert e is not None and e.mode == "audit" and e.degraded == 0 and e.judged > 0


def test_an_audited_degradation_moves_the_family_back_to_strict_at_once(make_atlas, call, state) -> None:
    atlas, *_ = make_atlas(STUDENT, TEACHER, **settings(audit_rate=1.0), **state)
    until(call, atlas, "help", "audit")
    FAMILIES["help"] = (RIGHT, WRONG)  # the family's student changes: guidance now breaks it
    try:
        (audited,) = ask(call, atlas, "help")
        after = ask(call, atlas, "help", 3)
    finally:
        FAMILIES["help"] = (WRONG, RIGHT)
    # (The report a caller gets is the one at delivery; the audit's verdict comes after, in the ledger.)
    assert audited.mode == "audit" and audited.reason == Reason.AUDIT_SAMPLED and audited.decision == "guided"
    assert all(r.mode == "strict" and r.policy == "strict" for r in after)
    assert after[0].adaptive is not None and after[0].adaptive.why in ("settling", "checked")
    assert all(r.decision == "baseline" and r.reason == Reason.JUDGE_BASELINE for r in after)  # caught now
    e = atlas.gate.store.get(gate_key("student-model", "t:help", DEFAULT_TENANT))
    assert e is not None and e.mode == "strict" and e.mode_outcomes == 3  # counting again since the move


def test_a_harmful_family_is_skipped_then_taught_again_when_exploration_shows_gain(make_atlas, call, state) -> None:
    atlas, _, teacher = make_atlas(STUDENT, TEACHER, **settings(explore=0.5), **state)
    reports = until(call, atlas, "harm", "skip")
    assert reports[0].mode == "strict" and len(reports) >= 6
    skipped = ask(call, atlas, "harm", 30)
    untaught = [r for r in skipped if not (r.adaptive and r.adaptive.explored)]
    explored = [r for r in skipped if r.adaptive and r.adaptive.explored]
    assert untaught and explored
    assert all(r.mode == "skip" and r.reason == Reason.GATE_SKIPPED and r.decision == "student_only"
               and r.usage.teacher.calls == r.usage.probe.calls == 0 for r in untaught)
    assert untaught[0].adaptive is not None and untaught[0].adaptive.why == "no_gain"
    # Explored calls run under strict, so the baseline protects the user while they measure.
    assert all(r.policy == "strict" and r.decision == "baseline" for r in explored)
    FAMILIES["harm"] = (WRONG, RIGHT)  # now teaching helps here
    try:
        back: list[CallReport] = []
        while not back or back[-1].mode == "skip":
            assert len(back) < 120
            back += ask(call, atlas, "harm")
    finally:
        FAMILIES["harm"] = (RIGHT, WRONG)
    # Taught again, under the cheapest mode its evidence admits (the exact judge's misses are
    # the floor's, so the degradations it saw before bound verify's residual below the target).
    assert back[-1].mode in ("strict", "verify") and back[-1].decision == "guided"
    assert back[-1].usage.teacher.calls == 1 and len(back) > 10


def _same_answer(guided_tokens: int) -> Any:
    """Both answers right; the guided one ``guided_tokens`` long against the student's 1,000."""
    from atlas_middleware.testing import Reply

    return {"baseline": Reply(RIGHT, prompt_tokens=20, completion_tokens=1000),
            "guided": Reply(RIGHT, prompt_tokens=40, completion_tokens=guided_tokens),
            "probe": Reply("Add them.", prompt_tokens=30, completion_tokens=5)}


def test_rare_families_are_served_verify_once_their_class_bounds_it_and_a_harmful_one_is_caught(
        make_atlas, call, state) -> None:
    atlas, *_ = make_atlas(STUDENT, TEACHER, **settings(), **state)
    early = [r for k in range(6) for r in ask(call, atlas, f"help-{k}", 2)]  # each template seen twice: rare
    assert (early[0].mode, early[0].adaptive and early[0].adaptive.why) == ("strict", "learning")
    (new,) = ask(call, atlas, "help-new")
    assert new.mode == "verify" and new.adaptive is not None and new.adaptive.why == "rare"
    assert new.adaptive.borrowed >= 5 and new.decision == "guided"
    rare = atlas.gate.store.get(gate_key("student-model", RARE, DEFAULT_TENANT))
    assert rare is not None and rare.outcomes >= 5 and rare.degraded == 0
    # A harmful rare template under verify: the grade sends its callers the student's own answer,
    # and its first measured degradation takes it off verify.
    harm = ask(call, atlas, "harm-0", 12)
    assert harm[0].mode == "verify" and harm[0].decision == "baseline"
    first = next(k for k, r in enumerate(harm) if r.adaptive is not None and r.adaptive.measured)
    # Its own evidence now holds a degradation: never verify again on the class's word (here the
    # shared prior, which has seen it harm, skips it).
    after = [(r.mode, r.adaptive and r.adaptive.why) for r in harm[first + 1:]]
    assert after and all(m in (("strict", "learning"), ("skip", "prior")) for m in after), after
    assert all(r.decision in ("baseline", "student_only") for r in harm)  # never the harmful guided answer
    e = atlas.gate.store.get(gate_key("student-model", "t:harm-0", DEFAULT_TENANT))
    assert e is not None and e.degraded > 0


def test_a_family_with_shorter_guided_answers_is_learned_under_strict_until_audit_saves(make_atlas, call,
                                                                                          state) -> None:
    # Teaching changes no answer here, so strict (which pays for both answers) never pays, and
    # gain_per_cost skips such a family; but its guided answers are a fifth as long, so audit
    # would cost less than the student alone: the family is taught under strict until its own
    # evidence admits audit, never served a cheaper mode before.
    atlas, *_ = make_atlas(_same_answer(200), TEACHER, **settings(gain_per_cost=0.1, audit_rate=0.2), **state)
    reports = until(call, atlas, "short", "audit")
    whys = [r.adaptive.why for r in reports if r.adaptive]
    assert "skip" not in {r.mode for r in reports} and "prospect" in whys
    assert all(r.mode == "strict" and r.policy == "strict" and r.reason == Reason.AGREEMENT for r in reports[:-1])
    assert reports[-1].adaptive is not None and reports[-1].adaptive.degradation_bound <= 0.1
    assert reports[-1].decision == "guided" and reports[-1].usage.baseline.calls <= 1
    # Guided answers as long as the student's own: audit would save nothing, and it is skipped.
    atlas, *_ = make_atlas(_same_answer(1000), TEACHER, **settings(gain_per_cost=0.1, audit_rate=0.2), **state)
    long = until(call, atlas, "long", "skip")  # (on a shared Redis the first family's evidence is its prior)
    assert long[-1].adaptive is not None and long[-1].adaptive.why in ("no_gain", "prior")
    assert "prospect" not in {r.adaptive.why for r in long if r.adaptive}


def test_a_down_state_serves_strict_with_a_warning_and_a_metric_and_a_lost_one_starts_over(
        make_atlas, call, caplog: pytest.LogCaptureFixture) -> None:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    pytest.importorskip("redis")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # A Redis of this test's own: stopping it freezes no other test's.
    start = [server, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(start, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(port)
        atlas, *_ = make_atlas(STUDENT, TEACHER, **settings(), state=f"redis://127.0.0.1:{port}/0", state_timeout=0.5)
        atlas.state.backoff = 0.2
        until(call, atlas, "help", "audit")
        caplog.set_level(logging.WARNING, "atlas_middleware.learning")
        proc.terminate()
        proc.wait(10)
        down = ask(call, atlas, "help", 3)
        assert all(r.mode == "strict" and r.policy == "strict" and r.adaptive is not None
                   and r.adaptive.why == "state_unavailable" for r in down)
        warnings = [rec.getMessage() for rec in caplog.records if rec.name == "atlas_middleware.learning"]
        assert len(warnings) == 1 and "unreachable" in warnings[0] and "strict" in warnings[0]
        from atlas_middleware.proxy.metrics import AtlasMetrics

        metrics = AtlasMetrics(replica="test")
        for r in down:
            metrics.observe(r)
        assert 'atlas_adaptive_calls_total{mode="strict",replica="test",why="state_unavailable"} 3.0' in (
            metrics.render().decode())
        # Redis comes back empty: the evidence is lost, and the family learns again under strict.
        proc = subprocess.Popen(start, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for(port)
        time.sleep(0.3)  # the back-off
        again = ask(call, atlas, "help", 2)[-1]
        assert again.mode == "strict" and again.adaptive is not None and again.adaptive.why == "learning"
        assert "back" in caplog.records[-1].getMessage()
    finally:
        proc.terminate()
        proc.wait(10)


def _wait_for(port: int) -> None:
    for _ in range(200):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"redis-server did not start on port {port}")


# -- kept, shown, rebuilt ------------------------------------------------------------------------

def test_the_evidence_and_modes_are_rebuilt_from_the_ledger(make_atlas, call, tmp_path, state) -> None:
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    atlas, *_ = make_atlas(STUDENT, TEACHER, ledger=ledger, **settings())
    reports = until(call, atlas, "help", "audit")
    key = gate_key("student-model", "t:help", DEFAULT_TENANT)
    live = atlas.gate.store.get(key)
    live_baselines = atlas.state.baselines.get(key)
    atlas.close()
    rows = {row.call_id: row for row in atlas.ledger.__class__(tmp_path / "ledger.db").records()}
    assert [rows[r.call_id].mode for r in reports] == [r.mode for r in reports]  # the ledger's column
    again, *_ = make_atlas(STUDENT, TEACHER, ledger=ledger, **settings(), **state)
    rebuilt = again.gate.store.get(key)
    assert rebuilt is not None and live is not None and rebuilt.mode == "audit"
    assert rebuilt.improved == pytest.approx(live.improved) and rebuilt.judged == pytest.approx(live.judged)
    assert again.gate.store.get(gate_key("student-model", POOLED, DEFAULT_TENANT)) is not None  # the prior too
    # The family's measured baselines come back too: an audit call that runs none is estimated
    # from as many samples as the live process had.
    assert live_baselines is not None and again.state.baselines.get(key) == live_baselines
    after = [r for r in ask(call, again, "help", 4) if r.usage.baseline.calls == 0]
    assert after and after[0].mode == "audit" and after[0].counterfactual_basis == "estimated"
    assert after[0].counterfactual_samples == round(live_baselines.samples)


def test_graded_outcomes_reach_the_evidence_as_graded(make_atlas, call, state) -> None:
    atlas, *_ = make_atlas(STUDENT, TEACHER, **settings(), **state)
    kept = ask(call, atlas, "help", 3, learn=False)  # the caller grades these against gold answers
    ask(call, atlas, "help", 2)  # and these the judge reads
    for report in kept:
        atlas.learn(report, "degraded")
    e = atlas.gate.store.get(gate_key("student-model", "t:help", DEFAULT_TENANT))
    assert e is not None and e.outcomes == pytest.approx(5, abs=0.01)
    assert e.graded == pytest.approx(3, abs=0.01) and e.graded_degraded == pytest.approx(e.degraded)
    pooled = atlas.gate.store.get(gate_key("student-model", POOLED, DEFAULT_TENANT))
    assert pooled is not None and pooled.graded_degraded == pytest.approx(3, abs=0.01)


def test_the_mode_and_its_evidence_are_in_the_report_and_headers(make_atlas, call, state) -> None:
    atlas, *_ = make_atlas(STUDENT, TEACHER, **settings(), **state)
    (first,) = ask(call, atlas, "help")
    headers = report_headers(first)
    assert headers["x-atlas-mode"] == "strict" and headers["x-atlas-mode-why"] == "learning"
    assert float(headers["x-atlas-degradation-bound"]) == pytest.approx(first.adaptive.degradation_bound)  # type: ignore[union-attr]
    assert headers["x-atlas-evidence"] == "0"
    last = until(call, atlas, "help", "audit")[-1]
    assert report_headers(last)["x-atlas-mode"] == "audit" and float(report_headers(last)["x-atlas-evidence"]) >= 10


def test_explicit_policies_behave_as_before_and_the_hook_gets_each_calls_policy(make_atlas, call, state) -> None:
    atlas, *_ = make_atlas(STUDENT, TEACHER, **settings(), **state)
    until(call, atlas, "help", "audit")
    seen: list[str] = []
    (explicit,) = ask(call, atlas, "help", policy="strict", on_policy=seen.append)
    assert explicit.mode is None and explicit.adaptive is None and explicit.policy == "strict"
    assert explicit.reason == Reason.JUDGE_GUIDED and explicit.usage.baseline.calls == 1
    (adaptive,) = ask(call, atlas, "help", on_policy=seen.append)
    assert adaptive.mode == "audit" and seen == ["strict", "audit"]
    fixed, *_ = make_atlas(STUDENT, TEACHER, policy="verify", judge=is_right, **state)
    (plain,) = ask(call, fixed, "help")
    assert plain.mode is None and plain.policy == "verify" and plain.reason == Reason.VERIFIED
    (per_call,) = ask(call, fixed, "help", policy="adaptive")
    assert per_call.mode == "strict" and per_call.adaptive is not None and per_call.adaptive.why == "learning"


def test_the_stores_add_judge_reads_and_costs_alike(state) -> None:
    from atlas_middleware.state import open_state

    shared = open_state(state.get("state", "memory"), prefix=state.get("state_prefix", "atlas:"), timeout=1.0)
    try:
        store, want = shared.families, FamilyEvidence()
        steps = [("improved", 12.0, "decided", (0.5, 0.1)), (None, None, "undecided", (0.6, 0.2)),
                 ("degraded", -3.0, "decided", None), ("unchanged", None, None, (0.4, 0.0))]
        for outcome, net, judge, cost in steps:
            got = store.observe("k", outcome, net, 0.9, judge=judge, cost=cost)
            want = want.observed(outcome, net, 0.9, judge=judge, cost=cost)
            assert got == want
        store.set_mode("k", "verify")
        e = store.get("k")
        assert e is not None and e.mode == "verify" and e.mode_outcomes == 0 and e.judged == pytest.approx(want.judged)
    finally:
        shared.close()


def test_the_agent_middleware_streams_the_guided_answer_by_each_calls_mode(tmp_path, monkeypatch) -> None:
    pytest.importorskip("langchain")
    from langchain.agents import create_agent

    import atlas_middleware.langchain.middleware as mw
    from atlas_middleware.langchain import AtlasAgentMiddleware
    from atlas_middleware.testing import ScriptedBackend
    from atlas_middleware.testing.langchain import ScriptedChatModel

    student = ScriptedChatModel(backend=ScriptedBackend({"probe": "plan", "guided": "It is 42.",
                                                         "baseline": "It is 42."}))
    teacher = ScriptedChatModel(backend=ScriptedBackend({"teacher": teacher_reply("Add.")}),
                                model_name="scripted-teacher")
    middleware = AtlasAgentMiddleware(teacher=teacher, ledger="none", judge="answer",
                                      adaptive={**FAST, "audit_rate": 1.0})
    agent = create_agent(student, tools=[], middleware=[middleware])
    quiet: list[int] = []
    real = mw.child_run  # counts the student calls run tagged nostream (not the answer's stream)
    monkeypatch.setattr(mw, "child_run",
                        lambda role, *, streams: (streams or quiet.append(1), real(role, streams=streams))[1])
    config = {"metadata": {"atlas_task": "sums"}}
    question = {"messages": [{"role": "user", "content": "What is 20 + 22?"}]}
    first = agent.invoke(question, config=config)["messages"][-1]
    report = mw.atlas_report(first) if hasattr(mw, "atlas_report") else None
    strict_quiet = len(quiet)  # strict: probe, guided and baseline all run unstreamed
    assert strict_quiet == 3
    model = (report.student_model if report is not None else student.model_name) or "scripted"
    key = gate_key(model, "t:sums", DEFAULT_TENANT)
    middleware.atlas.gate.store.load({key: FamilyEvidence(unchanged=600, judged=400, mode="audit",
                                                         mode_outcomes=100)})
    quiet.clear()
    out = agent.invoke({"messages": [{"role": "user", "content": "What is 20 + 22, again?"}]}, config=config)
    middleware.atlas.flush()
    got = mw.atlas_report(out["messages"][-1]) if hasattr(mw, "atlas_report") else None
    assert got is None or got.mode == "audit"
    assert len(quiet) < strict_quiet  # the guided answer streamed as the student wrote it
