"""``LangChainBackend``: the core's ``ChatBackend`` protocol over a LangChain chat model.

Two ways to use it:

* standalone, around one chat model (``LangChainBackend(ChatOpenAI(...))``): every request
  is converted to LangChain messages and sent to that model, with ``tools`` bound through
  ``bind_tools`` and the other parameters passed as call keywords. This is how a LangChain
  model serves as a teacher.
* per call, with a ``CallBinding`` (``AtlasChatModel``, ``AtlasAgentMiddleware``): the
  adapter says how to run the student for one user call (the caller's own messages, the
  agent's ``handler``) and passes the binding beside the request, in its context
  (``bound_params``: ``ChatRequest.context.bindings``, never sent to a model). The core
  keeps the context on the probe, guided and baseline requests it derives, so each of them
  finds its way back here, and their runner is told each call's role. The binding lives as
  long as those requests do: an ``audit`` baseline, which the core starts in the background
  after the user's call has returned, still finds it (a registry scoped to the user's call
  would have dropped it by then).

Streams (``stream`` / ``astream``) run the model's own ``stream`` / ``astream`` and pass its
``AIMessageChunk`` objects on as the ``raw`` of each ``ChatChunk``, so ``AtlasChatModel`` can
hand the student's chunks to its caller as the student shaped them; the last chunk carries
the call's usage, read from the chunks' ``usage_metadata``.

Usage ownership (see docs/langchain.md): with ``isolate=True`` the model runs in an empty
``contextvars`` context with LangSmith tracing switched off, so LangChain callbacks of the
caller never see these inner calls; the adapter reports their usage once, itself.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.utils import message_chunk_to_message
from langsmith.run_helpers import tracing_context

from ..errors import ConfigError
from ..messages import CallContext, ChatRequest, ChatResponse
from ..runtime.chunks import ChatChunk, ToolCallDelta
from ._convert import restore_messages, to_chat_response

BINDING_KEY = "langchain"
"""The adapter's name in ``CallContext.bindings``: where a request's ``CallBinding`` rides."""

ROLE_KEY = "atlas_role"
"""Run metadata naming the call's part in the teaching loop (``ChatRequest.context.role``)."""
JUDGING_KEY = "atlas_judging"
"""Run metadata of a judge's call: ``pairwise`` or ``score``."""


def role_metadata(context: CallContext) -> dict[str, Any]:
    """The run metadata that names a call's role: what a chat model in the run can read
    (LangChain never sends run metadata to a provider)."""
    if context.role is None:
        return {}
    out: dict[str, Any] = {ROLE_KEY: context.role}
    if context.judging is not None:
        out[JUDGING_KEY] = context.judging
    return out


# Parameters the backend maps itself instead of passing them as call keywords.
_TOOL_PARAMS = ("tools", "tool_choice")

Runner = Callable[[list[BaseMessage], dict[str, Any], CallContext], Any]
AsyncRunner = Callable[[list[BaseMessage], dict[str, Any], CallContext], Awaitable[Any]]
"""How to run the student: its messages, the call keywords, and the call's context (its role)."""


@dataclass
class Delivery:
    """What a student call returned, as the adapter needs it back.

    ``result`` is the ``AIMessage`` (or the agent's ``ModelResponse``); the core attaches
    the call's report as ``.atlas`` to this object, never to the LangChain message.
    """

    result: Any
    message: AIMessage
    atlas: Any = None


@dataclass
class CallBinding:
    """How to run the student for one user call."""

    originals: Sequence[BaseMessage]
    original_dicts: Sequence[dict[str, Any]]
    run: Runner
    arun: AsyncRunner
    prepare: Callable[[dict[str, Any]], tuple[Any, dict[str, Any]]] | None = None
    """(runnable, call keywords) for a request's parameters; needed only to stream (without
    it, a stream is the whole answer as one chunk)."""

    def __repr__(self) -> str:  # the caller's messages and closures stay out of logs
        return f"<CallBinding of {len(self.originals)} messages>"


