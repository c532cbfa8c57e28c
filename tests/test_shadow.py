"""``policy: shadow``: the student's own answer, untouched and at its own latency; teaching and
the comparison after delivery, on a sample, bounded, drained on close, never in the caller's
way; what teaching would have delivered in the report, the ledger and the savings report.

Every test runs on both drivers (``call``, or ``mode`` where the test holds calls itself).
The order-of-events tests hold the teacher (``hold_role``) until the delivered call is back:
a shadow that taught before delivering would wait for a release that comes only after it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import QUESTION, STUDENT_SCRIPT

from atlas_middleware import Atlas, Reason
from atlas_middleware._tenants import DEFAULT_TENANT
from atlas_middleware.errors import ConfigError
from atlas_middleware.learning.gate import gate_key
from atlas_middleware.ledger import SQLiteLedger
from atlas_middleware.offline.reporting.render import render_csv, render_table
from atlas_middleware.offline.reporting.summary import change_interval, summarize
from atlas_middleware.teaching import flow
from atlas_middleware.teaching.flow import sampled
from atlas_middleware.testing import PairwiseJudge
from atlas_middleware.testing.scripted import classify, hold_role, hold_stream

OWN = STUDENT_SCRIPT["baseline"]  # the student's own answer: "... The answer is 41"
RIGHT_42 = PairwiseJudge(is_right=lambda answer: answer.rstrip().endswith("42"))
PRICES = {"input_cost_per_token": 2e-6, "output_cost_per_token": 8e-6}
TEACHER_PRICES = {"input_cost_per_token": 1e-7, "output_cost_per_token": 1e-7}


def shadow(tmp_path: Path, **settings: Any) -> dict[str, Any]:
    return {"policy": "shadow", "ledger": f"sqlite:///{tmp_path / 'ledger.db'}",
            "teacher": {"judge_pair": RIGHT_42}, "teacher_params": TEACHER_PRICES,
            **settings, "shadow": {"rate": 1.0, **settings.get("shadow", {})}}


def build(make_atlas: Any, tmp_path: Path, student: dict[str, Any] | None = None, **settings: Any) -> Any:
    config = shadow(tmp_path, **settings)
    teacher = config.pop("teacher")
    return make_atlas(student=student, teacher={**teacher, **config.pop("teacher_script", {})}, **config)


def rows(atlas: Atlas) -> list[Any]:
    return sorted(atlas.ledger.records(), key=lambda r: r.created_at)


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run(atlas: Atlas, mode: str, after: Any = None, **kwargs: Any) -> Any:
    """One call on ``mode``'s driver; ``after()`` runs once it returned, before the flush."""
    kwargs = {"model": "student-model", "messages": QUESTION, **kwargs}
    if mode == "sync":
        out = atlas.completion(**kwargs)
        if after is not None:
            after()
        atlas.flush()
        return out

    async def go() -> Any:
        out = await atlas.acompletion(**kwargs)
        if after is not None:
            after()
        await atlas.aflush()
        return out

    return asyncio.run(go())


# -- what the caller gets -------------------------------------------------------------------


def test_the_students_own_answer_is_delivered_byte_identical(make_atlas, call, tmp_path: Path) -> None:
    atlas, student, teacher = build(make_atlas, tmp_path)
    alone = call(atlas, atlas={"teach": False}, **PRICES)
    student.calls.clear()
    got = call(atlas, **PRICES)
    # The same response as the student alone's, but for its id and time.
    strip = {"id", "created", "atlas"}
    assert got.model_dump(exclude=strip) == alone.model_dump(exclude=strip)
    assert got.choices[0].message.content == OWN
    # The delivered call is the caller's request as sent: no guidance, no extra parameter.
    delivered_role, delivered_request = student.calls[0]
    assert delivered_role == "baseline" and delivered_request.messages == QUESTION
    r = got.atlas
    assert (r.policy, r.decision, r.reason) == ("shadow", "student_only", Reason.SHADOW_SAMPLED)
    assert r.shadow is not None and r.shadow.sampled and r.shadow.reason is None  # the rest comes after
    assert r.usage.total().calls == 1 and r.usage.baseline.calls == 1
    assert r.guidance is None and r.cost_saved_usd == 0


