"""Twins that must not drift: one suite over each pair of implementations of one behaviour.

* the lean path's two HTTP clients (``LeanHTTPBackend``: httpx for sync calls, aiohttp for
  async ones): timeouts, proxies from the environment, redirects, errors, usage, streams;
* the two drivers (``SyncDriver``, ``AsyncDriver``): the flow's outcomes, the same for each,
  and their own contract over a hand-written flow (a live stream passed on, closed early, read
  once; a flow that does not deliver after it is refused);
* a teacher group's sync and async streams: chunk by chunk, both of them.

Everything runs against the loopback servers of ``atlas_middleware.testing``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import QUESTION, STUDENT_SCRIPT, TEACHER_SCRIPT

from atlas_middleware import Atlas, ChatRequest, Reason
from atlas_middleware.backends.http.transport import LeanHTTPBackend
from atlas_middleware.report import CallReport
from atlas_middleware.runtime.drivers import AsyncDriver, StreamClosed, SyncDriver
from atlas_middleware.teaching.commands import CallResult, Deliver, ModelCall, Stream
from atlas_middleware.teaching.flow import Flow
from atlas_middleware.testing import HTTPFault, OpenAITestServer, RawBody, Reply, ScriptedBackend
from atlas_middleware.testing.scripted import hold_stream

litellm = pytest.importorskip("litellm")

KEY = "sk-conformance-key-123456"


@pytest.fixture
def server() -> Iterator[OpenAITestServer]:
    with OpenAITestServer(ScriptedBackend({"baseline": "The answer is 41"}), api_key=KEY) as s:
        yield s


# -- the lean path's two clients ---------------------------------------------------------------

Client = Callable[[LeanHTTPBackend, ChatRequest], Any]


def _whole(lean: LeanHTTPBackend, request: ChatRequest, sync: bool) -> Any:
    return lean.complete(request) if sync else asyncio.run(lean.acomplete(request))


def _chunks(lean: LeanHTTPBackend, request: ChatRequest, sync: bool) -> list[Any]:
    if sync:
        return list(lean.stream(request))

    async def collect() -> list[Any]:
        return [c async for c in lean.astream(request)]

    return asyncio.run(collect())


@pytest.fixture(params=["httpx", "aiohttp"])
def sync(request: pytest.FixtureRequest) -> bool:
    """Which client: httpx (``complete``/``stream``) or aiohttp (``acomplete``/``astream``)."""
    return request.param == "httpx"


@pytest.fixture
def lean() -> Iterator[LeanHTTPBackend]:
    backend = LeanHTTPBackend()
    yield backend
    backend.close()


def _request(base: str, **params: Any) -> ChatRequest:
    return ChatRequest(model="openai/student", messages=[{"role": "user", "content": "What is 20 + 22?"}],
                       params={"api_base": base, "api_key": KEY, **params})


def test_clients_send_the_same_bytes_and_read_the_usage(server, lean, sync) -> None:
    out = _whole(lean, _request(server.url, temperature=0, max_tokens=5), sync)
    assert out.content == "The answer is 41"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens, out.usage.exact) == (5, 4, True)
    sent = server.requests[-1]
    assert sent["body"] == {"model": "student", "messages": [{"role": "user", "content": "What is 20 + 22?"}],
                            "temperature": 0, "max_tokens": 5}
    assert sent["headers"]["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize(("status", "error"), [
    (400, "BadRequestError"), (401, "AuthenticationError"), (404, "NotFoundError"), (408, "Timeout"),
    (429, "RateLimitError"), (500, "InternalServerError"), (503, "ServiceUnavailableError"), (504, "Timeout"),
    (418, "APIError"),
])
def test_clients_map_statuses_to_litellms_exceptions(server, lean, sync, status, error) -> None:
    server.backend.script["baseline"] = HTTPFault(status, "no", {"Retry-After": "3"})
    with pytest.raises(getattr(litellm, error)) as raised:
        _whole(lean, _request(server.url), sync)
    assert raised.value.status_code == status


def test_clients_refuse_redirects(server, lean, sync) -> None:
    # A redirect is an error answer, never followed (aiohttp would resend the POST as a GET).
    server.backend.script["baseline"] = HTTPFault(302, "moved", {"Location": server.url + "/elsewhere"})
    with pytest.raises(litellm.APIError) as whole:
        _whole(lean, _request(server.url), sync)
    with pytest.raises(litellm.APIError) as streamed:
        _chunks(lean, _request(server.url), sync)
    assert whole.value.status_code == streamed.value.status_code == 302
    assert len(server.requests) == 2


def test_clients_time_out_as_litellm_does(server, lean, sync) -> None:
    server.backend.delays["baseline"] = 2.0
    t0 = time.perf_counter()
    with pytest.raises(litellm.Timeout):
        _whole(lean, _request(server.url, timeout=0.3), sync)
    with pytest.raises(litellm.Timeout):
        _chunks(lean, _request(server.url, timeout=0.3), sync)
    assert time.perf_counter() - t0 < 3.0


def test_clients_map_transport_failures(server, lean, sync) -> None:
    with pytest.raises(litellm.APIConnectionError):  # nothing listens on port 1
        _whole(lean, _request("http://127.0.0.1:1/v1"), sync)
    server.backend.script["baseline"] = RawBody(b"<html>not json</html>")
    with pytest.raises(litellm.APIError, match="malformed body"):
        _whole(lean, _request(server.url), sync)


def test_clients_go_through_the_environments_proxy(server, sync, monkeypatch) -> None:
    # The test server as a forward proxy: it answers the absolute-form request itself.
    target = "http://atlas-conformance.invalid/v1"
    monkeypatch.setenv("HTTP_PROXY", server.url.removesuffix("/v1"))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    lean = LeanHTTPBackend()
    try:
        assert _whole(lean, _request(target), sync).content == "The answer is 41"
        assert "".join(c.content or "" for c in _chunks(lean, _request(target), sync)) == "The answer is 41"
    finally:
        lean.close()
    assert [r["headers"]["host"] for r in server.requests] == ["atlas-conformance.invalid"] * 2


def test_clients_bypass_the_proxy_for_no_proxy_hosts(server, sync, monkeypatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:1")  # a dead proxy: used, it would fail
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    lean = LeanHTTPBackend()
    try:
        assert _whole(lean, _request(server.url), sync).content == "The answer is 41"
    finally:
        lean.close()


def test_clients_stream_chunks_with_usage_last(server, lean, sync) -> None:
    got = _chunks(lean, _request(server.url), sync)
    assert "".join(c.content or "" for c in got) == "The answer is 41" and len(got) > 2
    assert got[-1].usage is not None and got[-1].usage.completion_tokens == 4 and got[-1].usage.exact
    sent = server.requests[-1]
    assert sent["body"]["stream"] is True and sent["body"]["stream_options"] == {"include_usage": True}
    assert sent["headers"]["accept"] == "text/event-stream"


def test_clients_raise_a_streams_failures(server, lean, sync) -> None:
    server.backend.script["baseline"] = HTTPFault(429, "slow down")
    with pytest.raises(litellm.RateLimitError):  # before the first chunk
        _chunks(lean, _request(server.url), sync)
    server.backend.script["baseline"] = Reply("one two three", stream_error=RuntimeError("replica died"))
    with pytest.raises(litellm.APIError, match="replica died"):  # an error event mid-stream
        _chunks(lean, _request(server.url), sync)
    server.backend.script["baseline"] = RawBody(b'data: {"choices": [{"index": 0, "delta": {"content": "o"}}]}\n\n',
                                                content_type="text/event-stream")
    with pytest.raises(litellm.APIConnectionError, match="before its finish reason"):  # cut short
        _chunks(lean, _request(server.url), sync)


# -- the two drivers: the flow's outcomes ----------------------------------------------------


@pytest.fixture
def servers() -> Iterator[tuple[OpenAITestServer, OpenAITestServer]]:
    student = OpenAITestServer(ScriptedBackend(dict(STUDENT_SCRIPT)), api_key=KEY)
    teacher = OpenAITestServer(ScriptedBackend(dict(TEACHER_SCRIPT)), api_key=KEY)
    with student, teacher:
        yield student, teacher


OUTCOMES: dict[str, tuple[dict[str, Any], dict[str, Any], str, Reason, str]] = {
    # name: (student script, teacher script, decision, reason, the delivered answer's end)
    "answers differ": ({}, {}, "baseline", Reason.NO_EVIDENCE, "41"),
    "agreement": ({"baseline": "The answer is 42"}, {}, "baseline", Reason.AGREEMENT, "42"),
    "teacher error": ({}, {"teacher": HTTPFault(400, "bad")}, "student_only", Reason.TEACHER_ERROR, "41"),
    "guided error": ({"guided": HTTPFault(400, "bad")}, {}, "baseline", Reason.GUIDED_ERROR, "41"),
    "teacher timeout": ({}, {"teacher": "<teaching>late</teaching>"}, "student_only", Reason.TEACHER_TIMEOUT, "41"),
}


@pytest.mark.parametrize("driver", ["SyncDriver", "AsyncDriver"])
@pytest.mark.parametrize("outcome", list(OUTCOMES))
def test_drivers_reach_the_same_outcome(servers, driver, outcome) -> None:
    student, teacher = servers
    student_script, teacher_script, decision, reason, answer = OUTCOMES[outcome]
    student.backend.script.update(student_script)
    teacher.backend.script.update(teacher_script)
    if outcome == "teacher timeout":
        teacher.backend.delays["teacher"] = 2.0
    kwargs = {"model": "openai/student", "api_base": student.url, "api_key": KEY, "messages": QUESTION}
    with Atlas(teacher="openai/teacher", teacher_api_base=teacher.url, teacher_api_key=KEY, teacher_timeout=0.5,
               judge="answer", ledger="none", policy="strict", lean_http=True) as atlas:
        if driver == "SyncDriver":
            resp = atlas.completion(**kwargs)
        else:
            resp = asyncio.run(atlas.acompletion(**kwargs))
    r = resp.atlas
    assert (r.decision, r.reason) == (decision, reason)
    assert resp.choices[0].message.content.endswith(answer)


# -- the drivers' own contract, over a hand-written flow -------------------------------------


def _live_flow(sent: list[CallResult], then: str) -> Flow:
    """Stream the guided answer live, keep the result the driver sends back when the stream
    ends, then: deliver it, stream again, or end without delivering."""
    report = CallReport(student_model="student", policy="off")
    request = ChatRequest(model="student", messages=QUESTION).in_context(role="guided")
    call = ModelCall("guided", "student", request)
    result = yield Stream(call, report)
    sent.append(result)
    if then == "stream again":
        yield Stream(call, report)
    elif then == "deliver":
        yield Deliver(result.response, result.error, report)
    return report


def _read_live(driver: str, flow: Flow, take: int | None = None) -> tuple[Any, list[Any], list[CallReport]]:
    """Run ``flow`` with ``driver`` and read its live stream whole (or its first ``take``
    chunks, then close it): (the stream, its chunks read, the reports ``on_done`` got)."""
    backends = {"student": ScriptedBackend({"guided": "one two three"}), "teacher": ScriptedBackend()}
    done: list[CallReport] = []
    if driver == "SyncDriver":
        sync = SyncDriver(backends)
        try:
            stream = sync.run(flow, lambda report, out: done.append(report))
            chunks = iter(stream)
            got = list(chunks) if take is None else [next(chunks) for _ in range(take)]
            chunks.close()
        finally:
            sync.close()
        return stream, got, done

    async def on_done(report: CallReport, out: Any) -> None:
        done.append(report)

    async def read() -> tuple[Any, list[Any]]:
        stream = await AsyncDriver(backends).run(flow, on_done)
        chunks = aiter(stream)
        got = [c async for c in chunks] if take is None else [await anext(chunks) for _ in range(take)]
        await chunks.aclose()
        return stream, got

    stream, got = asyncio.run(read())
    return stream, got, done


def _read_again(driver: str, stream: Any) -> None:
    if driver == "SyncDriver":
        next(iter(stream))
        return

    async def read() -> None:
        await anext(aiter(stream))

    asyncio.run(read())


@pytest.mark.parametrize("driver", ["SyncDriver", "AsyncDriver"])
def test_drivers_pass_a_live_stream_on_and_hand_the_flow_its_whole_answer(driver) -> None:
    sent: list[CallResult] = []
    stream, chunks, done = _read_live(driver, _live_flow(sent, "deliver"))
    assert "".join(c.content or "" for c in chunks) == "one two three"
    (result,) = sent
    assert result.streamed and result.error is None and result.response.content == "one two three"
    assert stream.delivered.response is result.response and stream.report is stream.delivered.report
    assert "total" in stream.report.latency_ms and "first_token" in stream.report.latency_ms
    assert len(done) == 1
    with pytest.raises(RuntimeError, match="read once"):
        _read_again(driver, stream)


@pytest.mark.parametrize("driver", ["SyncDriver", "AsyncDriver"])
def test_drivers_record_a_live_stream_closed_early(driver) -> None:
    sent: list[CallResult] = []
    stream, chunks, done = _read_live(driver, _live_flow(sent, "deliver"), take=1)
    assert [c.content for c in chunks] == ["one"]
    (result,) = sent
    assert result.streamed and result.response is None
    assert isinstance(result.error, StreamClosed) and "closed the stream" in str(result.error)
    assert stream.delivered.error is result.error and len(done) == 1


@pytest.mark.parametrize("driver", ["SyncDriver", "AsyncDriver"])
@pytest.mark.parametrize(("then", "complaint"), [("stream again", "streamed again"),
                                                  ("end", "ended without delivering")])
def test_drivers_refuse_a_flow_that_does_not_deliver_after_a_live_stream(driver, then, complaint) -> None:
    with pytest.raises(RuntimeError, match=complaint):
        _read_live(driver, _live_flow([], then))


# -- a teacher group's streams ---------------------------------------------------------------


@pytest.mark.parametrize("lean_http", [True, False], ids=["lean", "litellm"])
@pytest.mark.parametrize("way", ["stream", "astream"])
def test_group_streams_pass_chunks_on_as_they_come(lean_http, way) -> None:
    # The replica holds its stream after the first chunk until the consumer has it: a group
    # that gathered the answer before passing any of it on would wait here, and fail.
    from atlas_middleware.backends.group import TeacherGroupBackend

    backend = ScriptedBackend({"*": "one two three"})
    release = threading.Event()
    hold_stream(backend, "baseline", release)
    with OpenAITestServer(backend, api_key=KEY) as replica:
        group = TeacherGroupBackend([{"model": "openai/teacher", "api_base": replica.url, "api_key": KEY}],
                                    lean=lean_http)
        request = ChatRequest(model="x", messages=[{"role": "user", "content": "hi"}], params={"timeout": 5})

        def first(chunk: Any) -> None:
            assert chunk.content == "one" and chunk.usage is None  # a piece, not the whole answer
            release.set()

        try:
            got = _group_chunks(group, request, way, first)
        finally:
            group.close()
    assert "".join(c.content or "" for c in got) == "one two three"
    assert got[-1].usage is not None and got[-1].usage.completion_tokens == 3


def _group_chunks(group: Any, request: ChatRequest, way: str, first: Callable[[Any], None]) -> list[Any]:
    if way == "stream":
        chunks = group.stream(request)
        head = next(chunks)
        first(head)
        return [head, *chunks]

    async def collect() -> list[Any]:
        chunks = group.astream(request)
        head = await anext(chunks)
        first(head)
        return [head, *[c async for c in chunks]]

    return asyncio.run(collect())
