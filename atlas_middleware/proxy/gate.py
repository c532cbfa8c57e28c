"""The atlas proxy's front door: an ASGI middleware around the LiteLLM proxy's app.

LiteLLM reads and parses a request's whole body before it checks the key (its auth step
needs the model name), so without this gate anyone who can reach the port makes the proxy
buffer and parse whatever they send. For a model call (``POST`` to a path ending in
``/chat/completions``, ``/completions``, ``/v1/messages`` or ``/responses``) the gate
answers first, in this order, each answer given without the steps after it:

1. **401** when the request carries no key the proxy would accept (``auth.key_problem``:
   none at all, or one that is not the master key on a proxy that knows no other), before
   a byte of the body is read. Other keys (virtual keys, JWTs) are LiteLLM's to check,
   after the bounds below.
2. **413** for a body over ``GateLimits.max_body_bytes``: from ``Content-Length`` before
   reading, else (a chunked upload) as soon as the running count passes the limit; the
   gate never holds more than the limit and one chunk.
3. **408** when the body has not arrived whole within ``GateLimits.body_timeout`` seconds:
   a client sending a byte a second would otherwise hold a connection, and its buffer,
   forever.
4. **400** for JSON nested deeper than ``GateLimits.max_json_depth``, naming the limit.
   Found by a scan of the brackets outside strings, not by a parse: Python's parser, and
   every recursive walk after it (copies, validation, the ledger's JSON), fails on deep
   nesting with a ``RecursionError``, which LiteLLM answers with a bare 500.
5. **400** for a chat-completion body that is JSON but not an object (``[]``, ``null``,
   ``1``, ``"text"``), which LiteLLM 1.108 crashes on in its auth step (a bare 500).
   Anything else (an object, bytes that are not JSON at all) goes to LiteLLM untouched,
   which reads it as before; the message checks of an object's fields are the pre-call
   hook's (``hooks.py``).

The checks of 4 and 5 run off the event loop for a large body, so one caller's upload does
not stall the others' calls.

**``GET /health/readiness`` is a 503** while the atlas provider cannot be built (an invalid
``atlas:`` section, a ledger that refuses the configured credentials, ...), so that a load
balancer never sends traffic to a proxy whose every taught call would fail. The public body
says only that atlas is not ready, as LiteLLM keeps that endpoint low-detail; the proxy's
log and the authenticated calls' 503 say why. Once it is built, LiteLLM's own readiness
answer gets an ``atlas`` field with the teacher's state (``status``: the start-up check's
result and the circuit breaker's, ``teacher.py``), which never fails it: taught calls
fail open, so a proxy whose teacher is down still serves every call, untaught.

The proxy loads our hooks in its start-up, after its app has built its middleware, so the
gate wraps the built stack (``install``) instead of ``app.add_middleware``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Readiness = Callable[[], Awaitable[BaseException | None]]
KeyCheck = Callable[[Mapping[str, str]], str | None]
Status = Callable[[], Awaitable[dict[str, str]]]
"""The teacher's state words for readiness (``{"teacher": "unreachable", "circuit": "open"}``)."""
"""The request's headers (names lower-cased) -> why it gets a 401, or None to go on."""

CHAT_PATH_SUFFIX = "/chat/completions"  # /v1/..., /openai/deployments/{model}/..., /engines/{model}/...
MODEL_CALL_SUFFIXES = ("/completions", "/v1/messages", "/responses")  # /completions covers chat's
READINESS_PATH_SUFFIX = "/health/readiness"
MIB = 1024 * 1024
OFF_LOOP_BYTES = 256 * 1024
"""Bodies above this are scanned in a worker thread rather than on the event loop."""
_PARSED_BYTES = 64 * 1024
"""A non-object body up to this size is parsed to name its kind; a larger one is named by
its first character (parsing a 10 MB array would build it, to throw it away)."""
_JSON_NAMES = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number",
               type(None): "null"}
_HEAD_NAMES = {b"[": "an array", b'"': "a string"}


@dataclass(frozen=True)
class GateLimits:
    """The bounds the gate puts on a model call's body (``proxy_*`` settings of ``AtlasConfig``)."""

    max_body_bytes: int = 10 * MIB
    body_timeout: float = 60.0
    max_json_depth: int = 64

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1 or self.body_timeout <= 0 or self.max_json_depth < 1:
            raise ValueError(f"gate limits must be positive, got {self}")

    @classmethod
    def of(cls, config: Any) -> GateLimits:
        """The limits an ``AtlasConfig`` sets."""
        proxy = config.proxy
        return cls(max_body_bytes=int(proxy.max_body_mb * MIB), body_timeout=proxy.body_timeout,
                   max_json_depth=proxy.max_json_depth)


