"""A tiny OpenAI-compatible HTTP server for tests, benchmarks and offline demos.

It serves ``POST /v1/chat/completions`` (plain and SSE streaming), ``GET /v1/models`` and
``GET /health`` on a loopback port, answering from a ``ScriptedBackend``. Script items can
also be ``HTTPFault`` (an error status with headers, e.g. 429 + Retry-After) or ``RawBody``
(bytes written verbatim: garbage, truncated streams), so real HTTP clients (LiteLLM, the
openai SDK, the proxy) can be tested against every failure a server can produce.

A streamed answer is written as the backend's ``stream`` yields it, one event per chunk
(a ``ScriptedBackend`` streams word by word, and ``hold_stream`` can stop it after its first
chunk until a test lets it go on). A failure before the first chunk is an HTTP error, as
above; one after it is an ``error`` event and the end of the connection, without ``[DONE]``.

    with OpenAITestServer(ScriptedBackend({...})) as server:
        litellm.completion(model="openai/student", api_base=server.url, api_key="x", ...)

``strict=True`` checks a request as OpenAI's API does before answering: an unknown body
field, a parameter of the wrong type, a message of a bad shape (400) or a model it does not
serve (404), with OpenAI's messages. ``echo_key=True`` makes every error quote the caller's
key, as some providers and gateways do (``bad request for key sk-...``): the redaction
tests send a distinctive key and look for it in everything the middleware writes.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from ..messages import ChatRequest
from ..runtime.streaming import ChunkWriter
from .scripted import ScriptedBackend
from .wire import guess_context

# OpenAI's chat-completions body fields (a strict server refuses any other).
OPENAI_FIELDS = frozenset({
    "model", "messages", "audio", "frequency_penalty", "function_call", "functions", "logit_bias", "logprobs",
    "max_completion_tokens", "max_tokens", "metadata", "modalities", "n", "parallel_tool_calls", "prediction",
    "presence_penalty", "prompt_cache_key", "reasoning_effort", "response_format", "safety_identifier", "seed",
    "service_tier", "stop", "store", "stream", "stream_options", "temperature", "tool_choice", "tools",
    "top_logprobs", "top_p", "user", "verbosity", "web_search_options",
})
_NUMBERS = {"temperature": "a decimal", "top_p": "a decimal", "presence_penalty": "a decimal",
            "frequency_penalty": "a decimal", "n": "an integer", "max_tokens": "an integer",
            "max_completion_tokens": "an integer", "seed": "an integer", "top_logprobs": "an integer"}
_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})


def openai_problem(model: Any, messages: Any, body: dict[str, Any], models: list[str]) -> tuple[int, str] | None:
    """What OpenAI's API would refuse in this request (status, message), or None."""
    unknown = sorted(set(body) - OPENAI_FIELDS)
    if unknown:
        return 400, f"Unrecognized request argument supplied: {unknown[0]}"
    problem = _type_problem(body) or _messages_problem(messages)
    if problem is not None:
        return 400, problem
    if model not in models:
        return 404, f"The model `{model}` does not exist or you do not have access to it."
    return None


def _type_problem(body: dict[str, Any]) -> str | None:
    for name, kind in _NUMBERS.items():
        value = body.get(name)
        if value is None:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or (kind == "an integer" and not isinstance(value, int)):
            return f"Invalid type for '{name}': expected {kind}, but got {type(value).__name__} instead."
    for name in ("functions", "tools"):
        items = body.get(name)
        if items is None:
            continue
        if not isinstance(items, list):
            return f"Invalid type for '{name}': expected an array, but got {type(items).__name__} instead."
        for i, item in enumerate(items):
            fn = item.get("function") if name == "tools" and isinstance(item, dict) else item
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                return f"Missing required parameter: '{name}[{i}].name'."
    return None


def _messages_problem(messages: Any) -> str | None:
    if not isinstance(messages, list) or not messages:
        return "Invalid value for 'messages': expected a non-empty array."
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES:
            return f"Invalid value for 'messages[{i}].role'."
    return None