def test_the_sample_is_taught_after_delivery_and_recorded(make_atlas, call, tmp_path: Path) -> None:
    atlas, student, teacher = build(make_atlas, tmp_path)
    got = call(atlas, **PRICES)
    (row,) = rows(atlas)
    r = row.report()
    assert row.reason == "shadow_sampled" and row.decision == "student_only" and row.policy == "shadow"
    s = r.shadow
    assert s is not None and s.reason == Reason.JUDGE_GUIDED and s.decision == "guided" and s.skipped is None
    assert sorted(student.roles()) == ["baseline", "guided", "probe"]
    assert teacher.roles() == ["teacher", "judge_pair", "judge_pair"]
    u = r.usage
    assert (u.probe.calls, u.teacher.calls, u.guided.calls, u.baseline.calls, u.judge.calls) == (1, 1, 1, 1, 2)
    # Dollars, from the priced roles: what teaching would have cost, unchecked and under strict.
    assert s.alone_usd == pytest.approx(u.baseline.cost_usd)
    assert s.unchecked_usd == pytest.approx((u.probe + u.teacher + u.guided).cost_usd)
    assert s.checked_usd == pytest.approx(r.cost_usd) and r.cost_usd == pytest.approx(u.total().cost_usd)
    # The shadow's real spend is on the report: measured against the answer it delivered.
    assert r.counterfactual_basis == "measured" and r.cost_saved_usd == pytest.approx(s.alone_usd - s.checked_usd)
    assert r.guidance is None and got.atlas.call_id == r.call_id  # texts stay out of the ledger


def test_only_the_sampled_share_is_taught(make_atlas, call, tmp_path: Path) -> None:
    rate = 0.5
    atlas, student, teacher = build(make_atlas, tmp_path, shadow={"rate": rate})
    reports = [call(atlas).atlas for _ in range(24)]
    records = {r.call_id: r.report() for r in rows(atlas)}
    chosen = [r for r in reports if sampled(r.call_id, rate, "shadow:")]
    assert 0 < len(chosen) < len(reports)
    for r in reports:
        taken = records[r.call_id]
        if r in chosen:
            assert r.reason == Reason.SHADOW_SAMPLED and taken.shadow is not None and taken.shadow.reason is not None
        else:
            assert r.reason == Reason.SHADOW_UNSAMPLED and taken.shadow is None
            assert taken.usage.total().calls == 1  # the student alone: nothing else asked
    assert teacher.roles().count("teacher") == len(chosen) and student.roles().count("guided") == len(chosen)


def test_the_call_returns_before_a_slow_teacher_finishes(make_atlas, mode, tmp_path: Path) -> None:
    atlas, student, teacher = build(make_atlas, tmp_path)
    events: list[str] = []
    release = threading.Event()
    hold_role(teacher, "teacher", release, also_async=True)
    complete, acomplete = teacher.complete, teacher.acomplete

    def noted(request: Any) -> Any:
        out = complete(request)
        events.append(f"{classify(request)} answered")
        return out

    async def anoted(request: Any) -> Any:
        out = await acomplete(request)
        events.append(f"{classify(request)} answered")
        return out

    teacher.complete, teacher.acomplete = noted, anoted

    def returned() -> None:
        assert events == []  # nothing of the teaching has come back yet
        events.append("caller has its answer")
        assert rows(atlas) == []  # the call is not over: its record waits for the shadow
        release.set()

    got = run(atlas, mode, returned)
    assert got.choices[0].message.content == OWN
    assert events == ["caller has its answer", "teacher answered", "judge_pair answered", "judge_pair answered"]
    assert teacher.roles().count("teacher") == 1
    (row,) = rows(atlas)
    assert row.report().shadow is not None and row.report().shadow.reason == Reason.JUDGE_GUIDED


