"""A tiny Anthropic Messages API server for tests: ``POST /v1/messages``, plain and streamed.

It lets a student named ``anthropic/...`` (with this server's ``url`` as its ``api_base``)
go through LiteLLM's real translation, both ways, as against api.anthropic.com:

* the request it reads is Anthropic's: ``system`` as a top-level field, content blocks,
  ``tool_use`` / ``tool_result`` blocks, ``tools`` with an ``input_schema``, ``max_tokens``;
* the answer it writes is Anthropic's: ``content`` blocks (``thinking``, ``text``,
  ``tool_use``), ``stop_reason``, and ``usage`` with ``input_tokens`` / ``output_tokens`` and
  the cache fields (``cache_read_input_tokens``, ``cache_creation_input_tokens``);
* a stream is Anthropic's server-sent events (``message_start``, ``content_block_*``,
  ``message_delta`` with the stop reason and output tokens, ``message_stop``);
* an ``HTTPFault`` in the script is an error in Anthropic's shape
  (``{"type": "error", "error": {"type": "overloaded_error", "message": ...}}``, the type
  chosen by the status: 400 ``invalid_request_error``, 429 ``rate_limit_error``, 529
  ``overloaded_error``, ...); a ``RawBody`` is written verbatim.

Answers come from a ``ScriptedBackend``, which sees the request translated back into
OpenAI messages, so its roles (probe, teacher, guided, baseline, judge) are recognised as on
the OpenAI test server. LiteLLM merges consecutive messages of one role into one Anthropic
turn (the probe's instruction joins the user's question, guidance in the user message joins
it too); the way back gives each block of a user turn its own message, so a request reads as
the loop built it. ``system`` blocks become system messages, ``tool_result`` blocks tool
messages, and an assistant turn's ``tool_use`` blocks its tool calls.

Token counts are the backend's: ``prompt_tokens`` is reported as ``input_tokens`` plus the
two cache fields (its ``cached_tokens`` as cache reads, and ``cache_creation`` tokens by role
as cache writes), so LiteLLM's ``prompt_tokens`` comes back equal to the scripted count.
Every request is recorded in ``requests`` with the role it played and the usage reported.

    with AnthropicTestServer(ScriptedBackend({...})) as server:
        litellm.completion(model="anthropic/claude-3-5-haiku-20241022", api_base=server.url,
                           api_key="x", messages=[...])
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from ..messages import ChatRequest, ChatResponse
from .scripted import ScriptedBackend, classify
from .server import HTTPFault, JSONHandler, QuietServer, RawBody, ThreadedTestServer
from .wire import guess_context

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error",
               500: "api_error", 529: "overloaded_error"}
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use", "content_filter": "refusal"}
TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(str(b.get("text", "")) for b in content or [] if isinstance(b, dict) and b.get("type") == "text")


def _user_turn(content: Any) -> list[dict[str, Any]]:
    """One Anthropic user turn as OpenAI messages: a message per block (see the docstring)."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    out: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type")
        if kind == "tool_result":
            out.append({"role": "tool", "tool_call_id": block.get("tool_use_id"),
                        "content": _text_of(block.get("content"))})
        elif kind == "text":
            out.append({"role": "user", "content": block.get("text", "")})
        elif kind == "image":
            source = block.get("source") or {}
            url = source.get("url") or f"data:{source.get('media_type')};base64,{source.get('data', '')}"
            out.append({"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]})
        else:
            raise ValueError(f"messages: unknown content block type {kind!r}")
    return out


def _assistant_turn(content: Any) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    calls = [{"id": b.get("id"), "type": "function",
              "function": {"name": b.get("name"), "arguments": json.dumps(b.get("input") or {})}}
             for b in content if b.get("type") == "tool_use"]
    message: dict[str, Any] = {"role": "assistant", "content": _text_of(content) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def to_openai_request(body: dict[str, Any]) -> ChatRequest:
    """An Anthropic Messages request as the OpenAI-shaped request the backend reads."""
    messages: list[dict[str, Any]] = []
    system = body.get("system")
    if isinstance(system, str):
        messages.append({"role": "system", "content": system})
    elif isinstance(system, list):
        messages += [{"role": "system", "content": b.get("text", "")} for b in system]
    for turn in body["messages"]:
        if turn["role"] == "user":
            messages += _user_turn(turn["content"])
        elif turn["role"] == "assistant":
            messages.append(_assistant_turn(turn["content"]))
        else:
            raise ValueError(f"messages: unknown role {turn['role']!r}")
    params: dict[str, Any] = {"max_tokens": body["max_tokens"]}
    for name in ("temperature", "top_p", "top_k"):
        if name in body:
            params[name] = body[name]
    if body.get("stop_sequences"):
        params["stop"] = body["stop_sequences"]
    if body.get("tools"):
        params["tools"] = [{"type": "function", "function": {
            "name": t["name"], "description": t.get("description", ""), "parameters": t.get("input_schema", {})}}
            for t in body["tools"]]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        params["tool_choice"] = ({"type": "function", "function": {"name": choice.get("name")}}
                                 if kind == "tool" else TOOL_CHOICES.get(str(kind), kind))
    # Only the wire came: the role is what the prompts' wording says (wire.py).
    return ChatRequest(model=body["model"], messages=messages, params=params, context=guess_context(messages))


def _blocks(response: ChatResponse) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if response.reasoning:
        out.append({"type": "thinking", "thinking": response.reasoning, "signature": "sig-" + uuid.uuid4().hex[:8]})
    if response.content:
        out.append({"type": "text", "text": response.content})
    for i, call in enumerate(response.tool_calls):
        out.append({"type": "tool_use", "id": call.id or f"toolu_{i:02d}", "name": call.name,
                    "input": call.parsed_arguments()})
    return out


class _Handler(JSONHandler):
    server: _Server

    def _own_headers(self) -> dict[str, str]:
        return {"request-id": "req_" + uuid.uuid4().hex[:12]}

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        error = {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}
        self._send(status, json.dumps(error).encode(), headers=headers)

    def do_GET(self) -> None:
        self._error(404, f"no route {self.path}")

    def do_POST(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if path != "/v1/messages":
            self._error(404, f"no route {path}")
            return
        key = self.server.api_key
        if key is not None and self.headers.get("x-api-key") != key:
            self._error(401, "invalid x-api-key")
            return
        if not self.headers.get("anthropic-version"):
            self._error(400, "anthropic-version: header is required")
            return
        try:
            body = json.loads(raw or b"{}")
            request = to_openai_request(body)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self._error(400, f"malformed request body: {exc}")
            return
        record: dict[str, Any] = {"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body,
                                  "openai": request, "role": classify(request)}
        with self.server.lock:
            self.server.requests.append(record)
        try:
            response = self.server.backend.complete(request)
        except HTTPFault as fault:
            record["status"] = fault.status
            self._error(fault.status, fault.message, fault.headers)
            return
        except RawBody as rawbody:
            record["status"] = rawbody.status
            self._send(rawbody.status, rawbody.body, rawbody.content_type, rawbody.headers)
            return
        except Exception as exc:  # a scripted exception is the server's own failure
            record["status"] = 500
            self._error(500, f"{type(exc).__name__}: {exc}")
            return
        usage = self._usage(response, record["role"])
        message = {"id": "msg_" + uuid.uuid4().hex[:20], "type": "message", "role": "assistant",
                   "model": body["model"], "content": _blocks(response),
                   "stop_reason": STOP_REASONS.get(response.finish_reason or "stop", "end_turn"),
                   "stop_sequence": None, "usage": usage}
        record.update(status=200, usage=usage, message=message)
        if body.get("stream"):
            self._stream(message)
        else:
            self._send(200, json.dumps(message).encode())

    def _usage(self, response: ChatResponse, role: str) -> dict[str, int]:
        u = response.usage
        written = min(self.server.cache_creation.get(role, 0), u.prompt_tokens - u.cached_tokens)
        return {"input_tokens": u.prompt_tokens - u.cached_tokens - written, "output_tokens": u.completion_tokens,
                "cache_creation_input_tokens": written, "cache_read_input_tokens": u.cached_tokens}

    def _stream(self, message: dict[str, Any]) -> None:
        """The message as Anthropic's events: each text block word by word, each tool_use
        block's input as one JSON delta, the stop reason and output tokens at the end."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        usage = message["usage"]
        start = {**message, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
        self._event("message_start", {"type": "message_start", "message": start})
        for i, block in enumerate(message["content"]):
            kind = block["type"]
            empty = {"tool_use": {**block, "input": {}}, "text": {"type": "text", "text": ""},
                     "thinking": {"type": "thinking", "thinking": "", "signature": ""}}[kind]
            self._event("content_block_start", {"type": "content_block_start", "index": i, "content_block": empty})
            if kind == "tool_use":
                deltas = [{"type": "input_json_delta", "partial_json": json.dumps(block["input"])}]
            elif kind == "thinking":
                deltas = [{"type": "thinking_delta", "thinking": w} for w in _pieces(block["thinking"])]
                deltas.append({"type": "signature_delta", "signature": block["signature"]})
            else:
                deltas = [{"type": "text_delta", "text": w} for w in _pieces(block["text"])]
            for delta in deltas:
                self._event("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta})
            self._event("content_block_stop", {"type": "content_block_stop", "index": i})
        self._event("message_delta", {"type": "message_delta",
                                      "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
                                      "usage": {"output_tokens": usage["output_tokens"]}})
        self._event("message_stop", {"type": "message_stop"})

    def _event(self, name: str, data: dict[str, Any]) -> None:
        self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        self.wfile.flush()


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


class _Server(QuietServer):
    api_key: str | None
    cache_creation: dict[str, int]


class AnthropicTestServer(ThreadedTestServer):
    """Start with ``start()`` or a ``with`` block; ``url`` is the ``api_base`` to use.

    ``api_key`` checks the ``x-api-key`` header (401 otherwise); ``cache_creation`` gives,
    by role, how many of a request's prompt tokens to report as cache writes.
    """

    _thread_name = "anthropic-test-server"

    def __init__(self, backend: ScriptedBackend | None = None, *, host: str = "127.0.0.1", port: int = 0,
                 api_key: str | None = None, cache_creation: dict[str, int] | None = None) -> None:
        super().__init__(_Server((host, port), _Handler), backend)
        self._server.api_key = api_key
        self._server.cache_creation = dict(cache_creation or {})

    @property
    def url(self) -> str:
        """The ``api_base`` (LiteLLM appends ``/v1/messages``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def cache_creation(self) -> dict[str, int]:
        return self._server.cache_creation  # type: ignore[no-any-return]

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Every request: ``body`` (Anthropic's), ``openai`` (as the backend read it),
        ``role``, ``status`` and, when answered, the ``usage`` and ``message`` sent."""
        return super().requests