# -- the body, without parsing it -------------------------------------------------------------

# A JSON string, or an unterminated one running to the end of the body: every quote starts
# a match, so the scan is one linear pass (a string that could fail would be retried from
# each later quote, quadratic on ``"\"\"\"...``).
_STRING = re.compile(rb'"(?:[^"\\]++|\\[\s\S])*+(?:"|\\?\Z)')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENERS = frozenset(b"[{")


def too_deep(body: bytes, limit: int) -> bool:
    """Whether the body's brackets outside strings nest deeper than ``limit``.

    For JSON that is the nesting depth; for bytes that are not JSON, the deepest run of
    unclosed brackets (no well-formed request has one either).
    """
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= limit:  # nearly every request
        return False
    depth = 0
    for byte in brackets:
        if byte in _OPENERS:
            depth += 1
            if depth > limit:
                return True
        elif depth:
            depth -= 1
    return False


def not_an_object(body: bytes) -> str | None:
    """Why a chat-completion body is refused for not being a JSON object, or None.

    The first byte decides for nearly every request (an object starts with ``{``), so a
    normal body is never parsed here.
    """
    stripped = body.lstrip()
    head = stripped[:1]
    if not head or head == b"{":
        return None
    kind = _HEAD_NAMES.get(head)
    if kind is None:
        if len(stripped) > _PARSED_BYTES:
            return None  # not JSON, or JSON in another encoding: LiteLLM's to read
        try:
            value = json.loads(stripped)
        except Exception:  # not JSON at all (LiteLLM's own 400); never a 500 from here
            return None
        if isinstance(value, dict):  # JSON in another encoding (UTF-16 has a BOM first)
            return None
        kind = _JSON_NAMES.get(type(value), type(value).__name__)
    return f"the request body must be a JSON object with 'model' and 'messages', got {kind}"


def body_problem(body: bytes, *, max_depth: int = GateLimits.max_json_depth, chat: bool = True) -> str | None:
    """Why a model call's body is refused with a 400 (steps 4 and 5 above), or None."""
    if too_deep(body, max_depth):
        return f"the request body nests JSON deeper than {max_depth} levels, the most this proxy accepts"
    return not_an_object(body) if chat else None


# -- answers ------------------------------------------------------------------------------------


def error_payload(message: str, *, param: str | None = None, status: int = 400,
                  kind: str = "invalid_request_error") -> dict[str, Any]:
    """An error body, shaped like LiteLLM's (and OpenAI's)."""
    return {"error": {"message": message, "type": kind, "param": param, "code": str(status)}}


async def _json(send: Send, status: int, payload: dict[str, Any]) -> None:
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


async def _refuse(send: Send, status: int, message: str, *, param: str | None = "body",
                  kind: str = "invalid_request_error") -> None:
    await _json(send, status, error_payload(message, param=param, status=status, kind=kind))


def _too_large(limits: GateLimits) -> str:
    return (f"the request body is larger than {limits.max_body_bytes} bytes "
            f"({limits.max_body_bytes / MIB:g} MiB), the most this proxy accepts")


# -- the middleware -----------------------------------------------------------------------------


class _TooLarge(Exception):
    """The body passed the limit while it was being read."""


