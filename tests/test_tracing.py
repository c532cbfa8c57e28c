"""OpenTelemetry spans for taught calls (``tracing.py``), read back from the SDK's in-memory
exporter: one span per call, a child per inner call, GenAI attributes, both drivers."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import QUESTION
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from atlas_middleware import Reason, tracing
from atlas_middleware.testing import GradingJudge, PairwiseJudge, Reply
from atlas_middleware.testing.scripted import hold_role, hold_stream

SECRET = "sk-tracing-test-0123456789abcdef0123456789"


class TeacherDown(Exception):
    status_code = 400  # not transient: never retried


@pytest.fixture
def exporter(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """A tracer provider of this test's own, as an application sets one (restored after)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    yield memory
    provider.shutdown()


def _by_role(spans: tuple[ReadableSpan, ...]) -> tuple[ReadableSpan, dict[str, ReadableSpan]]:
    (outer,) = [s for s in spans if "atlas.role" not in (s.attributes or {})]
    inner = {str(s.attributes["atlas.role"]): s for s in spans if s is not outer}  # type: ignore[index]
    return outer, inner


def _parent_is(span: ReadableSpan, parent: ReadableSpan) -> bool:
    return (span.parent is not None and span.parent.span_id == parent.context.span_id
            and span.context.trace_id == parent.context.trace_id)


def test_strict_call_has_a_span_and_a_sibling_child_per_inner_call(make_atlas, call, exporter) -> None:
    right = PairwiseJudge(is_right=lambda answer: answer.rstrip().endswith("42"))
    guided_started = threading.Event()

    def guided(request: Any) -> str:
        guided_started.set()
        return "20 + 22 = 42. The answer is 42"

    atlas, student, _ = make_atlas(policy="strict", teacher={"judge_pair": right}, student={"guided": guided})
    # The baseline (started first) ends only once the guided call has begun: they overlap
    # whatever the machine's load, and so must their spans.
    hold_role(student, "baseline", guided_started, also_async=True)
    report = call(atlas, model="openai/student-model").atlas
    assert report.reason == Reason.JUDGE_GUIDED
    outer, inner = _by_role(exporter.get_finished_spans())
    assert set(inner) == {"probe", "teacher", "guided", "baseline", "judge"}
    for span in inner.values():
        assert _parent_is(span, outer)
        assert span.attributes["gen_ai.operation.name"] == "chat"  # type: ignore[index]
    assert outer.name == "chat openai/student-model"
    assert inner["guided"].name == "chat openai/student-model"
    assert inner["teacher"].name == "chat scripted-teacher"
    guided, baseline = inner["guided"], inner["baseline"]
    assert guided.start_time < baseline.end_time and baseline.start_time < guided.end_time  # type: ignore[operator]
    a = outer.attributes or {}
    assert a["gen_ai.request.model"] == "openai/student-model" and a["gen_ai.provider.name"] == "openai"
    assert a["atlas.decision"] == "guided" and a["atlas.reason"] == "judge_preferred_guided"
    assert a["atlas.policy"] == "strict" and a["atlas.call_id"] == report.call_id
    assert a["atlas.family"] == report.task_family
    total = report.usage.total()
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"]) == (
        total.prompt_tokens, total.completion_tokens)
    g = guided.attributes or {}
    assert g["gen_ai.response.model"] == "openai/student-model"  # what the response says
    assert g["gen_ai.usage.output_tokens"] == report.usage.guided.completion_tokens
    assert outer.status.status_code == StatusCode.UNSET
    assert all(s.end_time <= outer.end_time for s in inner.values())  # type: ignore[operator]


def test_the_callers_span_is_the_parent_of_the_calls_span(make_atlas, call, exporter) -> None:
    atlas, *_ = make_atlas(policy="off")
    with trace.get_tracer("app").start_as_current_span("handler") as handler:
        call(atlas)
    spans = exporter.get_finished_spans()
    (mine,) = [s for s in spans if s.name == "handler"]
    outer, inner = _by_role(tuple(s for s in spans if s is not mine))
    assert _parent_is(outer, mine) and handler.get_span_context().trace_id == outer.context.trace_id
    assert set(inner) == {"probe", "teacher", "guided"}


