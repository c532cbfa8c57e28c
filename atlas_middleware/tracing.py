"""OpenTelemetry spans for taught calls: one per call, a child per inner model call.

Inner calls are made with LiteLLM's ``no-log`` flag (they are the middleware's business, not
the caller's spend), so no LiteLLM callback sees inside a taught call. This module does, as a
wrapper around the teaching flow (``traced``), like ``_accounted`` in ``teaching/flow.py``: it
watches the commands the flow yields and the results the driver sends back, so both drivers
are covered by one piece of code and the flow stays free of I/O::

    chat openai/gpt-4o-mini            the taught call: atlas.decision, atlas.reason, atlas.family, ...
      ├─ chat openai/gpt-4o-mini       atlas.role=probe
      ├─ chat hosted_vllm/atlas-8b     atlas.role=teacher
      ├─ chat openai/gpt-4o-mini       atlas.role=guided    ┐ siblings: run at once under strict
      ├─ chat openai/gpt-4o-mini       atlas.role=baseline  ┘
      └─ chat hosted_vllm/atlas-8b     atlas.role=judge

Spans follow the OpenTelemetry GenAI semantic conventions (``gen_ai.operation.name`` "chat",
``gen_ai.provider.name`` and the deprecated ``gen_ai.system`` it replaced, ``gen_ai.request.model``,
``gen_ai.response.model``, ``gen_ai.usage.input_tokens``/``output_tokens``); the middleware's own
attributes are under ``atlas.``. Every span is created with its parent context passed
explicitly (the caller's context, captured when the call begins, for the call's span; the
call's span for each inner one), never read from the thread or task a step happens to run in:
the sync driver runs calls on pool threads and a large request's flow steps in worker threads.

An inner span starts as the flow asks the driver to start its call and ends at the start
plus the latency the driver measured (never later than when its result came back), so
concurrent calls that are waited for together still end when each one did. A failed inner call has status ``ERROR`` and ``error.type`` (the exception's
class; the description is redacted, ``_redact.py``); the call's own span is an error only when
the caller gets the student's error. The call's span ends when the flow ends: after an
audit's background comparison, and when a live stream ends.

Nothing happens without OpenTelemetry: the ``otel`` extra installs ``opentelemetry-api``, and
spans are made only when the application has set a tracer provider. This module imports
nothing from OpenTelemetry itself: an application that configured a provider has imported
``opentelemetry.trace`` already, so a look in ``sys.modules`` says whether there can be one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from ._redact import redact, secret_logger
from .report import CallReport
from .teaching.commands import CallResult, Deliver, ModelCall, Start, Stream, Wait
from .teaching.flow import Flow

SCOPE = "atlas_middleware"
log = secret_logger("atlas_middleware")
_DESCRIPTION_CHARS = 300
_STREAM = -1
"""The key of a ``Stream`` call's span (a ``Start``'s key is its handle, always positive)."""


def _trace_api() -> Any | None:
    """``opentelemetry.trace`` when the application traces (a real provider is set), else None."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    return trace


def provider_of(model: str) -> str | None:
    """``gen_ai.provider.name`` the LiteLLM way: the model's prefix (``openai/gpt-4o`` -> openai)."""
    prefix, slash, _ = model.partition("/")
    return prefix if slash else None