def bound_params(params: dict[str, Any], binding: CallBinding) -> dict[str, Any]:
    """``params`` with ``binding`` attached, for ``Atlas.completion`` (its ``atlas`` options'
    ``bindings``).

    The binding travels beside the request (and the probe, guided and baseline requests the
    core derives from it), so it stays reachable for as long as the core may still run a
    call of this user call, background audits included, and is freed with the requests.
    """
    opts = dict(params.get("atlas") or {})
    opts["bindings"] = {**(opts.get("bindings") or {}), BINDING_KEY: binding}
    return {**params, "atlas": opts}


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
    kwargs = {k: v for k, v in params.items() if k not in (*_TOOL_PARAMS, "stop", "timeout")}
    stop = params.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    return params.get("tools") or None, params.get("tool_choice"), stop or None, kwargs


def prepare_model(model: BaseChatModel, params: dict[str, Any],
                  context: CallContext | None = None) -> tuple[Any, dict[str, Any]]:
    """``model`` with the request's tools bound, and the keywords for ``invoke`` (with the
    call's role in the run's metadata, when it has one)."""
    tools, tool_choice, stop, kwargs = split_params(params)
    metadata = role_metadata(context) if context is not None else {}
    if metadata:
        kwargs["config"] = {"metadata": metadata}
    runnable: Any = model
    if tools:
        extra = {"tool_choice": tool_choice} if tool_choice is not None else {}
        runnable = model.bind_tools(tools, **extra)
    if stop:
        kwargs["stop"] = stop
    return runnable, kwargs


def _iterate_isolated(make: Callable[[], Iterator[Any]]) -> Iterator[Any]:
    """``make()``'s items, each step run where no caller callback or tracer can see it."""
    context = contextvars.Context()
    untraced = tracing_context(enabled=False)

    def start() -> Iterator[Any]:
        untraced.__enter__()
        return make()

    items = context.run(start)
    try:
        while True:
            try:
                item = context.run(next, items)
            except StopIteration:
                return
            yield item
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            context.run(close)
        context.run(untraced.__exit__, None, None, None)


async def _aiterate_isolated(make: Callable[[], AsyncIterator[Any]]) -> AsyncIterator[Any]:
    """``make()``'s items, read by one task that runs where no caller callback or tracer can
    see it (an async generator is best left to the task that started it)."""
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def pump() -> None:
        try:
            with tracing_context(enabled=False):
                async for item in make():
                    queue.put_nowait(("item", item))
        except Exception as exc:
            queue.put_nowait(("error", exc))
        else:
            queue.put_nowait(("end", None))

    task = asyncio.get_running_loop().create_task(pump(), context=contextvars.Context())
    try:
        while True:
            kind, item = await queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        task.cancel()


class _ChunkReader:
    """A LangChain model's ``AIMessageChunk`` objects as ``ChatChunk`` objects; ``end()`` is
    the last chunk, with the usage and finish reason of the whole message."""

    def __init__(self) -> None:
        self.full: AIMessageChunk | None = None

    def read(self, chunk: Any) -> ChatChunk | None:
        if not isinstance(chunk, AIMessageChunk):
            return None
        self.full = chunk if self.full is None else self.full + chunk
        calls = tuple(ToolCallDelta(index=tc.get("index") or 0, id=tc.get("id"), name=tc.get("name"),
                                    arguments=tc.get("args") or "") for tc in chunk.tool_call_chunks)
        reasoning = (chunk.additional_kwargs or {}).get("reasoning_content")
        out = ChatChunk(content=chunk.text or None, tool_calls=calls,
                        reasoning=reasoning if isinstance(reasoning, str) and reasoning else None, raw=chunk)
        # A chunk with only metadata (the model's name, the finish reason) still goes on:
        # the adapter's final chunk carries it.
        return None if out.empty and not (chunk.response_metadata or chunk.usage_metadata) else out

    def end(self) -> ChatChunk:
        whole = to_chat_response(_chunk_message(self.full), None)
        return ChatChunk(finish_reason=whole.finish_reason, usage=whole.usage, model=whole.model)


