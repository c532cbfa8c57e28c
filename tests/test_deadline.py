"""The caller's ``timeout`` bounds the whole taught call, and its headers reach the student only.

A plain ``litellm.completion(..., timeout=T)`` answers or raises LiteLLM's ``Timeout`` within
T. A taught call makes three to five calls; each test below makes one of them hang far past
T and checks that the call still ends by T: with the student's own answer when the teacher
is the slow one (fail-open), with LiteLLM's ``Timeout`` when the student is. The bounds are
loose (a hung call sleeps 10 s, the deadline is under 1 s): they tell "capped" from "waited
for the hung call", not fast from slow.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import litellm
import pytest
from conftest import ADDITION_BASELINE, ADDITION_QUESTION

from atlas_middleware import Atlas, InvalidRequestError, Reason
from atlas_middleware.provider import AtlasLLM, register
from atlas_middleware.teaching.deadline import seconds_of
from atlas_middleware.testing import OpenAITestServer, Reply, ScriptedBackend

HUNG = 10.0
DEADLINE = 0.8


def _timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    t0 = time.monotonic()
    out = fn(*args, **kwargs)
    return out, time.monotonic() - t0


@pytest.mark.parametrize("policy", ["strict", "verify", "audit", "off"])
def test_a_hung_teacher_gives_the_students_answer_within_the_deadline(make_atlas, call, policy: str) -> None:
    atlas, student, _ = make_atlas(policy=policy, teacher_delays={"teacher": HUNG}, teacher_timeout=60)
    resp, elapsed = _timed(call, atlas, timeout=DEADLINE)
    assert elapsed < DEADLINE + 0.5, f"waited {elapsed:.2f} s for a {DEADLINE} s deadline"
    assert resp.atlas.reason == Reason.TEACHER_TIMEOUT and resp.atlas.decision in ("baseline", "student_only")
    assert resp.choices[0].message.content == student.script["baseline"]


def test_without_a_baseline_alongside_the_teacher_gets_half_the_budget(make_atlas, call) -> None:
    # Under off the student's own answer starts only after the teacher gives up: it must
    # give up early enough for that answer to arrive in time.
    atlas, _, teacher = make_atlas(policy="off", teacher_delays={"teacher": HUNG}, teacher_timeout=60,
                                   student_delays={"baseline": 0.25})
    resp, elapsed = _timed(call, atlas, timeout=1.0)
    assert resp.atlas.reason == Reason.TEACHER_TIMEOUT and elapsed < 1.5
    (req,) = [r for role, r in teacher.calls if role == "teacher"]
    assert req.params["timeout"] <= 0.5 + 1e-6  # its transport was told too


def test_under_strict_the_guidance_path_may_use_the_whole_budget(make_atlas, call) -> None:
    atlas, _, teacher = make_atlas(policy="strict", teacher_timeout=60)
    call(atlas, timeout=4.0)
    (req,) = [r for role, r in teacher.calls if role == "teacher"]
    assert 2.0 < req.params["timeout"] <= 4.0


def test_a_hung_student_raises_litellms_timeout_by_the_deadline(make_atlas, call) -> None:
    atlas, _, _ = make_atlas(policy="strict", student_delays={"baseline": HUNG, "guided": HUNG})
    t0 = time.monotonic()
    with pytest.raises(litellm.Timeout):
        call(atlas, timeout=DEADLINE)
    assert time.monotonic() - t0 < DEADLINE + 0.5


def test_a_slow_guided_answer_falls_back_to_the_baseline_by_the_deadline(make_atlas, call) -> None:
    atlas, student, _ = make_atlas(policy="strict", student_delays={"guided": HUNG})
    resp, elapsed = _timed(call, atlas, timeout=DEADLINE)
    assert elapsed < DEADLINE + 0.5
    assert resp.atlas.reason == Reason.GUIDED_ERROR and resp.choices[0].message.content == student.script["baseline"]
    assert any(e.role == "guided" and e.type == "Timeout" for e in resp.atlas.errors)


def test_an_audit_after_delivery_is_not_held_to_the_deadline(make_atlas) -> None:
    # The user has the answer; the audit's baseline may take longer than the deadline.
    atlas, student, _ = make_atlas(policy="audit", audit_rate=1.0, student_delays={"baseline": 0.5})
    resp = atlas.completion(model="m", messages=[{"role": "user", "content": "What is 20 + 22?"}], timeout=0.3)
    atlas.flush()
    assert resp.atlas.decision == "guided"
    (base,) = [r for role, r in student.calls if role == "baseline"]
    assert "timeout" not in base.params


def test_without_a_timeout_nothing_is_capped(make_atlas, call) -> None:
    atlas, student, _ = make_atlas(policy="strict")
    call(atlas)
    assert all("timeout" not in r.params for role, r in student.calls if role in ("guided", "baseline"))


def test_a_live_stream_gets_the_deadline_on_its_transport(make_atlas) -> None:
    atlas, student, _ = make_atlas(policy="off", teacher_delays={"teacher": HUNG}, teacher_timeout=60)
    t0 = time.monotonic()
    text = "".join(c.choices[0].delta.content or "" for c in atlas.completion(
        model="m", messages=[{"role": "user", "content": "What is 20 + 22?"}], stream=True, timeout=DEADLINE)
        if c.choices)
    assert time.monotonic() - t0 < DEADLINE + 0.5
    assert text == student.script["baseline"]
    (req,) = [r for role, r in student.calls if role == "baseline"]
    assert 0 < req.params["timeout"] <= DEADLINE


@pytest.mark.parametrize(("given", "seconds"), [
    (None, None), (2, 2.0), ("1.5", 1.5), (httpx.Timeout(5.0, connect=1.0), 5.0),
    (httpx.Timeout(None), None),
])
def test_timeout_forms(given: Any, seconds: float | None) -> None:
    assert seconds_of(given) == seconds


@pytest.mark.parametrize("bad", [0, -1, "soon", True])
def test_a_bad_timeout_is_the_callers_error(make_atlas, bad: Any) -> None:
    atlas, student, _ = make_atlas()
    with pytest.raises(InvalidRequestError, match="timeout"):
        atlas.completion(model="m", messages=[{"role": "user", "content": "hi"}], timeout=bad)
    assert student.calls == []


# -- the atlas/ provider: LiteLLM's own timeout and headers arguments ------------------------


@pytest.fixture
def provider_over_http() -> Any:
    student = ScriptedBackend({"probe": "It is an addition.", "guided": "The answer is 4",
                               "baseline": ADDITION_BASELINE})
    teacher = ScriptedBackend({"teacher": Reply("<teaching>Add them.</teaching>", delay=HUNG)})
    with OpenAITestServer(student, models=["gpt-4o-mini"]) as s_srv, OpenAITestServer(teacher) as t_srv:
        provider = register(AtlasLLM(teacher="openai/teacher", teacher_api_base=t_srv.url, teacher_api_key="k",
                                     ledger="none", teacher_timeout=60))
        # LiteLLM's own first call (imports, its logging set-up) costs seconds on 2 cores,
        # outside any deadline of ours: pay it before the timed calls.
        litellm.completion(model="atlas/openai/gpt-4o-mini", api_base=s_srv.url, api_key="k",
                           messages=ADDITION_QUESTION, metadata={"atlas": {"teach": False}})
        warm_up = len(s_srv.requests)
        yield provider, s_srv, t_srv, warm_up
        provider.close()


def test_provider_timeout_bounds_the_whole_call_and_headers_reach_the_student_only(provider_over_http: Any) -> None:
    _, s_srv, t_srv, warm_up = provider_over_http
    resp, elapsed = _timed(litellm.completion, model="atlas/openai/gpt-4o-mini", api_base=s_srv.url, api_key="k",
                           messages=ADDITION_QUESTION, timeout=1.0, extra_headers={"X-Trace": "abc"},
                           headers={"X-Tenant": "t1"})
    assert elapsed < 1.5 and resp.atlas.reason == Reason.TEACHER_TIMEOUT
    assert resp.choices[0].message.content == ADDITION_BASELINE
    taught = s_srv.requests[warm_up:]
    assert len(taught) == 2  # probe and baseline (the guided call never came: the teacher hung)
    assert all(r["headers"].get("x-trace") == "abc" and r["headers"].get("x-tenant") == "t1" for r in taught)
    assert t_srv.requests and all("x-trace" not in r["headers"] and "x-tenant" not in r["headers"]
                                  for r in t_srv.requests)


def test_provider_async_timeout_bounds_the_whole_call(provider_over_http: Any) -> None:
    _, s_srv, _, _ = provider_over_http

    async def go() -> Any:
        return await litellm.acompletion(model="atlas/openai/gpt-4o-mini", api_base=s_srv.url, api_key="k",
                                         messages=ADDITION_QUESTION, timeout=1.0)

    resp, elapsed = _timed(asyncio.run, go())
    assert elapsed < 1.5 and resp.atlas.reason == Reason.TEACHER_TIMEOUT


def test_provider_stream_timeout_bounds_the_whole_call(provider_over_http: Any) -> None:
    _, s_srv, _, _ = provider_over_http
    t0 = time.monotonic()
    stream = litellm.completion(model="atlas/openai/gpt-4o-mini", api_base=s_srv.url, api_key="k",
                                messages=ADDITION_QUESTION, timeout=1.0, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert time.monotonic() - t0 < 1.5 and text == ADDITION_BASELINE


def test_atlas_hung_student_over_http_raises_litellms_timeout() -> None:
    student = ScriptedBackend({"*": Reply("late", delay=HUNG)})
    teacher = ScriptedBackend({"teacher": "<teaching>Add them.</teaching>"})
    with OpenAITestServer(student) as s_srv, OpenAITestServer(teacher) as t_srv:
        with Atlas(teacher="openai/teacher", teacher_api_base=t_srv.url, teacher_api_key="k", ledger="none") as atlas:
            t0 = time.monotonic()
            with pytest.raises(litellm.Timeout):
                atlas.completion(model="openai/student", api_base=s_srv.url, api_key="k",
                                 messages=ADDITION_QUESTION, timeout=DEADLINE)
            assert time.monotonic() - t0 < DEADLINE + 0.7


def test_a_retrying_teacher_stays_within_the_deadline_call_after_call() -> None:
    # The teacher's transport timeout and the driver's deadline are the same instant; when
    # the transport's fires first, its error must not start a retry past the deadline (the
    # retry budget is the call's own timeout, not the longer teacher_timeout).
    student = ScriptedBackend({"*": "The answer is 4"})
    teacher = ScriptedBackend({"teacher": Reply("<teaching>Add them.</teaching>", delay=HUNG)})
    with OpenAITestServer(student) as s_srv, OpenAITestServer(teacher) as t_srv:
        atlas = Atlas(teacher="openai/teacher", teacher_api_base=t_srv.url, teacher_api_key="k", ledger="none",
                      teacher_timeout=2.0, teacher_retries=3)

        async def go() -> list[float]:
            out = []
            for _ in range(3):
                resp = await atlas.acompletion(model="openai/student", api_base=s_srv.url, api_key="k",
                                               messages=ADDITION_QUESTION, timeout=0.5)
                assert resp.atlas.reason == Reason.TEACHER_TIMEOUT
                out.append(resp.atlas.latency_ms["teacher"])
            await atlas.aclose()
            return out

        latencies = asyncio.run(go())
    assert max(latencies) < 900, latencies  # one attempt each: ~500 ms, not 500 + back-off + 500