def _model_attributes(model: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.request.model": model}
    provider = provider_of(model)
    if provider:
        attributes["gen_ai.provider.name"] = attributes["gen_ai.system"] = provider
    return attributes


def _set_error(trace: Any, span: Any, error: BaseException) -> None:
    span.set_attribute("error.type", type(error).__qualname__)
    description = redact(f"{type(error).__name__}: {error}")[:_DESCRIPTION_CHARS]
    span.set_status(trace.Status(trace.StatusCode.ERROR, description))


class CallTrace:
    """The spans of one taught call: the call's, and one per inner call while it runs."""

    def __init__(self, trace: Any, model: str, parent: Any, attributes: Mapping[str, Any]) -> None:
        from . import __version__

        self._trace = trace
        self._tracer = trace.get_tracer(SCOPE, __version__)
        self.span = self._tracer.start_span(f"chat {model}", context=parent, kind=trace.SpanKind.CLIENT,
                                            attributes={**_model_attributes(model), **attributes})
        self._context = trace.set_span_in_context(self.span)
        self._inner: dict[int, tuple[Any, int]] = {}
        self._delivered: Deliver | None = None
        self._ended = False

    def start(self, key: int, call: ModelCall, streamed: bool = False, started: int | None = None) -> None:
        attributes = {**_model_attributes(call.request.model), "atlas.role": call.role, "atlas.target": call.target}
        if streamed:
            attributes["atlas.stream"] = True
        started = time.time_ns() if started is None else started
        span = self._tracer.start_span(f"chat {call.request.model}", context=self._context,
                                       kind=self._trace.SpanKind.CLIENT, attributes=attributes, start_time=started)
        self._inner[key] = (span, started)

    def finish(self, key: int, result: CallResult) -> None:
        entry = self._inner.pop(key, None)
        if entry is None:
            return
        span, started = entry
        response = result.response
        if response is not None:
            if response.model:
                span.set_attribute("gen_ai.response.model", response.model)
            span.set_attribute("gen_ai.usage.input_tokens", response.usage.prompt_tokens)
            span.set_attribute("gen_ai.usage.output_tokens", response.usage.completion_tokens)
            if response.finish_reason:
                span.set_attribute("gen_ai.response.finish_reasons", (response.finish_reason,))
        if result.error is not None:
            _set_error(self._trace, span, result.error)
        # Never later than now: the result is here, so the call has ended.
        span.end(end_time=min(time.time_ns(), started + int(result.latency_ms * 1_000_000)))

    def drop(self, key: int, why: str) -> None:
        """Nobody waits for this call any more (cancelled, or the flow ended without it)."""
        entry = self._inner.pop(key, None)
        if entry is not None:
            entry[0].set_attribute("atlas.abandoned", why)
            entry[0].end()

    def delivered(self, cmd: Deliver) -> None:
        """The caller has its answer; work after it (an audit) may go on under this span."""
        self._delivered = cmd
        self.span.add_event("atlas.delivered")

    def failed(self, error: BaseException) -> None:
        _set_error(self._trace, self.span, error)

    def end(self, report: CallReport | None, abandoned: str | None = None) -> None:
        if self._ended:
            return
        self._ended = True
        for key in list(self._inner):
            self.drop(key, abandoned or "call_ended")
        if report is not None:
            self.span.set_attributes(_report_attributes(report))
        delivered = self._delivered
        if delivered is not None and delivered.response is not None and delivered.response.model:
            self.span.set_attribute("gen_ai.response.model", delivered.response.model)
        if delivered is not None and delivered.error is not None:
            _set_error(self._trace, self.span, delivered.error)
        if abandoned:
            self.span.set_attribute("atlas.abandoned", abandoned)
        self.span.end()


def _report_attributes(report: CallReport) -> dict[str, Any]:
    total = report.usage.total()
    values: dict[str, Any] = {
        "atlas.call_id": report.call_id, "atlas.policy": report.policy, "atlas.decision": report.decision,
        "atlas.reason": str(report.reason), "atlas.family": report.task_family, "atlas.mode": report.mode,
        "atlas.teacher_model": report.teacher_model, "atlas.cost_usd": report.cost_usd,
        "atlas.cost_saved_usd": report.cost_saved_usd, "atlas.tokens_saved": report.tokens_saved,
        # The whole taught call's tokens, every role: what the call cost, not the answer alone.
        "gen_ai.usage.input_tokens": total.prompt_tokens, "gen_ai.usage.output_tokens": total.completion_tokens,
    }
    if report.session_id:
        values["atlas.session_id"] = report.session_id
    return {k: v for k, v in values.items() if v is not None}  # OpenTelemetry takes no None


def traced(flow: Flow, model: str, stream: bool = False) -> Flow:
    """``flow`` with spans, when the application traces; else ``flow`` itself (no cost).

    Call it where the caller's call begins: the caller's current context, read here, is the
    parent of the call's span (``parent_context`` makes another one current, in the proxy)."""
    trace = _trace_api()
    if trace is None:
        return flow
    from opentelemetry import context

    attributes = {"atlas.stream": True} if stream else {}
    try:
        spans = CallTrace(trace, model, context.get_current(), attributes)
    except Exception as exc:  # a provider that cannot start a span costs the trace, not the call
        log.warning("tracing: the call's span could not start: %s", redact(f"{type(exc).__name__}: {exc}"))
        return flow
    return _watch(flow, spans)


def _watch(flow: Flow, spans: CallTrace) -> Flow:
    """Pass every command and result through, opening and closing spans on the way."""
    report: CallReport | None = None
    send: Any = None
    try:
        while True:
            try:
                cmd = flow.send(send)
            except StopIteration as stop:
                report = stop.value
                return report
            # Taken before the driver starts a call: its span cannot start after the call did.
            before = time.time_ns()
            send = yield cmd
            _quietly(_observe, spans, cmd, send, before)
    except Exception as exc:  # a fault in the flow itself: the driver raises it to the caller
        _quietly(spans.failed, exc)
        raise
    finally:
        # A flow abandoned midway (the caller cancelled, a driver failed) still ends its spans.
        _quietly(spans.end, report, None if report is not None else "flow_closed")


def _quietly(fn: Callable[..., None], *args: Any) -> None:
    """Telemetry never breaks a call: a tracing fault (an SDK's, ours) is logged, not raised."""
    try:
        fn(*args)
    except Exception as exc:
        log.warning("tracing: a span could not be recorded: %s", redact(f"{type(exc).__name__}: {exc}"))


def _observe(spans: CallTrace, cmd: Any, sent: Any, before: int) -> None:
    if isinstance(cmd, Start):
        spans.start(sent, cmd.call, started=before)
    elif isinstance(cmd, Wait):
        for handle, result in zip(cmd.handles, sent or (), strict=False):
            spans.finish(handle, result)
    elif isinstance(cmd, Stream):
        # The driver sends this call's result back when its stream has ended (or failed
        # before its first chunk): the span is made then, from when it was asked for.
        if isinstance(sent, CallResult):
            spans.start(_STREAM, cmd.call, streamed=True, started=before)
            spans.finish(_STREAM, sent)
    elif isinstance(cmd, Deliver):
        spans.delivered(cmd)


def parent_context(litellm_params: Mapping[str, Any] | None) -> Any | None:
    """The context LiteLLM's OpenTelemetry integration parents a proxied request's spans on,
    as its ``_get_span_context`` finds it: the proxy's request span in the metadata, else the
    request's ``traceparent`` header. None when there is neither (or no tracing)."""
    if _trace_api() is None or not litellm_params:
        return None
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    for key in ("metadata", "litellm_metadata"):
        meta = litellm_params.get(key)
        span = meta.get("litellm_parent_otel_span") if isinstance(meta, Mapping) else None
        if span is not None:
            return trace.set_span_in_context(span)
    request = litellm_params.get("proxy_server_request")
    headers = request.get("headers") if isinstance(request, Mapping) else None
    if isinstance(headers, Mapping) and headers.get("traceparent"):
        return TraceContextTextMapPropagator().extract(carrier={"traceparent": headers["traceparent"]})
    return None


@contextmanager
def parented(litellm_params: Mapping[str, Any] | None) -> Iterator[None]:
    """Make ``parent_context(litellm_params)`` current while the provider starts a call, so
    that the call's span joins the proxied request's trace (``traced`` reads it)."""
    parent = parent_context(litellm_params)
    if parent is None:
        yield
        return
    from opentelemetry import context

    token = context.attach(parent)
    try:
        yield
    finally:
        context.detach(token)