class LangChainBackend:
    """A ``ChatBackend`` for LangChain chat models; see the module docstring."""

    def __init__(self, model: BaseChatModel | None = None, *, isolate: bool = True) -> None:
        if model is not None and not isinstance(model, BaseChatModel):
            raise ConfigError(f"expected a LangChain chat model (BaseChatModel), got {type(model).__name__}")
        self.model = model
        self.isolate = isolate

    def _resolve(self, request: ChatRequest) -> tuple[CallBinding | None, list[BaseMessage], dict[str, Any]]:
        binding = request.context.bindings.get(BINDING_KEY)
        params = request.params
        if binding is None:
            if self.model is None:
                raise ConfigError("this LangChainBackend serves bound calls only, and the request has no binding")
            return None, restore_messages(request.messages), params
        if not isinstance(binding, CallBinding):
            raise ConfigError(f"the request's {BINDING_KEY!r} binding is not a LangChain call binding")
        messages = restore_messages(request.messages, binding.originals, binding.original_dicts)
        return binding, messages, params

    # -- sync ---------------------------------------------------------------------------------

    def complete(self, request: ChatRequest) -> ChatResponse:
        binding, messages, params = self._resolve(request)
        if binding is None:
            model = self.model
            assert model is not None
            runnable, kwargs = prepare_model(model, params, request.context)
            return self._wrap(self._call(lambda: runnable.invoke(messages, **kwargs)))
        return self._wrap(self._call(lambda: binding.run(messages, params, request.context)))

    def _call(self, fn: Callable[[], Any]) -> Any:
        return _run_isolated(fn) if self.isolate else fn()

    # -- async --------------------------------------------------------------------------------

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        binding, messages, params = self._resolve(request)
        if binding is None:
            model = self.model
            assert model is not None
            runnable, kwargs = prepare_model(model, params, request.context)
            return self._wrap(await self._acall(lambda: runnable.ainvoke(messages, **kwargs)))
        return self._wrap(await self._acall(lambda: binding.arun(messages, params, request.context)))

    async def _acall(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        return await _arun_isolated(fn) if self.isolate else await fn()

    # -- streams ------------------------------------------------------------------------------

    def _streamable(self, request: ChatRequest) -> tuple[Any, list[BaseMessage], dict[str, Any]] | None:
        """(runnable, messages, call keywords) to stream ``request``; None: no way to stream it."""
        binding, messages, params = self._resolve(request)
        if binding is None:
            assert self.model is not None
            runnable, kwargs = prepare_model(self.model, params, request.context)
        elif binding.prepare is not None:
            runnable, kwargs = binding.prepare(params)
            metadata = role_metadata(request.context)
            if metadata:  # as the binding's ``run`` has it
                kwargs = {**kwargs, "config": {"metadata": metadata}}
        else:
            return None
        return runnable, messages, kwargs

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        target = self._streamable(request)
        if target is None:
            yield ChatChunk.whole(self.complete(request))
            return
        runnable, messages, kwargs = target
        reader = _ChunkReader()

        def chunks() -> Iterator[Any]:
            return iter(runnable.stream(messages, **kwargs))

        for item in (_iterate_isolated(chunks) if self.isolate else chunks()):
            chunk = reader.read(item)
            if chunk is not None:
                yield chunk
        yield reader.end()

    async def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        target = self._streamable(request)
        if target is None:
            yield ChatChunk.whole(await self.acomplete(request))
            return
        runnable, messages, kwargs = target
        reader = _ChunkReader()

        def chunks() -> AsyncIterator[Any]:
            return runnable.astream(messages, **kwargs)  # type: ignore[no-any-return]

        async for item in (_aiterate_isolated(chunks) if self.isolate else chunks()):
            chunk = reader.read(item)
            if chunk is not None:
                yield chunk
        yield reader.end()

    # -- results ------------------------------------------------------------------------------

    @staticmethod
    def _wrap(result: Any) -> ChatResponse:
        message = ai_message_of(result)
        return to_chat_response(message, Delivery(result, message, None))


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