def test_a_large_requests_flow_steps_in_threads_keep_the_tree(make_atlas, exporter) -> None:
    # acompletion runs a large request's flow steps in worker threads: parents are passed, not read there.
    from atlas_middleware.messages import LARGE_REQUEST_CHARS

    atlas, *_ = make_atlas(policy="off")
    big = [{"role": "user", "content": "What is 20 + 22? " + "x" * LARGE_REQUEST_CHARS}]

    async def go() -> None:
        with trace.get_tracer("app").start_as_current_span("handler"):
            await atlas.acompletion(model="student-model", messages=big)

    asyncio.run(go())
    spans = exporter.get_finished_spans()
    (mine,) = [s for s in spans if s.name == "handler"]
    outer, inner = _by_role(tuple(s for s in spans if s is not mine))
    assert _parent_is(outer, mine) and all(_parent_is(s, outer) for s in inner.values())
    assert set(inner) == {"probe", "teacher", "guided"}


def test_a_failed_teacher_is_an_error_span_and_the_call_is_not(make_atlas, call, exporter) -> None:
    atlas, *_ = make_atlas(policy="strict", teacher={"teacher": TeacherDown(f"bad key {SECRET}")},
                           teacher_retries=1)
    report = call(atlas).atlas
    assert report.reason == Reason.TEACHER_ERROR and report.decision == "student_only"
    outer, inner = _by_role(exporter.get_finished_spans())
    teacher = inner["teacher"]
    assert teacher.status.status_code == StatusCode.ERROR
    assert teacher.attributes["error.type"] == "TeacherDown"  # type: ignore[index]
    assert SECRET not in (teacher.status.description or "") and "TeacherDown" in (teacher.status.description or "")
    assert outer.status.status_code == StatusCode.UNSET
    assert outer.attributes["atlas.reason"] == "teacher_error"  # type: ignore[index]


def test_the_students_error_is_the_calls_error(make_atlas, call, exporter) -> None:
    atlas, *_ = make_atlas(policy="off", student={"baseline": TeacherDown("student down")})
    with pytest.raises(TeacherDown):
        call(atlas, atlas={"teach": False})
    outer, inner = _by_role(exporter.get_finished_spans())
    assert outer.status.status_code == StatusCode.ERROR and inner["baseline"].status.status_code == StatusCode.ERROR


def test_verify_grades_the_guided_answer_under_the_calls_span(make_atlas, call, exporter) -> None:
    wrong = GradingJudge(is_right=lambda answer: answer.rstrip().endswith("41"))
    atlas, *_ = make_atlas(policy="verify", teacher={"judge_score": wrong,
                                                     "judge_pair": PairwiseJudge(is_right=lambda a: "41" in a)})
    report = call(atlas).atlas
    outer, _ = _by_role(exporter.get_finished_spans())
    roles = sorted(str(s.attributes["atlas.role"]) for s in exporter.get_finished_spans()  # type: ignore[index]
                   if s is not outer)
    assert roles.count("judge") >= 1 and "baseline" in roles  # the failing grade paid for a baseline
    assert outer.attributes["atlas.policy"] == "verify" and outer.attributes["atlas.reason"] == str(report.reason)  # type: ignore[index]


