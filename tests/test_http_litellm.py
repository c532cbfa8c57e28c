"""The loop over real HTTP: LiteLLM on the wire against loopback OpenAI-compatible servers."""

from __future__ import annotations

import asyncio
import gzip
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import QUESTION, STUDENT_SCRIPT, TEACHER_SCRIPT

from atlas_middleware import Atlas, Reason
from atlas_middleware.testing import HTTPFault, OpenAITestServer, RawBody, ScriptedBackend

litellm = pytest.importorskip("litellm")


@pytest.fixture(params=["lean", "litellm"])
def path(request: pytest.FixtureRequest) -> bool:
    """Run every test on both client paths: direct httpx and litellm.completion."""
    return request.param == "lean"


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """``atlas.completion`` or ``atlas.acompletion``: each path has its own transport."""
    if request.param == "sync":
        return lambda atlas, **kwargs: atlas.completion(**kwargs)
    return lambda atlas, **kwargs: asyncio.run(atlas.acompletion(**kwargs))


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
        assert (r.decision, r.reason) == ("baseline", Reason.NO_EVIDENCE)
        assert resp.choices[0].message.content.endswith("41")
        assert resp.usage.completion_tokens == r.usage.baseline.completion_tokens  # the delivered answer's
        assert r.usage.total().exact and r.usage.teacher.calls == 1

        async def go():  # type: ignore[no-untyped-def]
            return await atlas.acompletion(messages=QUESTION, **_student(student))

        assert asyncio.run(go()).atlas.reason == Reason.NO_EVIDENCE
    assert sorted(student.backend.roles()) == ["baseline"] * 2 + ["guided"] * 2 + ["probe"] * 2
    # The teacher's key went only to the teacher, the student's only to the student.
    assert {r["headers"]["authorization"] for r in teacher.requests} == {"Bearer sk-teacher-key-abcdef"}
    assert {r["headers"]["authorization"] for r in student.requests} == {"Bearer sk-student-key-123456"}


def test_teacher_rate_limit_is_retried_with_retry_after(servers, path, call) -> None:
    student, teacher = servers
    faults = iter([HTTPFault(429, "slow down", {"Retry-After": "0.3"})])
    teacher.backend.script["teacher"] = lambda req: next(faults, TEACHER_SCRIPT["teacher"])
    with _atlas(teacher, path, teacher_timeout=8) as atlas:
        t0 = time.perf_counter()
        r = call(atlas, messages=QUESTION, **_student(student)).atlas
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
def test_teacher_http_failures_fall_back(servers, path, call, fault, reason) -> None:
    student, teacher = servers
    teacher.backend.script["teacher"] = fault
    with _atlas(teacher, path, teacher_timeout=3, teacher_retries=1) as atlas:
        resp = call(atlas, messages=QUESTION, **_student(student))
    assert (resp.atlas.decision, resp.atlas.reason) == ("student_only", reason)
    assert resp.choices[0].message.content.endswith("41")
    assert "sk-teacher-key" not in resp.atlas.model_dump_json()


def test_student_error_surfaces_as_litellm_exception(servers, path, call) -> None:
    student, teacher = servers
    student.backend.script.update(baseline=HTTPFault(400, "context too long"), guided=HTTPFault(400, "context too long"))
    with _atlas(teacher, path) as atlas, pytest.raises(litellm.BadRequestError) as raised:
        call(atlas, messages=QUESTION, **_student(student))
    assert raised.value.status_code == 400 and "context too long" in str(raised.value)


def test_hung_teacher_costs_at_most_the_timeout(servers, path, call) -> None:
    student, teacher = servers
    teacher.backend.delays["teacher"] = 10
    with _atlas(teacher, path, teacher_timeout=0.5) as atlas:
        t0 = time.perf_counter()
        r = call(atlas, messages=QUESTION, **_student(student)).atlas
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
    from atlas_middleware.backends.http.transport import LeanHTTPBackend

    lean = LeanHTTPBackend()
    base = {"api_base": "http://127.0.0.1:1/v1"}
    assert lean.accepts(ChatRequest(model="hosted_vllm/m", messages=QUESTION, params={**base, "temperature": 0}))
    assert not lean.accepts(ChatRequest(model="openai/gpt-4o", messages=QUESTION))  # no api_base: LiteLLM's env
    assert not lean.accepts(ChatRequest(model="anthropic/claude", messages=QUESTION, params=base))
    assert not lean.accepts(ChatRequest(model="openai/m", messages=QUESTION, params={**base, "num_retries": 2}))


# -- the lean transport itself, sync (httpx) and async (aiohttp): same errors, same bytes -----