def test_a_stream_passes_the_students_own_through_as_it_comes(make_atlas, mode, tmp_path: Path) -> None:
    atlas, student, teacher = build(make_atlas, tmp_path)
    release = threading.Event()
    hold_stream(student, "baseline", release)  # the stream stops after its first chunk until we hold it

    def read(chunks: list[Any]) -> str:
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    if mode == "sync":
        stream = atlas.completion(model="student-model", messages=QUESTION, stream=True)
        items = iter(stream)
        first = next(items)
        assert teacher.roles() == []  # nothing of the teaching before the student's answer is out
        release.set()
        chunks = [first, *items]
        atlas.flush()
    else:
        async def go() -> tuple[Any, list[Any]]:
            stream = await atlas.acompletion(model="student-model", messages=QUESTION, stream=True)
            items = aiter(stream)
            first = await anext(items)
            assert teacher.roles() == []
            release.set()
            rest = [c async for c in items]
            await atlas.aflush()
            return stream, [first, *rest]

        stream, chunks = asyncio.run(go())
    assert read(chunks) == OWN
    assert stream.atlas.reason == Reason.SHADOW_SAMPLED
    (row,) = rows(atlas)
    assert row.report().shadow is not None and row.report().shadow.reason == Reason.JUDGE_GUIDED


def test_a_student_that_fails_raises_its_own_error_and_nothing_is_taught(make_atlas, call, tmp_path: Path) -> None:
    class StudentDown(Exception):
        status_code = 400  # the provider's own error: never retried

    atlas, student, teacher = build(make_atlas, tmp_path, {"baseline": StudentDown("student down")})
    with pytest.raises(StudentDown, match="student down"):
        call(atlas)
    assert teacher.roles() == [] and student.roles() == ["baseline"]
    (row,) = rows(atlas)
    assert row.failed and row.reason == "student_error"


# -- bounded, fail-open, drained -------------------------------------------------------------


@pytest.mark.parametrize("failure", ["teacher_error", "teacher_timeout", "guided_error", "judge_error"])
def test_failures_in_the_background_never_reach_the_caller(make_atlas, call, tmp_path: Path, failure: str) -> None:
    student = {"guided": RuntimeError("guided down")} if failure == "guided_error" else None
    teacher = {"teacher": RuntimeError("teacher down")} if failure == "teacher_error" else {}
    if failure == "judge_error":
        teacher = {"judge_pair": RuntimeError("judge down")}
    atlas, *_ = build(make_atlas, tmp_path, student, teacher_script=teacher, teacher_retries=1,
                      teacher_timeout=0.2, teacher_delays={"teacher": 3.0} if failure == "teacher_timeout" else None)
    got = call(atlas)
    assert got.choices[0].message.content == OWN and got.atlas.reason == Reason.SHADOW_SAMPLED
    (row,) = rows(atlas)
    r = row.report()
    assert not r.failed and r.reason == Reason.SHADOW_SAMPLED  # the delivered reason stays
    assert r.shadow is not None and r.shadow.reason == Reason(failure)
    assert r.errors  # said on the report