def test_an_audit_after_delivery_stays_under_the_calls_span(make_atlas, call, exporter) -> None:
    right = PairwiseJudge(is_right=lambda answer: answer.rstrip().endswith("42"))
    atlas, *_ = make_atlas(policy="audit", audit_rate=1.0, teacher={"judge_pair": right})
    call(atlas)  # joins the background audit
    outer, inner = _by_role(exporter.get_finished_spans())
    assert {"guided", "baseline", "judge"} <= set(inner)
    (delivered,) = [e for e in outer.events if e.name == "atlas.delivered"]
    # the audit's baseline and judge run after the caller had its answer, inside the call's span
    assert inner["judge"].start_time >= delivered.timestamp  # type: ignore[operator]
    assert all(_parent_is(s, outer) and s.end_time <= outer.end_time for s in inner.values())  # type: ignore[operator]
    assert outer.attributes["atlas.policy"] == "audit"  # type: ignore[index]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_live_streams_span_ends_when_the_stream_ends(make_atlas, exporter, mode) -> None:
    atlas, student, _ = make_atlas(policy="off")
    release = threading.Event()
    hold_stream(student, "guided", release)

    def unfinished() -> list[str]:
        return [s.name for s in exporter.get_finished_spans() if "atlas.role" not in (s.attributes or {})]

    if mode == "sync":
        stream = atlas.completion(model="student-model", messages=QUESTION, stream=True)
        items = iter(stream)
        next(items)
        assert unfinished() == []  # the call is still being written
        release.set()
        list(items)
    else:
        async def go() -> None:
            stream = await atlas.acompletion(model="student-model", messages=QUESTION, stream=True)
            items = aiter(stream)
            await anext(items)
            assert unfinished() == []
            release.set()
            [c async for c in items]

        asyncio.run(go())
    outer, inner = _by_role(exporter.get_finished_spans())
    assert inner["guided"].attributes["atlas.stream"] is True  # type: ignore[index]
    assert outer.attributes["atlas.stream"] is True and _parent_is(inner["guided"], outer)  # type: ignore[index]
    assert inner["guided"].end_time <= outer.end_time  # type: ignore[operator]


def test_a_stream_closed_early_still_ends_its_spans(make_atlas, exporter) -> None:
    atlas, *_ = make_atlas(policy="off", student={"guided": Reply("one two three four five six")})
    stream = atlas.completion(model="student-model", messages=QUESTION, stream=True)
    items = iter(stream)
    next(items)
    items.close()  # type: ignore[attr-defined]
    outer, inner = _by_role(exporter.get_finished_spans())
    assert inner["guided"].status.status_code == StatusCode.ERROR  # StreamClosed, as the report says


def test_parent_context_follows_litellms_otel_integration(exporter) -> None:
    proxy_span = trace.get_tracer("litellm").start_span("Received Proxy Server Request")
    ctx = tracing.parent_context({"metadata": {"litellm_parent_otel_span": proxy_span}})
    assert trace.get_current_span(ctx) is proxy_span
    header = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    ctx = tracing.parent_context({"proxy_server_request": {"headers": {"traceparent": header}}})
    parent = trace.get_current_span(ctx).get_span_context()
    assert (format(parent.trace_id, "032x"), format(parent.span_id, "016x")) == (
        "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
    assert tracing.parent_context({"metadata": {}}) is None
    proxy_span.end()


def test_no_tracer_provider_means_the_flow_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)  # the API's default: a proxy to nothing

    def flow() -> Any:
        yield from ()

    f = flow()
    assert tracing.traced(f, "m") is f


def test_without_opentelemetry_nothing_is_imported() -> None:
    code = (
        "import sys\n"
        "from atlas_middleware import Atlas\n"
        "from atlas_middleware.testing import ScriptedBackend\n"
        "a = Atlas(student_backend=ScriptedBackend(), teacher_backend=ScriptedBackend(), teacher='t',"
        " ledger='none', policy='off')\n"
        "a.completion(model='m', messages=[{'role': 'user', 'content': 'hi'}]); a.close()\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_a_failing_span_processor_never_breaks_the_call(make_atlas, call, monkeypatch, caplog) -> None:
    from opentelemetry.sdk.trace import SpanProcessor

    class Broken(SpanProcessor):
        def on_end(self, span: ReadableSpan) -> None:
            raise RuntimeError("exporter queue full")

    provider = TracerProvider()
    provider.add_span_processor(Broken())
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    atlas, *_ = make_atlas(policy="off")
    out = call(atlas)
    assert out.choices[0].message.content == "20 + 22 = 42. The answer is 42"
    assert "tracing: a span could not be recorded" in caplog.text
