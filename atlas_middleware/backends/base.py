"""The one backend protocol: "a chat model I can call".

Everything else (retries, the circuit breaker, local batching, the lean HTTP path) is a
wrapper around or an implementation of this protocol. The teaching flow never sees a
backend; the drivers map a call's target (``student`` or ``teacher``) to one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Protocol, runtime_checkable

from ..messages import ChatRequest, ChatResponse


@runtime_checkable
class ChatBackend(Protocol):
    """Both methods take a typed request and return a typed response, or raise the
    provider's own exception unchanged."""

    def complete(self, request: ChatRequest) -> ChatResponse: ...

    async def acomplete(self, request: ChatRequest) -> ChatResponse: ...


class WrapperBackend:
    """Base for backends that add a feature around another backend."""

    def __init__(self, inner: ChatBackend) -> None:
        self.inner = inner

    def complete(self, request: ChatRequest) -> ChatResponse:
        return self.inner.complete(request)

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        return await self.inner.acomplete(request)

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
                import logging

                logging.getLogger(__name__).exception("cancel callback failed")

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