def test_a_failure_the_flow_does_not_catch_is_logged_and_the_call_still_recorded(
        make_atlas, call, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("a bug after delivery")

    monkeypatch.setattr(flow, "_shadow_info", broken)
    atlas, *_ = build(make_atlas, tmp_path)
    with caplog.at_level(logging.WARNING, "atlas_middleware"):
        got = call(atlas)
    assert got.choices[0].message.content == OWN
    (row,) = rows(atlas)
    assert row.call_id == got.atlas.call_id and row.reason == "shadow_sampled"
    assert any("a bug after delivery" in rec.getMessage() for rec in caplog.records)


def test_at_most_max_pending_run_at_once(make_atlas, mode, tmp_path: Path) -> None:
    atlas, student, teacher = build(make_atlas, tmp_path, shadow={"max_pending": 1})
    release = threading.Event()
    hold_role(teacher, "teacher", release, also_async=True)
    if mode == "sync":
        first = atlas.completion(model="student-model", messages=QUESTION)
        second = atlas.completion(model="student-model", messages=QUESTION)
        release.set()
        atlas.flush()
    else:
        async def go() -> tuple[Any, Any]:
            one = await atlas.acompletion(model="student-model", messages=QUESTION)
            await asyncio.sleep(0)  # its background task has taken the one slot
            two = await atlas.acompletion(model="student-model", messages=QUESTION)
            release.set()
            await atlas.aflush()
            return one, two

        first, second = asyncio.run(go())
    by_id = {r.call_id: r.report() for r in rows(atlas)}
    ran, busy = by_id[first.atlas.call_id], by_id[second.atlas.call_id]
    assert ran.shadow is not None and ran.shadow.reason == Reason.JUDGE_GUIDED
    assert busy.shadow is not None and busy.shadow.skipped == "busy" and busy.shadow.reason is None
    assert busy.usage.total().calls == 1 and teacher.roles().count("teacher") == 1
    assert atlas._shadow_slots.held == 0  # every slot given back


def test_close_drains_the_background_work(make_atlas, mode, tmp_path: Path) -> None:
    atlas, student, teacher = build(make_atlas, tmp_path, teacher_delays={"teacher": 0.4})
    if mode == "sync":
        got = atlas.completion(model="student-model", messages=QUESTION)
        atlas.close()
    else:
        async def go() -> Any:
            out = await atlas.acompletion(model="student-model", messages=QUESTION)
            await atlas.aclose()
            return out

        got = asyncio.run(go())
    (row,) = SQLiteLedger(tmp_path / "ledger.db").records()
    assert row.call_id == got.atlas.call_id
    assert row.report().shadow is not None and row.report().shadow.reason == Reason.JUDGE_GUIDED


# -- what it teaches the rest ------------------------------------------------------------------

FAST = {"ndr_target": 0.9, "credibility": 0.8, "min_evidence": 5, "prior_weight": 0, "gain_per_cost": 0,
        "explore": 0.0, "audit_rate": 0.5}


def test_shadow_comparisons_are_the_familys_evidence_and_adaptive_starts_from_them(
        make_atlas, call, tmp_path: Path) -> None:
    atlas, *_ = build(make_atlas, tmp_path, adaptive=FAST)
    for _ in range(8):
        call(atlas, atlas={"task": "sums"})
    e = atlas.gate.store.get(gate_key("student-model", "t:sums", DEFAULT_TENANT))
    assert e is not None and e.improved == pytest.approx(8, abs=0.1) and e.degraded == 0 and e.judged > 0
    atlas.close()
    # Switched on: a new process under adaptive rebuilds the evidence from the shadow's ledger.
    on, *_ = make_atlas(teacher={"judge_pair": RIGHT_42}, policy="adaptive", adaptive=FAST,
                        ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    first = call(on, atlas={"task": "sums"}).atlas
    assert first.adaptive is not None and first.adaptive.why != "learning" and first.adaptive.evidence >= 7
    assert first.mode in ("verify", "audit")


def test_the_breaker_hears_the_background_teacher(make_atlas, call, tmp_path: Path) -> None:
    atlas, *_ = build(make_atlas, tmp_path, teacher_script={"teacher": RuntimeError("teacher down")},
                      teacher_retries=1, circuit_failures=2)
    call(atlas)
    call(atlas)
    r = call(atlas).atlas
    assert r.reason == Reason.CIRCUIT_OPEN and r.shadow is None  # no background teaching while it is open


# -- the savings report ------------------------------------------------------------------------


def test_the_savings_report_says_what_teaching_would_have_delivered(make_atlas, call, tmp_path: Path) -> None:
    # Family "help": guidance fixes the answer; "harm": guidance breaks a right answer.
    def answer(guided: bool) -> Any:
        def reply(request: Any) -> str:
            harm = "harm" in str(request.messages[-1]["content"])
            return "The answer is 41" if guided == harm else "The answer is 42"
        return reply

    atlas, *_ = build(make_atlas, tmp_path, {"baseline": answer(False), "guided": answer(True)})
    for family, n in (("help", 6), ("harm", 3)):
        for _ in range(n):
            call(atlas, messages=[{"role": "user", "content": f"{family}: what is 20 + 22?"}],
                 atlas={"task": family}, **PRICES)
    summary = summarize(rows(atlas), ledger="test")
    by = {g.key: g for g in summary.families}
    helped, harmed = by["t:help"].shadow, by["t:harm"].shadow
    assert helped is not None and harmed is not None and summary.overall.shadow is not None
    assert (helped.calls, helped.sampled, helped.compared, helped.improved.count) == (6, 6, 6, 6)
    assert helped.accuracy_change == 1.0 and helped.ndr == 1.0
    assert (harmed.compared, harmed.degraded.count, harmed.accuracy_change, harmed.ndr) == (3, 3, -1.0, 0.0)
    assert harmed.ndr_low == pytest.approx(1 - harmed.degraded.high) and harmed.ndr_high == 1 - harmed.degraded.low
    assert -1.0 <= harmed.accuracy_change_low < harmed.accuracy_change_high  # type: ignore[operator]
    # Dollars per call, from the ledger's per-call figures.
    reports = [r.report() for r in rows(atlas) if r.task_family == "t:help"]
    unchecked = [r.shadow.alone_usd - r.shadow.unchecked_usd for r in reports]  # type: ignore[union-attr,operator]
    assert helped.priced == 6 and helped.unchecked_saved_usd_per_call == pytest.approx(sum(unchecked) / 6)
    assert helped.checked_saved_usd_per_call < helped.unchecked_saved_usd_per_call < 0  # type: ignore[operator]
    assert helped.checked_vs_alone > helped.unchecked_vs_alone > 1  # type: ignore[operator]
    text = " ".join(render_table(summary).split())
    assert "shadow: what teaching would have delivered" in text and "+100.0 pts" in text and "-100.0 pts" in text
    assert "t:harm │ 3 │ 3 │ 3 │ -100.0 pts" in text
    assert "shadow_accuracy_change" in render_csv(summary).splitlines()[0]


def test_change_interval_holds_the_observed_change_and_narrows_with_evidence() -> None:
    few = change_interval(3, 1, 5)
    many = change_interval(300, 100, 500)
    assert few[0] == many[0] == pytest.approx(0.4)
    assert few[1] < many[1] < 0.4 < many[2] < few[2]
    assert change_interval(0, 0, 4)[1] < 0 < change_interval(0, 0, 4)[2]  # never a zero-width interval
    assert change_interval(5, 0, 5)[2] == 1.0


def test_bad_shadow_settings_are_refused_naming_the_field() -> None:
    for bad, field in (({"rate": 1.5}, "shadow.rate"), ({"max_pending": 0}, "shadow.max_pending"),
                       ({"timeout": -1}, "shadow.timeout"), ({"rat": 0.2}, "shadow.rat")):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            Atlas(policy="shadow", shadow=bad, teacher="t", ledger="none")
    with pytest.raises(ConfigError, match="gate: learned"):
        Atlas(policy="shadow", gate="learned", teacher="t", ledger="none")


def test_shadow_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from atlas_middleware.config import AtlasConfig

    monkeypatch.setenv("ATLAS_POLICY", "shadow")
    monkeypatch.setenv("ATLAS_SHADOW", '{"rate": 0.3}')
    monkeypatch.setenv("ATLAS_SHADOW_MAX_PENDING", "4")
    config = AtlasConfig.load()
    assert config.policy == "shadow" and (config.shadow.rate, config.shadow.max_pending) == (0.3, 4)