class AtlasGate:
    """The middleware. ``ready()`` returns None when the atlas provider is built, else its error;
    ``key_problem`` (None: no key check here) and ``limits`` are the steps of the docstring."""

    def __init__(self, app: ASGIApp, ready: Readiness, limits: GateLimits | None = None,
                 key_problem: KeyCheck | None = None, status: Status | None = None) -> None:
        self.app = app  # ``app``: the name middleware chains are walked by
        self.ready = ready
        self.limits = limits or GateLimits()
        self.key_problem = key_problem
        self.status = status

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = str(scope.get("path", "")).rstrip("/"), scope.get("method")
        if method == "GET" and path.endswith(READINESS_PATH_SUFFIX):
            problem = await self.ready()
            if problem is not None:
                await _json(send, 503, {"status": "unhealthy", "atlas": (
                    f"the atlas provider cannot be built ({type(problem).__name__}); the proxy's log says why")})
                return
            if self.status is not None:
                await self.app(scope, receive, _with_atlas_field(send, await self.status()))
                return
        elif method == "POST" and path.endswith(MODEL_CALL_SUFFIXES):
            gated = await self._admit(scope, receive, send, chat=path.endswith(CHAT_PATH_SUFFIX))
            if gated is None:
                return
            receive = gated
        await self.app(scope, receive, send)

    async def _admit(self, scope: Scope, receive: Receive, send: Send, *, chat: bool) -> Receive | None:
        """A ``receive`` that hands the app the body, read within the bounds; None once refused."""
        headers = _headers(scope)
        if self.key_problem is not None:
            problem = self.key_problem(headers)
            if problem is not None:
                await _refuse(send, 401, problem, param="api_key", kind="auth_error")
                return None
        limits = self.limits
        if _content_length(headers) > limits.max_body_bytes:
            await _refuse(send, 413, _too_large(limits))
            return None
        try:
            async with asyncio.timeout(limits.body_timeout):
                body, replay = await _buffered(receive, limits.max_body_bytes)
        except TimeoutError:
            await _refuse(send, 408, f"the request body did not arrive within {limits.body_timeout:g} s")
            return None
        except _TooLarge:
            await _refuse(send, 413, _too_large(limits))
            return None
        if len(body) > OFF_LOOP_BYTES:
            refused = await asyncio.to_thread(body_problem, body, max_depth=limits.max_json_depth, chat=chat)
        else:
            refused = body_problem(body, max_depth=limits.max_json_depth, chat=chat)
        if refused is not None:
            await _refuse(send, 400, refused)
            return None
        return replay


def _with_atlas_field(send: Send, extra: dict[str, str]) -> Send:
    """``send`` that adds ``"atlas": extra`` to a JSON object body (LiteLLM's readiness
    answer), its length corrected; any other body goes out as it came."""
    start: Message | None = None
    parts: list[bytes] = []

    async def sending(message: Message) -> None:
        nonlocal start
        if message["type"] == "http.response.start":
            start = message
            return
        if message["type"] != "http.response.body" or start is None:
            await send(message)
            return
        parts.append(bytes(message.get("body", b"")))
        if message.get("more_body"):
            return
        body = b"".join(parts)
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict):
            body = json.dumps({**data, "atlas": extra}).encode()
        headers = [(k, v) for k, v in start.get("headers", []) if bytes(k).lower() != b"content-length"]
        await send({**start, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    return sending


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers, names lower-cased (ASGI servers send them so), values as latin-1."""
    return {bytes(k).decode("latin-1").lower(): bytes(v).decode("latin-1") for k, v in scope.get("headers") or ()}


def _content_length(headers: Mapping[str, str]) -> int:
    """The declared body size; 0 when there is none (the running count bounds the body then)."""
    try:
        return max(0, int(headers.get("content-length", "0")))
    except ValueError:  # the server refuses such a request before we see it
        return 0


async def _buffered(receive: Receive, limit: int) -> tuple[bytes, Receive]:
    """The whole request body (``_TooLarge`` past ``limit`` bytes), and a ``receive`` that
    hands it to the app again."""
    chunks: list[bytes] = []
    size = 0
    early: Message | None = None
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away: the app sees it next
            early = message
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge()
        chunks.append(chunk)
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


def install(app: Any, ready: Readiness, limits: GateLimits | None = None,
            key_problem: KeyCheck | None = None, status: Status | None = None) -> AtlasGate:
    """Put the gate in front of ``app`` (a Starlette/FastAPI app, started or not), once.

    Installing again (the hooks rebuilt with other settings) points the existing gate at
    the new readiness check, limits and key check.
    """
    stack = getattr(app, "middleware_stack", None)
    if isinstance(stack, AtlasGate):
        stack.ready, stack.limits, stack.key_problem, stack.status = ready, limits or GateLimits(), key_problem, status
        return stack
    if stack is None:  # not started yet: build the stack Starlette would build on its first call
        stack = app.build_middleware_stack()
    gate = AtlasGate(stack, ready, limits, key_problem, status)
    app.middleware_stack = gate
    return gate


__all__ = ["AtlasGate", "GateLimits", "body_problem", "error_payload", "install", "not_an_object", "too_deep"]
