"""The loop over real HTTP: LiteLLM on the wire against loopback OpenAI-compatible servers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from conftest import QUESTION, STUDENT_SCRIPT, TEACHER_SCRIPT

from atlas_middleware import Atlas, Reason
from atlas_middleware.testing import HTTPFault, OpenAITestServer, RawBody, ScriptedBackend

litellm = pytest.importorskip("litellm")


@pytest.fixture(params=["lean", "litellm"])
def path(request: pytest.FixtureRequest) -> bool:
    """Run every test on both client paths: direct httpx and litellm.completion."""
    return request.param == "lean"


@pytest.fixture
def servers() -> Iterator[tuple[OpenAITestServer, OpenAITestServer]]:
    student = OpenAITestServer(ScriptedBackend(dict(STUDENT_SCRIPT)), api_key="sk-student-key-123456")
    teacher = OpenAITestServer(ScriptedBackend(dict(TEACHER_SCRIPT)), api_key="sk-teacher-key-abcdef")
    with student, teacher:
        yield student, teacher


def _atlas(teacher: OpenAITestServer, lean: bool, **kwargs) -> Atlas:  # type: ignore[no-untyped-def]
    kwargs.setdefault("ledger", "none")
    kwargs["lean_http"] = lean
    return Atlas(teacher="openai/teacher", teacher_api_base=teacher.url,
                 teacher_api_key="sk-teacher-key-abcdef", **kwargs)


def _student(student: OpenAITestServer) -> dict[str, str]:
    return {"model": "openai/student", "api_base": student.url, "api_key": "sk-student-key-123456"}


def test_sync_and_async_over_http(servers, path) -> None:
    student, teacher = servers
    with _atlas(teacher, path, judge="answer") as atlas:
        resp = atlas.completion(messages=QUESTION, **_student(student))
        assert isinstance(resp, litellm.ModelResponse)
        r = resp.atlas
        assert (r.decision, r.reason) == ("baseline", Reason.JUDGE_BASELINE)
        assert resp.choices[0].message.content.endswith("41")
        assert resp.usage.completion_tokens == r.usage.baseline.completion_tokens  # the delivered answer's
        assert r.usage.total().exact and r.usage.teacher.calls == 1

        async def go():  # type: ignore[no-untyped-def]
            return await atlas.acompletion(messages=QUESTION, **_student(student))

        assert asyncio.run(go()).atlas.reason == Reason.JUDGE_BASELINE
    assert sorted(student.backend.roles()) == ["baseline"] * 2 + ["guided"] * 2 + ["probe"] * 2
    # The teacher's key went only to the teacher, the student's only to the student.
    assert {r["headers"]["authorization"] for r in teacher.requests} == {"Bearer sk-teacher-key-abcdef"}
    assert {r["headers"]["authorization"] for r in student.requests} == {"Bearer sk-student-key-123456"}


def test_teacher_rate_limit_is_retried_with_retry_after(servers, path) -> None:
    student, teacher = servers
    faults = iter([HTTPFault(429, "slow down", {"Retry-After": "0.3"})])
    teacher.backend.script["teacher"] = lambda req: next(faults, TEACHER_SCRIPT["teacher"])
    with _atlas(teacher, path, teacher_timeout=8) as atlas:
        t0 = time.perf_counter()
        r = atlas.completion(messages=QUESTION, **_student(student)).atlas
        assert time.perf_counter() - t0 >= 0.3
    assert r.guidance == "Carry the one." and teacher.backend.roles().count("teacher") >= 2


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (HTTPFault(500, "boom"), Reason.TEACHER_ERROR),
        (HTTPFault(401, "bad key"), Reason.TEACHER_ERROR),
        (RawBody(b"<html>not json</html>"), Reason.TEACHER_ERROR),
    ],
)
def test_teacher_http_failures_fall_back(servers, path, fault, reason) -> None:
    student, teacher = servers
    teacher.backend.script["teacher"] = fault
    with _atlas(teacher, path, teacher_timeout=3, teacher_retries=1) as atlas:
        resp = atlas.completion(messages=QUESTION, **_student(student))
    assert (resp.atlas.decision, resp.atlas.reason) == ("student_only", reason)
    assert resp.choices[0].message.content.endswith("41")
    assert "sk-teacher-key" not in resp.atlas.model_dump_json()


def test_student_error_surfaces_as_litellm_exception(servers, path) -> None:
    student, teacher = servers
    student.backend.script.update(baseline=HTTPFault(400, "context too long"), guided=HTTPFault(400, "context too long"))
    with _atlas(teacher, path) as atlas, pytest.raises(litellm.BadRequestError):
        atlas.completion(messages=QUESTION, **_student(student))


def test_hung_teacher_costs_at_most_the_timeout(servers, path) -> None:
    student, teacher = servers
    teacher.backend.delays["teacher"] = 10
    with _atlas(teacher, path, teacher_timeout=0.5) as atlas:
        t0 = time.perf_counter()
        r = atlas.completion(messages=QUESTION, **_student(student)).atlas
        wall = time.perf_counter() - t0
    assert r.reason == Reason.TEACHER_TIMEOUT and wall < 3.0


def test_both_paths_report_identical_usage_and_type(servers) -> None:
    student, teacher = servers
    reports = {}
    for lean in (True, False):
        with _atlas(teacher, lean, policy="strict", judge="answer") as atlas:
            resp = atlas.completion(messages=QUESTION, **_student(student))
            assert isinstance(resp, litellm.ModelResponse)
            reports[lean] = resp.atlas
            router = atlas.backends["student"]
            chosen = router.backend(__import__("atlas_middleware").ChatRequest(
                model="openai/student", messages=QUESTION, params={"api_base": student.url}))
            assert (chosen is router.lean) == lean
    for role in ("probe", "teacher", "guided", "baseline"):
        a, b = getattr(reports[True].usage, role), getattr(reports[False].usage, role)
        assert (a.prompt_tokens, a.completion_tokens, a.calls) == (b.prompt_tokens, b.completion_tokens, b.calls)
    assert reports[True].cost_usd is None and reports[False].cost_usd is None  # unpriced: null, not 0


def test_lean_path_only_takes_what_it_can_serve_faithfully() -> None:
    from atlas_middleware import ChatRequest
    from atlas_middleware.backends.openai_http import LeanHTTPBackend

    lean = LeanHTTPBackend()
    base = {"api_base": "http://127.0.0.1:1/v1"}
    assert lean.accepts(ChatRequest(model="hosted_vllm/m", messages=QUESTION, params={**base, "temperature": 0}))
    assert not lean.accepts(ChatRequest(model="openai/gpt-4o", messages=QUESTION))  # no api_base: LiteLLM's env
    assert not lean.accepts(ChatRequest(model="anthropic/claude", messages=QUESTION, params=base))
    assert not lean.accepts(ChatRequest(model="openai/m", messages=QUESTION, params={**base, "num_retries": 2}))
