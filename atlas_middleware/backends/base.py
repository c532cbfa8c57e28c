"""The one backend protocol: "a chat model I can call".

Everything else (retries, the circuit breaker, local batching, the lean HTTP path) is a
wrapper around or an implementation of this protocol. The teaching flow never sees a
backend; the drivers map a call's target (``student`` or ``teacher``) to one.
"""

from __future__ import annotations

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
