"""Live streams: where the decision allows it, the delivered answer streams as the student
writes it.

The time-to-first-token checks are structural, not timing bounds: the student (a scripted
backend, or the test server in front of it) stops after the first chunk of the streamed
call until the test, holding that chunk, lets it go on (``hold_stream``). A middleware that
gathered the whole answer before handing out its first chunk would wait for a consumer
that is waiting for it, and the stream would fail.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import ADDITION_GUIDED, ADDITION_QUESTION, QUESTION

from atlas_middleware import Atlas, Reason
from atlas_middleware.backends.base import stream_of
from atlas_middleware.messages import ChatRequest, ChatResponse
from atlas_middleware.runtime.chunks import Assembler, ChatChunk
from atlas_middleware.runtime.streaming import CompletionStream, LiveCompletionStream
from atlas_middleware.testing import OpenAITestServer, Reply, ScriptedBackend, teacher_reply
from atlas_middleware.testing.scripted import hold_stream

GUIDED = "20 + 22 = 42. The answer is 42"


class StudentDown(Exception):
    status_code = 400  # the provider's own error type: never retried, raised as is


def _text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def _usage(chunks: list[Any]) -> Any:
    (usage,) = [c.usage for c in chunks if getattr(c, "usage", None) is not None]
    return usage


# -- Atlas over scripted backends, both drivers ----------------------------------------------


def _read_held(atlas: Atlas, mode: str, release: threading.Event, **kwargs: Any) -> tuple[Any, Any, list[Any]]:
    """(stream, first chunk, the rest): the first chunk is read, and only then is the
    student let go on; ``mode`` is ``sync`` (completion) or ``async`` (acompletion)."""
    kwargs = {"model": "student-model", "messages": QUESTION, "stream": True, **kwargs}
    if mode == "sync":
        stream = atlas.completion(**kwargs)
        items = iter(stream)
        first = next(items)
        release.set()
        rest = list(items)
        atlas.flush()
        return stream, first, rest

    async def go() -> tuple[Any, Any, list[Any]]:
        stream = await atlas.acompletion(**kwargs)
        items = aiter(stream)
        first = await anext(items)
        release.set()
        rest = [c async for c in items]
        await atlas.aflush()
        return stream, first, rest

    return asyncio.run(go())


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_off_streams_the_guided_answer_as_the_student_writes_it(make_atlas, mode, tmp_path: Path) -> None:
    atlas, student, _ = make_atlas(student={"guided": GUIDED}, policy="off",
                                   ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    release = threading.Event()
    hold_stream(student, "guided", release)
    stream, first, rest = _read_held(atlas, mode, release, stream_options={"include_usage": True})
    assert isinstance(stream, LiveCompletionStream)
    assert first.choices[0].delta.content == "20" and first.choices[0].delta.role == "assistant"
    chunks = [first, *rest]
    assert _text(chunks) == GUIDED
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == len(GUIDED.split())
    assert chunks[-2].choices[0].finish_reason == "stop"
    # the usage chunk comes last (one empty choice, as LiteLLM's) and is the guided call's,
    # as the student counted it
    assert chunks[-1].choices[0].delta.content is None and chunks[-1].usage.model_dump(exclude_none=True) == {
        "prompt_tokens": stream.atlas.usage.guided.prompt_tokens,
        "completion_tokens": len(GUIDED.split()), "total_tokens": stream.atlas.usage.guided.total_tokens}
    report = stream.atlas  # completed when the stream ended
    assert (report.decision, report.reason) == ("guided", Reason.POLICY_OFF)
    assert report.usage.guided.calls == 1 and report.usage.guided.completion_tokens == len(GUIDED.split())
    assert report.usage.total().calls == 3  # probe, teacher, guided
    assert 0 < report.latency_ms["first_token"] <= report.latency_ms["total"]
    assert report.tokens_saved is None and not report.failed
    assert stream.response is not None and stream.response.content == GUIDED
    assert sorted(student.roles()) == ["guided", "probe"]
    (row,) = atlas.ledger.records()  # written when the stream ended, with the whole report
    assert row.report().usage.guided == report.usage.guided and row.call_id == report.call_id


def test_audit_streams_live_and_compares_after_the_stream(make_atlas, mode, tmp_path: Path) -> None:
    atlas, student, teacher = make_atlas(student={"guided": GUIDED}, policy="audit", audit_rate=1.0,
                                         judge="answer", ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    release = threading.Event()
    hold_stream(student, "guided", release)
    stream, _, rest = _read_held(atlas, mode, release)
    assert _text(rest) == GUIDED[2:]
    assert (stream.atlas.decision, stream.atlas.reason) == ("guided", Reason.AUDIT_SAMPLED)
    assert "baseline" in student.roles()  # after the stream, in the background
    (row,) = atlas.ledger.records()
    audited = row.report()
    assert audited.audit is not None and audited.audit.sampled and audited.usage.baseline.calls == 1


def test_the_student_alone_streams_live_under_any_policy(make_atlas, mode) -> None:
    # The teacher fails: the student's own answer is delivered without a comparison.
    atlas, student, _ = make_atlas(teacher={"teacher": RuntimeError("teacher down")}, policy="verify",
                                   teacher_retries=1)
    release = threading.Event()
    hold_stream(student, "baseline", release)
    stream, first, rest = _read_held(atlas, mode, release)
    assert isinstance(stream, LiveCompletionStream)
    assert _text([first, *rest]) == "20 plus 22 is 41. The answer is 41"
    assert (stream.atlas.decision, stream.atlas.reason) == ("student_only", Reason.TEACHER_ERROR)


@pytest.mark.parametrize("policy", ["strict", "verify"])
def test_strict_and_verify_still_replay_the_decided_answer(make_atlas, mode, policy) -> None:
    atlas, student, _ = make_atlas(student={"guided": GUIDED, "baseline": "The answer is 42"}, policy=policy,
                                   judge="answer")
    streamed: list[str] = []
    for name in ("stream", "astream"):
        method = getattr(student, name)
        setattr(student, name, lambda request, m=method: (streamed.append(request.model), m(request))[1])
    release = threading.Event()
    release.set()
    stream, first, rest = _read_held(atlas, mode, release, stream_options={"include_usage": True})
    assert isinstance(stream, CompletionStream) and streamed == []  # every student call made whole
    assert stream.atlas.reason in (Reason.AGREEMENT, Reason.VERIFIED)
    assert _text([first, *rest]) in (GUIDED, "The answer is 42")
    assert _usage(rest).completion_tokens in (len(GUIDED.split()), 4)


def test_a_failure_mid_stream_is_raised_and_recorded(make_atlas, mode, tmp_path: Path) -> None:
    error = StudentDown("connection reset by the student")
    atlas, student, _ = make_atlas(student={"guided": Reply(GUIDED, stream_error=error)}, policy="off",
                                   ledger=f"sqlite:///{tmp_path / 'ledger.db'}")
    got: list[Any] = []

    async def aread() -> Any:
        stream = await atlas.acompletion(model="m", messages=QUESTION, stream=True)
        async for chunk in stream:
            got.append(chunk)
        return stream

    with pytest.raises(StudentDown) as raised:
        if mode == "sync":
            stream = atlas.completion(model="m", messages=QUESTION, stream=True)
            for chunk in stream:
                got.append(chunk)
        else:
            asyncio.run(aread())
    assert raised.value is error  # the student's own exception, unchanged
    assert _text(got) == "20"  # what was written before the failure reached the user
    (row,) = atlas.ledger.records()
    report = row.report()
    assert report.failed and report.decision == "guided" and report.reason == Reason.STUDENT_ERROR
    assert [e.type for e in report.errors] == ["StudentDown"]
    assert student.roles().count("baseline") == 0  # nothing can follow a half-delivered answer


def test_a_failure_before_the_first_chunk_falls_back_to_the_student_alone(make_atlas, mode) -> None:
    atlas, student, _ = make_atlas(student={"guided": StudentDown("guided down")}, policy="off")
    release = threading.Event()
    hold_stream(student, "baseline", release)
    stream, first, rest = _read_held(atlas, mode, release)
    assert _text([first, *rest]) == "20 plus 22 is 41. The answer is 41"
    assert (stream.atlas.decision, stream.atlas.reason) == ("baseline", Reason.GUIDED_ERROR)


def test_a_student_error_before_any_chunk_is_raised_by_the_call(make_atlas, mode) -> None:
    atlas, *_ = make_atlas(student={"baseline": StudentDown("no such model")}, policy="off")

    async def go() -> Any:
        return await atlas.acompletion(model="m", messages=QUESTION, stream=True, atlas={"teach": False})

    with pytest.raises(StudentDown):  # from completion() itself, as a provider raises it
        atlas.completion(model="m", messages=QUESTION, stream=True, atlas={"teach": False}) if mode == "sync" \
            else asyncio.run(go())


def test_a_stream_closed_early_is_still_recorded(make_atlas, tmp_path: Path) -> None:
    atlas, *_ = make_atlas(student={"guided": GUIDED}, policy="off", ledger=f"sqlite:///{tmp_path / 'l.db'}")
    stream = atlas.completion(model="m", messages=QUESTION, stream=True)
    items = iter(stream)
    next(items)
    items.close()  # type: ignore[attr-defined]
    (row,) = atlas.ledger.records()
    assert row.report().failed and [e.type for e in row.report().errors] == ["StreamClosed"]


# -- the protocol: wrappers stream through, a backend without streams gives one chunk --------


class _CompleteOnly:
    def complete(self, request: ChatRequest) -> ChatResponse:
        return ChatResponse(content="whole", finish_reason="stop")

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        return self.complete(request)


def test_a_backend_without_streams_gives_one_chunk_and_retries_stop_at_the_first_chunk() -> None:
    from atlas_middleware.backends import RetryingBackend

    request = ChatRequest(model="m", messages=QUESTION)
    (chunk,) = list(stream_of(_CompleteOnly(), request))
    assert chunk.content == "whole" and chunk.finish_reason == "stop"

    attempts: list[int] = []

    class Flaky:
        def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
            attempts.append(1)
            if len(attempts) == 1:
                raise ConnectionError("reset before the first chunk")  # transient: retried
            yield ChatChunk(content="a")
            raise ConnectionError("reset after it")  # not retried: part of it was handed out

    got: list[ChatChunk] = []
    with pytest.raises(ConnectionError, match="after it"):
        for c in RetryingBackend(Flaky(), attempts=3, base_delay=0.01).stream(request):  # type: ignore[arg-type]
            got.append(c)
    assert len(attempts) == 2 and [c.content for c in got] == ["a"]


def test_chunks_add_up_to_the_whole_answer() -> None:
    from atlas_middleware.runtime.chunks import ToolCallDelta

    assembler = Assembler()
    for chunk in (ChatChunk(content="The "), ChatChunk(reasoning="hmm"), ChatChunk(content="answer"),
                  ChatChunk(tool_calls=(ToolCallDelta(index=0, id="c1", name="add", arguments='{"a":'),)),
                  ChatChunk(tool_calls=(ToolCallDelta(index=0, arguments=' 1}'),)),
                  ChatChunk(finish_reason="tool_calls")):
        assembler.add(chunk)
    whole = assembler.response()
    assert (whole.content, whole.reasoning, whole.finish_reason) == ("The answer", "hmm", "tool_calls")
    assert whole.tool_calls[0].name == "add" and whole.tool_calls[0].parsed_arguments() == {"a": 1}
    assert whole.usage.counted_by == "unknown"  # no usage chunk: not a provider count


# -- over HTTP: the lean path (SSE) and LiteLLM's, against a server that streams slowly -------


@pytest.fixture
def servers() -> Iterator[tuple[OpenAITestServer, OpenAITestServer]]:
    student = ScriptedBackend({"probe": "Add the tens.", "guided": GUIDED, "baseline": "The answer is 41"})
    with OpenAITestServer(student) as s, OpenAITestServer(ScriptedBackend({"teacher": teacher_reply("Carry.")})) as t:
        yield s, t


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "litellm"])
def test_live_stream_over_http(servers, lean: bool, mode: str) -> None:
    student, teacher = servers
    release = threading.Event()
    hold_stream(student.backend, "guided", release)
    with Atlas(teacher="openai/teacher", teacher_api_base=teacher.url, teacher_api_key="sk-t", policy="off",
               ledger="none", lean_http=lean) as atlas:
        stream, first, rest = _read_held(atlas, mode, release, model="openai/student", api_base=student.url,
                                         api_key="sk-s", stream_options={"include_usage": True})
    assert _text([first, *rest]) == GUIDED
    report = stream.atlas
    assert report.reason == Reason.POLICY_OFF and report.usage.guided.counted_by == "provider"
    assert _usage(rest).completion_tokens == report.usage.guided.completion_tokens == len(GUIDED.split())
    # the student was asked for a stream with its usage, and the caller's options never
    # reached the probe
    guided = [r["body"] for r in student.requests if r["body"].get("stream")]
    assert len(guided) == 1 and guided[0]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "litellm"])
def test_a_server_failing_mid_stream_over_http(servers, lean: bool) -> None:
    student, teacher = servers
    student.backend.script["guided"] = Reply(GUIDED, stream_error=RuntimeError("GPU fell over"))
    with Atlas(teacher="openai/teacher", teacher_api_base=teacher.url, teacher_api_key="sk-t", policy="off",
               ledger="none", lean_http=lean) as atlas:
        stream = atlas.completion(model="openai/student", messages=QUESTION, api_base=student.url,
                                  api_key="sk-s", stream=True)
        got: list[Any] = []
        with pytest.raises(Exception, match="GPU fell over"):
            for chunk in stream:
                got.append(chunk)
    assert _text(got) == "20" and stream.atlas.failed


# -- the atlas/ provider through litellm.completion(stream=True) ------------------------------

litellm = pytest.importorskip("litellm")


@pytest.fixture(scope="module")
def provider(upstream: OpenAITestServer) -> Iterator[Any]:
    from atlas_middleware.provider import register

    old_map = list(litellm.custom_provider_map)
    prov = register(teacher="openai/gpt-4o", teacher_api_base=upstream.url, teacher_api_key="sk-t",
                    ledger="none", policy="off")
    yield prov
    prov.close()
    litellm.custom_provider_map = old_map


def _provider_read(mode: str, release: threading.Event, **kwargs: Any) -> tuple[Any, list[Any], list[Any]]:
    kwargs = {"model": "atlas/openai/gpt-4o-mini", "messages": ADDITION_QUESTION, "api_key": "sk-s",
              "stream": True, "stream_options": {"include_usage": True}, **kwargs}
    if mode == "sync":
        stream = litellm.completion(**kwargs)
        items = iter(stream)
        before = [next(items)]
        while not _text(before):  # LiteLLM may open with a role-only chunk
            before.append(next(items))
        release.set()
        return stream, before, list(items)

    async def go() -> tuple[Any, list[Any], list[Any]]:
        stream = await litellm.acompletion(**kwargs)
        items = aiter(stream)
        before = [await anext(items)]
        while not _text(before):
            before.append(await anext(items))
        release.set()
        return stream, before, [c async for c in items]

    return asyncio.run(go())


def test_provider_streams_live(provider, upstream: OpenAITestServer, backend: ScriptedBackend, mode: str) -> None:
    from atlas_middleware.provider import report_of

    release = threading.Event()
    hold_stream(backend, "guided", release)
    try:
        stream, before, rest = _provider_read(mode, release, api_base=upstream.url)
    finally:
        backend.stream_holds.clear()
    assert _text(before) == ADDITION_GUIDED.split()[0]  # the first word, while the student still writes
    assert _text(before + rest) == ADDITION_GUIDED
    report = report_of(stream)
    assert report is not None and (report.decision, report.reason) == ("guided", Reason.POLICY_OFF)
    assert report.usage.guided.calls == 1  # complete: the stream has ended
    usage = _usage(rest)
    assert (usage.prompt_tokens, usage.completion_tokens) == (report.usage.guided.prompt_tokens,
                                                               report.usage.guided.completion_tokens)


def test_provider_strict_still_replays(provider, upstream: OpenAITestServer, backend: ScriptedBackend) -> None:
    from atlas_middleware.provider import report_of

    stream = litellm.completion(model="atlas/openai/gpt-4o-mini", messages=ADDITION_QUESTION, api_key="sk-s",
                                api_base=upstream.url, stream=True, metadata={"atlas": {"policy": "strict"}})
    assert _text(list(stream)) == ADDITION_GUIDED
    report = report_of(stream)
    assert report is not None and report.policy == "strict" and report.usage.baseline.calls == 1
    # no student call of a strict stream was a stream: each was compared whole
    assert not any(r["body"].get("stream") for r in upstream.requests[-4:])


# -- LangChain's AtlasChatModel --------------------------------------------------------------


def _langchain(policy: str = "off") -> tuple[Any, ScriptedBackend]:
    pytest.importorskip("langchain_core")
    from atlas_middleware.langchain import AtlasChatModel
    from atlas_middleware.testing.langchain import ScriptedChatModel

    student = ScriptedBackend({"probe": "Add the tens.", "guided": GUIDED, "baseline": "The answer is 41"})
    teacher = ScriptedChatModel(backend=ScriptedBackend({"teacher": teacher_reply("Carry.")}))
    llm = AtlasChatModel(student=_HeldChatModel(backend=student, chunk_words=1), teacher=teacher,
                         ledger="none", policy=policy)
    return llm, student


def _HeldChatModel(**kwargs: Any) -> Any:  # noqa: N802 - a factory standing in for a class
    """A scripted LangChain student whose streams stop after their first chunk until released
    (``backend.release``), as ``hold_stream`` stops a ``ScriptedBackend``'s."""
    from atlas_middleware.testing.langchain import ScriptedChatModel

    class Held(ScriptedChatModel):
        release: Any = None

        def _stream(self, *args: Any, **kw: Any) -> Any:
            for i, chunk in enumerate(super()._stream(*args, **kw)):
                yield chunk
                if i == 0:
                    assert self.release.wait(5), "the consumer never received the first chunk"

        async def _astream(self, *args: Any, **kw: Any) -> Any:
            i = 0
            async for chunk in super()._astream(*args, **kw):
                yield chunk
                if i == 0:
                    assert await asyncio.to_thread(self.release.wait, 5), "the consumer never received it"
                i += 1

    return Held(release=threading.Event(), **kwargs)


def test_langchain_astream_is_live_and_its_last_chunk_completes_the_report() -> None:
    llm, _ = _langchain()
    release: threading.Event = llm.student.release

    async def go() -> list[Any]:
        out = []
        async for chunk in llm.astream("What is 20 + 22?"):
            out.append(chunk)
            release.set()
        return out

    chunks = asyncio.run(go())
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert full.text == GUIDED and len(chunks) > len(GUIDED.split())
    report = full.response_metadata["atlas"]
    assert (report["decision"], report["reason"]) == ("guided", "policy_off")
    assert full.usage_metadata["total_tokens"] == sum(
        u["prompt_tokens"] + u["completion_tokens"] for u in (report["usage"][r] for r in ("probe", "teacher", "guided")))
    assert all(c.usage_metadata is None for c in chunks[:-1])  # usage once, on the last chunk


def test_langchain_strict_stream_replays() -> None:
    llm, _ = _langchain("strict")
    llm.student.release.set()
    chunks = list(llm.stream("What is 20 + 22?"))
    assert chunks[-1].response_metadata["atlas"]["policy"] == "strict"