class HTTPFault(Exception):
    """Make the test server answer with this status, message and headers."""

    def __init__(self, status: int, message: str = "scripted failure", headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class RawBody(Exception):
    """Make the test server write these bytes as the body (status 200 unless given)."""

    def __init__(self, body: bytes, status: int = 200, content_type: str = "application/json",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__("raw body")
        self.body = body
        self.status = status
        self.content_type = content_type
        self.headers = headers or {}  # e.g. Content-Encoding for a body sent compressed


class JSONHandler(BaseHTTPRequestHandler):
    """What the test servers' handlers share: keep-alive, no Nagle delay, quiet logs, ``_send``."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle's algorithm on, the second waits
    # for a delayed ACK (~40 ms on Linux) on every kept-alive request.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return None

    def _own_headers(self) -> dict[str, str]:
        """Headers this server sends on every response (a provider's request id, say)."""
        return {}

    def _send(self, status: int, body: bytes, content_type: str = "application/json",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in {**self._own_headers(), **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)


class _Handler(JSONHandler):
    server: _Server

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(data).encode(), headers=headers)

    def _error(self, status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> None:
        if self.server.echo_key:
            message += f" (bad request for key {self.headers.get('Authorization', '').removeprefix('Bearer ')})"
        self._json(status, {"error": {"message": message, "type": kind, "code": status}}, headers=headers)

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path in ("/health", "/v1/health", "/health/liveliness", "/health/readiness"):
            self._json(200, {"status": "ok"})
        elif path in ("/v1/models", "/models"):
            with self.server.lock:
                self.server.listings += 1
            # As vLLM lists them: ``root`` is the model loaded, whatever name it is served as.
            self._json(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "atlas-test",
                 "root": self.server.roots.get(m, m), "parent": None}
                for m in self.server.models]})
        else:
            self._json(404, {"error": {"message": f"no route {path}", "type": "not_found"}})

    def do_POST(self) -> None:
        # The origin form (``/v1/...``), or the absolute form a forward proxy gets: this server
        # then answers as the proxied server would (the proxy tests).
        path = urllib.parse.urlsplit(self.path).path.rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if path not in ("/v1/chat/completions", "/chat/completions"):
            self._json(404, {"error": {"message": f"no route {path}", "type": "not_found"}})
            return
        key = self.server.api_key
        if key is not None and self.headers.get("Authorization") != f"Bearer {key}":
            self._error(401, "invalid api key", "authentication_error")
            return
        try:
            body = json.loads(raw or b"{}")
            messages = body.pop("messages")
            model = body.pop("model")
        except (ValueError, KeyError, AttributeError):
            self._error(400, "malformed request body", "invalid_request_error")
            return
        problem = openai_problem(model, messages, body, self.server.models) if self.server.strict else None
        if problem is not None:
            self._error(problem[0], problem[1], "invalid_request_error")
            return
        with self.server.lock:
            self.server.requests.append({"headers": {k.lower(): v for k, v in self.headers.items()}, "body": {"model": model, "messages": messages, **body}})
        stream = bool(body.pop("stream", False))
        include_usage = bool((body.pop("stream_options", None) or {}).get("include_usage"))
        # Over HTTP the role that rode beside the request stays behind (as for any real
        # server): the scripted backend is told the one the prompts' wording says (wire.py).
        request = ChatRequest(model=model, messages=messages, params=body, context=guess_context(messages))
        try:
            if stream:
                pieces = self.server.backend.stream(request)
                first = next(pieces, None)
            else:
                response = self.server.backend.complete(request)
        except HTTPFault as fault:
            self._error(fault.status, fault.message, "scripted", fault.headers)
            return
        except RawBody as rawbody:
            self._send(rawbody.status, rawbody.body, rawbody.content_type, rawbody.headers)
            return
        except Exception as exc:  # a scripted exception is the server's own failure: a 500
            self._json(500, {"error": {"message": f"{type(exc).__name__}: {exc}", "type": "server_error"}})
            return
        if not stream:
            out = response.to_openai().model_dump(exclude={"atlas"})
            out["model"] = model
            self._json(200, out)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        writer = ChunkWriter(include_usage, model=model)
        try:
            if first is not None:
                self._events(writer.feed(first))
                for piece in pieces:
                    self._events(writer.feed(piece))
            self._events(writer.end())
        except Exception as exc:  # mid-stream: an error event, and no [DONE]
            error = {"message": f"{type(exc).__name__}: {exc}", "type": "server_error", "code": 500}
            self.wfile.write(f"data: {json.dumps({'error': error})}\n\n".encode())
            return
        self.wfile.write(b"data: [DONE]\n\n")

    def _events(self, items: list[Any]) -> None:
        for chunk in items:
            data = chunk.model_dump(exclude_none=True)
            if "usage" in data:  # on the wire, OpenAI's usage chunk has no choices (LiteLLM adds one)
                data["choices"] = []
            self.wfile.write(f"data: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()


class QuietServer(ThreadingHTTPServer):
    """A threaded test server that shrugs off clients that gave up."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512
    backend: ScriptedBackend
    requests: list[dict[str, Any]]
    lock: threading.Lock
    connections: set[socket.socket]

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (a timed-out teacher call) is not the server's failure.
        return None

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()
        with self.lock:
            self.connections.add(conn)  # ``kill`` cuts the ones still open
        return conn, address

    def shutdown_request(self, request: Any) -> None:
        with self.lock:
            self.connections.discard(request)
        super().shutdown_request(request)


class _Server(QuietServer):
    models: list[str]
    roots: dict[str, str]
    listings: int
    api_key: str | None
    strict: bool
    echo_key: bool


class ThreadedTestServer:
    """What the test servers share: a threaded HTTP server on loopback answering from a
    scripted backend, with a log of the requests it got. Start with ``start()`` or a
    ``with`` block."""

    _thread_name = "test-server"

    @property
    def listings(self) -> int:
        with self._server.lock:
            return int(getattr(self._server, "listings", 0))

    def __init__(self, server: Any, backend: ScriptedBackend | None) -> None:
        self._server: Any = server  # the handlers read these attributes off the server
        self._server.backend = backend or ScriptedBackend()
        self._server.requests = []
        self._server.lock = threading.Lock()
        self._server.connections = set()
        self._thread: threading.Thread | None = None

    @property
    def backend(self) -> ScriptedBackend:
        return self._server.backend  # type: ignore[no-any-return]

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._server.lock:
            return list(self._server.requests)

    def clear(self) -> None:
        with self._server.lock:
            self._server.requests.clear()

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name=f"{self._thread_name}-{self.port}")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def kill(self) -> None:
        """Stop as a killed server process stops: no new connections (refused), and the
        open ones (kept-alive, or in the middle of an answer) cut without a response."""
        self.stop()
        with self._server.lock:
            open_connections = list(self._server.connections)
        for conn in open_connections:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


class OpenAITestServer(ThreadedTestServer):
    """An OpenAI-compatible ``/v1/chat/completions``; ``url`` is the api_base to use.

    ``roots`` serves models under other names, as vLLM's ``--served-model-name`` does:
    ``{"my-teacher": "Arc-Intelligence/ATLAS-8B-Thinking"}`` lists ``my-teacher`` in
    ``/v1/models`` with that ``root``; ``listings`` counts the ``/v1/models`` requests.
    """

    _thread_name = "openai-test-server"

    def __init__(self, backend: ScriptedBackend | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 models: list[str] | None = None, api_key: str | None = None, strict: bool = False,
                 echo_key: bool = False, roots: dict[str, str] | None = None) -> None:
        super().__init__(_Server((host, port), _Handler), backend)
        listed = models or ["student", "teacher"]
        self._server.models = [*listed, *(m for m in roots or {} if m not in listed)]
        self._server.roots = dict(roots or {})
        self._server.listings = 0
        self._server.api_key = api_key
        self._server.strict = strict
        self._server.echo_key = echo_key
        self.id = uuid.uuid4().hex[:8]


def serve_forever(backend: ScriptedBackend, host: str = "127.0.0.1", port: int = 8001) -> None:
    """Run a test server in the foreground (``python -m atlas_middleware.testing.server``)."""
    server = OpenAITestServer(backend, host=host, port=port).start()
    print(f"OpenAI-compatible test server at {server.url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()
