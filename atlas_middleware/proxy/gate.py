"""The atlas proxy's front door: an ASGI middleware around the LiteLLM proxy's app.

Two answers that LiteLLM's hooks cannot give, because LiteLLM decides before any hook runs:

* **A chat-completion body that is JSON but not an object** (``[]``, ``null``, ``1``,
  ``"text"``) is a 400 that says so. LiteLLM 1.108 crashes on it in its auth step and
  answers a bare 500. Anything else (an object, or bytes that are not JSON at all) goes to
  LiteLLM untouched, which reads it as before; the message checks of an object's fields
  are the pre-call hook's (``hooks.py``).
* **``GET /health/readiness`` is a 503** while the atlas provider cannot be built (an
  invalid ``atlas:`` section, a ledger that refuses the configured credentials, ...), so
  that a load balancer never sends traffic to a proxy whose every taught call would fail.
  The public body says only that atlas is not ready, as LiteLLM keeps that endpoint
  low-detail; the proxy's log and the authenticated calls' 503 say why.

The proxy loads our hooks in its start-up, after its app has built its middleware, so the
gate wraps the built stack (``install``) instead of ``app.add_middleware``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Readiness = Callable[[], Awaitable[BaseException | None]]

CHAT_PATH_SUFFIX = "/chat/completions"  # /v1/..., /openai/deployments/{model}/..., /engines/{model}/...
READINESS_PATH_SUFFIX = "/health/readiness"
_JSON_NAMES = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number",
               type(None): "null"}


def body_problem(body: bytes) -> str | None:
    """Why a chat-completion body is refused here, or None to let LiteLLM read it.

    Only a body that is valid JSON and not an object is refused. The first byte decides
    for nearly every request (an object starts with ``{``), so a normal body is never
    parsed twice.
    """
    head = body.lstrip()[:1]
    if not head or head == b"{":
        return None
    try:
        value = json.loads(body)
    except ValueError:  # not JSON at all: LiteLLM's own 400
        return None
    if isinstance(value, dict):  # JSON in another encoding (UTF-16 has a BOM first)
        return None
    kind = _JSON_NAMES.get(type(value), type(value).__name__)
    return f"the request body must be a JSON object with 'model' and 'messages', got {kind}"


async def _json(send: Send, status: int, payload: dict[str, Any]) -> None:
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def error_payload(message: str, *, param: str | None = None) -> dict[str, Any]:
    """A 400's body, shaped like LiteLLM's (and OpenAI's)."""
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": "400"}}


class AtlasGate:
    """The middleware. ``ready()`` returns None when the atlas provider is built, else its error."""

    def __init__(self, app: ASGIApp, ready: Readiness) -> None:
        self.app = app  # ``app``: the name middleware chains are walked by
        self.ready = ready

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = str(scope.get("path", "")), scope.get("method")
        if method == "GET" and path.rstrip("/").endswith(READINESS_PATH_SUFFIX):
            problem = await self.ready()
            if problem is not None:
                await _json(send, 503, {"status": "unhealthy", "atlas": (
                    f"the atlas provider cannot be built ({type(problem).__name__}); the proxy's log says why")})
                return
        elif method == "POST" and path.rstrip("/").endswith(CHAT_PATH_SUFFIX):
            body, receive = await _buffered(receive)
            refused = body_problem(body)
            if refused is not None:
                await _json(send, 400, error_payload(refused, param="body"))
                return
        await self.app(scope, receive, send)


async def _buffered(receive: Receive) -> tuple[bytes, Receive]:
    """The whole request body, and a ``receive`` that hands it to the app again."""
    chunks: list[bytes] = []
    early: Message | None = None
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away: the app sees it next
            early = message
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed, early
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        if early is not None:
            message, early = early, None
            return message
        return await receive()

    return body, replay


def install(app: Any, ready: Readiness) -> AtlasGate:
    """Put the gate in front of ``app`` (a Starlette/FastAPI app, started or not), once.

    Installing again (the hooks rebuilt with other settings) points the existing gate at
    the new readiness check.
    """
    stack = getattr(app, "middleware_stack", None)
    if isinstance(stack, AtlasGate):
        stack.ready = ready
        return stack
    if stack is None:  # not started yet: build the stack Starlette would build on its first call
        stack = app.build_middleware_stack()
    gate = AtlasGate(stack, ready)
    app.middleware_stack = gate
    return gate


__all__ = ["AtlasGate", "body_problem", "error_payload", "install"]
