"""``LangChainBackend``: the core's ``ChatBackend`` protocol over a LangChain chat model.

Two ways to use it:

* standalone, around one chat model (``LangChainBackend(ChatOpenAI(...))``): every request
  is converted to LangChain messages and sent to that model, with ``tools`` bound through
  ``bind_tools`` and the other parameters passed as call keywords. This is how a LangChain
  model serves as a teacher.
* per call, with a ``CallBinding`` (``AtlasChatModel``, ``AtlasAgentMiddleware``): the
  adapter says how to run the student for one user call (the caller's own messages, the
  agent's ``handler``) and passes the binding itself in the request's parameters
  (``bound_params``). The core copies parameters to the probe, guided and baseline
  requests, so each of them finds its way back here. The binding lives as long as those
  requests do: an ``audit`` baseline, which the core starts in the background after the
  user's call has returned, still finds it (a registry scoped to the user's call would
  have dropped it by then).

Usage ownership (see docs/langchain.md): with ``isolate=True`` the model runs in an empty
``contextvars`` context with LangSmith tracing switched off, so LangChain callbacks of the
caller never see these inner calls; the adapter reports their usage once, itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.utils import message_chunk_to_message
from langsmith.run_helpers import tracing_context

from ..errors import ConfigError
from ..messages import ChatRequest, ChatResponse
from ..teaching import protocols
from ._convert import restore_messages, to_chat_response

BINDING_KEY = "atlas_langchain_call"
"""Request parameter that holds the ``CallBinding`` of a request (never sent to a model)."""

# Parameters the backend maps itself instead of passing them as call keywords.
_TOOL_PARAMS = ("tools", "tool_choice")

Runner = Callable[[list[BaseMessage], dict[str, Any]], Any]
AsyncRunner = Callable[[list[BaseMessage], dict[str, Any]], Awaitable[Any]]


@dataclass
class Delivery:
    """What a student call returned, as the adapter needs it back.

    ``result`` is the ``AIMessage`` (or the agent's ``ModelResponse``); the core attaches
    the call's report as ``.atlas`` to this object, never to the LangChain message.
    """

    result: Any
    message: AIMessage
    atlas: Any = None


class StreamSink:
    """Tokens of the first answer call, handed to a consumer as they come.

    Only the first student answer call (not the probe) may stream; under the ``off`` and
    ``audit`` policies that is the answer the core delivers. A call that fails before its
    first token gives the turn to the next one; one that fails after it breaks the stream.
    """

    def __init__(self, emit: Callable[[AIMessageChunk], None]) -> None:
        self.emit = emit
        self._lock = threading.Lock()
        self._owner: str | None = None
        self.closed = False
        self.broken: BaseException | None = None
        self.streamed_id: str | None = None

    def claim(self) -> str | None:
        with self._lock:
            if self.closed or self._owner is not None:
                return None
            self._owner = uuid.uuid4().hex
            return self._owner

    def release(self, owner: str, emitted: bool, error: BaseException | None) -> None:
        with self._lock:
            if error is None:
                self.closed, self.streamed_id = True, owner
            elif emitted:
                self.closed, self.broken = True, error
            self._owner = None

    def close(self) -> None:
        """The user's call has returned: calls that run after it (an audit) never stream."""
        with self._lock:
            self.closed = True


@dataclass
class CallBinding:
    """How to run the student for one user call."""

    originals: Sequence[BaseMessage]
    original_dicts: Sequence[dict[str, Any]]
    run: Runner
    arun: AsyncRunner
    prepare: Callable[[dict[str, Any]], tuple[Any, dict[str, Any]]] | None = None
    """(runnable, call keywords) for a request's parameters; needed only to stream."""
    sink: StreamSink | None = None

    def __repr__(self) -> str:  # the caller's messages and closures stay out of logs
        return f"<CallBinding of {len(self.originals)} messages>"


def bound_params(params: dict[str, Any], binding: CallBinding) -> dict[str, Any]:
    """``params`` with ``binding`` attached, for ``Atlas.completion``.

    The binding travels on the request (and the probe, guided and baseline requests the
    core derives from it), so it stays reachable for as long as the core may still run a
    call of this user call, background audits included, and is freed with the requests.
    """
    return {**params, BINDING_KEY: binding}


def _run_isolated(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` where no caller callback, usage hook or LangSmith tracer can see it."""

    def inner() -> Any:
        with tracing_context(enabled=False):
            return fn()

    return contextvars.Context().run(inner)


async def _arun_isolated(fn: Callable[[], Awaitable[Any]]) -> Any:
    async def inner() -> Any:
        with tracing_context(enabled=False):
            return await fn()

    task = asyncio.get_running_loop().create_task(inner(), context=contextvars.Context())
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.cancel()
        raise


def split_params(params: dict[str, Any]) -> tuple[list[Any] | None, Any, list[str] | None, dict[str, Any]]:
    """(tools, tool_choice, stop, call keywords) of a request's parameters."""
    # ``timeout`` is the transport deadline the core adds to guidance-path calls; LangChain
    # models take no such call keyword (the driver enforces the deadline itself).
    kwargs = {k: v for k, v in params.items() if k not in (*_TOOL_PARAMS, "stop", "timeout", BINDING_KEY)}
    stop = params.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    return params.get("tools") or None, params.get("tool_choice"), stop or None, kwargs


def prepare_model(model: BaseChatModel, params: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``model`` with the request's tools bound, and the keywords for ``invoke``."""
    tools, tool_choice, stop, kwargs = split_params(params)
    runnable: Any = model
    if tools:
        extra = {"tool_choice": tool_choice} if tool_choice is not None else {}
        runnable = model.bind_tools(tools, **extra)
    if stop:
        kwargs["stop"] = stop
    return runnable, kwargs


def is_probe(request: ChatRequest) -> bool:
    return protocols.is_probe(request.messages)


class LangChainBackend:
    """A ``ChatBackend`` for LangChain chat models; see the module docstring."""

    def __init__(self, model: BaseChatModel | None = None, *, isolate: bool = True) -> None:
        if model is not None and not isinstance(model, BaseChatModel):
            raise ConfigError(f"expected a LangChain chat model (BaseChatModel), got {type(model).__name__}")
        self.model = model
        self.isolate = isolate

    def _resolve(self, request: ChatRequest) -> tuple[CallBinding | None, list[BaseMessage], dict[str, Any]]:
        binding = request.params.get(BINDING_KEY)
        params = {k: v for k, v in request.params.items() if k != BINDING_KEY}
        if binding is None:
            if self.model is None:
                raise ConfigError("this LangChainBackend serves bound calls only, and the request has no binding")
            return None, restore_messages(request.messages), params
        if not isinstance(binding, CallBinding):
            raise ConfigError(f"the request's {BINDING_KEY!r} parameter is not a LangChain call binding")
        messages = restore_messages(request.messages, binding.originals, binding.original_dicts)
        return binding, messages, params

    # -- sync ---------------------------------------------------------------------------------

    def complete(self, request: ChatRequest) -> ChatResponse:
        binding, messages, params = self._resolve(request)
        if binding is None:
            model = self.model
            assert model is not None
            runnable, kwargs = prepare_model(model, params)
            return self._wrap(self._call(lambda: runnable.invoke(messages, **kwargs)))
        sink = binding.sink
        owner = sink.claim() if sink is not None and not is_probe(request) else None
        if sink is not None and owner is not None:
            return self._streamed(binding, sink, owner, messages, params)
        return self._wrap(self._call(lambda: binding.run(messages, params)))

    def _call(self, fn: Callable[[], Any]) -> Any:
        return _run_isolated(fn) if self.isolate else fn()

    def _streamed(self, binding: CallBinding, sink: StreamSink, owner: str,
                  messages: list[BaseMessage], params: dict[str, Any]) -> ChatResponse:
        assert binding.prepare is not None
        runnable, kwargs = binding.prepare(params)
        state = {"emitted": False}

        def run() -> AIMessageChunk | None:
            full: AIMessageChunk | None = None
            for chunk in runnable.stream(messages, **kwargs):
                full = chunk if full is None else full + chunk
                sink.emit(chunk)
                state["emitted"] = True
            return full

        try:
            full = self._call(run)
        except Exception as exc:
            sink.release(owner, state["emitted"], exc)
            raise
        sink.release(owner, state["emitted"], None)
        return self._wrap(_chunk_message(full), streamed=owner)

    # -- async --------------------------------------------------------------------------------

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        binding, messages, params = self._resolve(request)
        if binding is None:
            model = self.model
            assert model is not None
            runnable, kwargs = prepare_model(model, params)
            return self._wrap(await self._acall(lambda: runnable.ainvoke(messages, **kwargs)))
        sink = binding.sink
        owner = sink.claim() if sink is not None and not is_probe(request) else None
        if sink is not None and owner is not None:
            return await self._astreamed(binding, sink, owner, messages, params)
        return self._wrap(await self._acall(lambda: binding.arun(messages, params)))

    async def _acall(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        return await _arun_isolated(fn) if self.isolate else await fn()

    async def _astreamed(self, binding: CallBinding, sink: StreamSink, owner: str,
                         messages: list[BaseMessage], params: dict[str, Any]) -> ChatResponse:
        assert binding.prepare is not None
        runnable, kwargs = binding.prepare(params)
        state = {"emitted": False}

        async def run() -> AIMessageChunk | None:
            full: AIMessageChunk | None = None
            async for chunk in runnable.astream(messages, **kwargs):
                full = chunk if full is None else full + chunk
                sink.emit(chunk)
                state["emitted"] = True
            return full

        try:
            full = await self._acall(run)
        except Exception as exc:
            sink.release(owner, state["emitted"], exc)
            raise
        sink.release(owner, state["emitted"], None)
        return self._wrap(_chunk_message(full), streamed=owner)

    # -- results ------------------------------------------------------------------------------

    @staticmethod
    def _wrap(result: Any, streamed: str | None = None) -> ChatResponse:
        message = ai_message_of(result)
        return to_chat_response(message, Delivery(result, message, None) if streamed is None
                                else StreamedDelivery(result, message, None, streamed))


@dataclass
class StreamedDelivery(Delivery):
    """A delivery whose tokens already reached the consumer (the sink's ``streamed_id``)."""

    stream_id: str = ""


def _chunk_message(full: AIMessageChunk | None) -> AIMessage:
    if full is None:
        return AIMessage(content="")
    message = message_chunk_to_message(full)
    assert isinstance(message, AIMessage)
    return message


def ai_message_of(result: Any) -> AIMessage:
    """The ``AIMessage`` in what a student call returned (a message or a ``ModelResponse``)."""
    if isinstance(result, AIMessage):
        return result
    messages = getattr(result, "result", None)
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, AIMessage):
                return message
    raise TypeError(f"a LangChain student call returned {type(result).__name__}, not an AIMessage")