def _lean_call(lean: Any, request: Any, mode: str) -> Any:
    if mode == "sync":
        return lean.complete(request)
    return asyncio.run(lean.acomplete(request))


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_lean_transports_map_failures_to_litellm_exceptions(servers, mode) -> None:
    from atlas_middleware import ChatRequest
    from atlas_middleware.backends.http.transport import LeanHTTPBackend
    from atlas_middleware.backends.retry import retry_after_seconds

    student, _ = servers
    lean = LeanHTTPBackend()
    params = {"api_base": student.url, "api_key": "sk-student-key-123456"}

    def request(role: str, **extra: Any) -> ChatRequest:
        return ChatRequest(model="openai/student", messages=[{"role": "user", "content": f"q [role:{role}]"}],
                           params={**params, **extra})

    try:
        student.backend.script["baseline"] = "The answer is 41"
        ok = _lean_call(lean, request("baseline", temperature=0, max_tokens=5), mode)
        assert ok.content == "The answer is 41" and ok.usage.exact
        sent = student.requests[-1]["body"]
        sent_before = len(student.requests)
        assert sent["model"] == "student" and (sent["temperature"], sent["max_tokens"]) == (0, 5)

        student.backend.script["baseline"] = HTTPFault(429, "slow down", {"Retry-After": "7"})
        with pytest.raises(litellm.RateLimitError) as limited:
            _lean_call(lean, request("baseline"), mode)
        assert retry_after_seconds(limited.value) == 7.0

        # A server (or its reverse proxy) that compresses error bodies: the same exception,
        # Retry-After included.
        student.backend.script["baseline"] = RawBody(
            gzip.compress(b'{"error": {"message": "slow down"}}'), status=429,
            headers={"Content-Encoding": "gzip", "Retry-After": "5"})
        with pytest.raises(litellm.RateLimitError, match="slow down") as compressed:
            _lean_call(lean, request("baseline"), mode)
        assert retry_after_seconds(compressed.value) == 5.0

        # A redirect is an answer on both transports, never followed (aiohttp would resend
        # the POST as a GET after a 302).
        student.backend.script["baseline"] = HTTPFault(302, "moved", {"Location": student.url + "/elsewhere"})
        with pytest.raises(litellm.APIError) as redirected:
            _lean_call(lean, request("baseline"), mode)
        assert redirected.value.status_code == 302 and len(student.requests) == sent_before + 3

        student.backend.script["baseline"] = RawBody(b"<html>not json</html>")
        with pytest.raises(litellm.APIError, match="malformed body"):
            _lean_call(lean, request("baseline"), mode)

        student.backend.script["baseline"] = "late"
        student.backend.delays["baseline"] = 2.0
        t0 = time.perf_counter()
        with pytest.raises(litellm.Timeout):
            _lean_call(lean, request("baseline", timeout=0.3), mode)
        assert time.perf_counter() - t0 < 1.5
        student.backend.delays.clear()

        with pytest.raises(litellm.APIConnectionError):  # nothing listens on port 1
            _lean_call(lean, request("baseline", api_base="http://127.0.0.1:1/v1"), mode)
    finally:
        lean.close()


def _open_fds() -> int:
    import os

    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/fd"), reason="needs /proc")
def test_lean_pools_of_finished_event_loops_are_released(servers) -> None:
    # ``asyncio.run`` per call makes a new loop each time; each loop gets its own pool, and
    # the pools of loops that have ended must not keep their sockets open.
    student, teacher = servers
    with _atlas(teacher, True, policy="off") as atlas:
        asyncio.run(atlas.acompletion(messages=QUESTION, **_student(student)))
        before = _open_fds()
        for _ in range(30):
            asyncio.run(atlas.acompletion(messages=QUESTION, **_student(student)))
        assert _open_fds() - before < 10
    assert all(r["headers"]["authorization"] == "Bearer sk-student-key-123456" for r in student.requests)


# -- an ATLAS-style teacher on the wire, under default settings ----------------------------

ATLAS_HINT = "Add the units first and carry the one into the tens."


@pytest.mark.parametrize(("right", "decision", "reason"), [
    ("42", "guided", Reason.JUDGE_GUIDED),  # the judge prefers the guided answer: delivered
    ("41", "baseline", Reason.JUDGE_BASELINE),  # guidance made it worse: never delivered
])
def test_atlas_teacher_plain_guidance_over_http_under_defaults(path, call, right, decision, reason) -> None:
    from atlas_middleware.testing import AtlasStyleTeacher, PairwiseJudge, guidance_of

    teacher_backend = ScriptedBackend({
        "teacher": AtlasStyleTeacher(ATLAS_HINT, think_words=300),  # plain text after a Qwen3 <think>
        "judge_pair": PairwiseJudge(is_right=lambda a: a.rstrip().endswith(right), think=True),
    })
    with OpenAITestServer(ScriptedBackend(dict(STUDENT_SCRIPT))) as student, OpenAITestServer(teacher_backend) as teacher:
        atlas = Atlas(teacher="hosted_vllm/Arc-Intelligence/ATLAS-8B-Thinking", teacher_api_base=teacher.url,
                      ledger="none", lean_http=path)
        try:
            resp = call(atlas, model="openai/student", api_base=student.url, api_key="k", messages=QUESTION)
        finally:
            atlas.close()
    r = resp.atlas
    assert (r.protocol, r.decision, r.reason) == ("atlas", decision, reason)
    assert resp.choices[0].message.content.endswith(right)
    # what crossed the wire: the training template to the teacher, its plain teaching to the student
    (teacher_body,) = [q["body"] for q in teacher.requests if "adaptive teaching assistant" in str(q["body"]["messages"])]
    assert len(teacher_body["messages"]) == 1 and teacher_body["max_tokens"] == 2048
    guided = [q["body"] for q in student.requests if "A teacher has provided" in str(q["body"]["messages"])]
    assert len(guided) == 1 and guided[0]["messages"][-1]["role"] == "user"
    from atlas_middleware.messages import ChatRequest

    assert guidance_of(ChatRequest(model="m", messages=guided[0]["messages"])) == ATLAS_HINT
    assert "Okay, the student" not in str(guided[0]["messages"])  # the teacher's reasoning stayed private
    assert r.usage.judge.calls == 2 and r.usage.teacher.calls == 1
