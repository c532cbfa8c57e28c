"""The one backend protocol: "a chat model I can call", whole or as a stream.

Everything else (retries, the circuit breaker, local batching, the lean HTTP path) is a
wrapper around or an implementation of this protocol. The teaching flow never sees a
backend; the drivers map a call's target (``student`` or ``teacher``) to one.

Streaming is a way of calling a model, not a replay added after the call (pydantic-ai's
``Model.request_stream``): ``stream`` / ``astream`` yield ``ChatChunk`` objects as the model
writes them, the call's usage on the last one, and every wrapper streams through. A
backend without native streaming yields its whole answer as one chunk
(``WholeAnswerStreams``); ``stream_of`` / ``astream_of`` do the same for an object that has
only ``complete`` / ``acomplete`` (a user's own backend written before streams).
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol, runtime_checkable

from ..messages import ChatRequest, ChatResponse
from ..runtime.chunks import ChatChunk


@runtime_checkable
class ChatBackend(Protocol):
    """Every method takes a typed request and returns a typed response (or its chunks), or
    raises the provider's own exception unchanged. A stream raises before its first chunk
    what the whole call would have raised; a failure after it ends the iteration.

    A backend may also have ``timeout_error(request, message) -> Exception``: the error its
    own model raises when a call runs out of time (``litellm.Timeout`` for LiteLLM models).
    The drivers raise it when the caller's deadline passes, so a caller sees the same error
    as from the model alone; without it, a builtin ``TimeoutError`` (``timeout_error_of``).
    """

    def complete(self, request: ChatRequest) -> ChatResponse: ...

    async def acomplete(self, request: ChatRequest) -> ChatResponse: ...

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]: ...

    def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]: ...


def stream_of(backend: Any, request: ChatRequest) -> Iterator[ChatChunk]:
    """``backend.stream(request)``; one chunk from ``complete`` for a backend without it."""
    method = getattr(backend, "stream", None)
    if method is not None:
        return method(request)  # type: ignore[no-any-return]
    return _whole(backend, request)


def astream_of(backend: Any, request: ChatRequest) -> AsyncIterator[ChatChunk]:
    """``backend.astream(request)``; one chunk from ``acomplete`` for a backend without it."""
    method = getattr(backend, "astream", None)
    if method is not None:
        return method(request)  # type: ignore[no-any-return]
    return _awhole(backend, request)


def timeout_error_of(backend: Any, request: ChatRequest, message: str) -> Exception:
    """The error ``backend``'s model raises when ``request`` runs out of time: its own
    ``timeout_error``, else a builtin ``TimeoutError`` (what in-process models, asyncio and
    LangChain's runnables raise)."""
    method = getattr(backend, "timeout_error", None)
    if method is None:
        return TimeoutError(message)
    return method(request, message)  # type: ignore[no-any-return]


def _whole(backend: Any, request: ChatRequest) -> Iterator[ChatChunk]:
    yield ChatChunk.whole(backend.complete(request))


async def _awhole(backend: Any, request: ChatRequest) -> AsyncIterator[ChatChunk]:
    yield ChatChunk.whole(await backend.acomplete(request))


class WholeAnswerStreams:
    """Mixin for backends without native streaming: the whole answer, as one chunk."""

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        return _whole(self, request)

    def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        return _awhole(self, request)


class WrapperBackend:
    """Base for backends that add a feature around another backend; streams go through."""

    def __init__(self, inner: ChatBackend) -> None:
        self.inner = inner

    def complete(self, request: ChatRequest) -> ChatResponse:
        return self.inner.complete(request)

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        return await self.inner.acomplete(request)

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        return stream_of(self.inner, request)

    def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        return astream_of(self.inner, request)

    def __getattr__(self, name: str) -> object:
        # Attributes of the wrapped backend (``model``, ``defaults``) stay reachable.
        return getattr(self.inner, name)


class CancelToken:
    """A caller's "I no longer want this answer": the driver gave up at the call's deadline,
    or the flow dropped the call.

    A thread blocked in ``complete`` cannot be interrupted from outside, so the drivers hand
    each call a token (see ``cancellation``) and cancel it when they stop waiting. Backends
    that can stop work early (the local batcher drops the request from its decode loop) read
    it with ``current_cancel_token``; all others ignore it and their late answer is dropped.
    Async callers need no token: cancelling the task reaches ``acomplete`` as
    ``CancelledError``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled = False
        self._callbacks: list[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Cancel once; runs the registered callbacks in this thread."""
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # one backend's failure must not stop the driver giving up
                from .._redact import secret_logger

                secret_logger(__name__).exception("cancel callback failed")

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` when the token is cancelled (now, if it already is); returns a
        function that unregisters it."""
        with self._lock:
            if not self._cancelled:
                self._callbacks.append(callback)
                return lambda: self._discard(callback)
        callback()
        return lambda: None

    def _discard(self, callback: Callable[[], None]) -> None:
        with self._lock:
            if callback in self._callbacks:
                self._callbacks.remove(callback)


_current_token: ContextVar[CancelToken | None] = ContextVar("atlas_cancel_token", default=None)


def current_cancel_token() -> CancelToken | None:
    """The token of the call this thread (or task) is making, if its caller gave one."""
    return _current_token.get()


@contextmanager
def cancellation(token: CancelToken | None) -> Iterator[None]:
    """Make ``token`` the current one for the backend calls made inside the block."""
    reset = _current_token.set(token)
    try:
        yield
    finally:
        _current_token.reset(reset)
