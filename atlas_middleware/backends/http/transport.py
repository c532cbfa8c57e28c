"""The lean path: OpenAI-compatible servers called directly over one shared connection pool.

A taught call makes three to five backend calls. Through ``litellm.completion`` each pays
LiteLLM's own per-call work (several milliseconds of parameter mapping, logging objects and
cost look-ups); for servers that already speak OpenAI's protocol (vLLM, OpenAI itself, any
``/v1/chat/completions``) that translation does nothing useful. This backend posts the JSON
itself and keeps LiteLLM's *behaviour*: the same usage fields, the same exception types for
the same HTTP statuses (so retries and user code see no difference), the same
``ModelResponse`` handed to the user.

Async calls go through aiohttp, sync calls through httpx. Under concurrency an
``httpx.AsyncClient`` request costs about 3.3 ms of CPU on the development machine and an
aiohttp one about 0.34 ms (httpcore rescans its whole pool per request); the proxy serves
every taught call on one event loop, so that CPU is its throughput (bench/proxy_load.py).

It serves a request only when it can do so faithfully (see ``LeanHTTPBackend.accepts``):
a ``hosted_vllm/`` or ``openai/`` model with an explicit ``api_base``, and a body that is
the one LiteLLM would send for that model and those parameters (``param_contract.py``
learns it from LiteLLM once per model and parameter set: ``max_completion_tokens`` for
o-series and gpt-5 models, what ``drop_params`` drops, ``extra_body`` merged, ...). Anything
else, and anything the contract is not sure of, goes to LiteLLM.

Both transports share everything but the sending: ``_prepare`` builds one ``_Post`` (URL,
headers, the encoded body, the timeout, the environment's proxy for the URL), ``_error``
maps a failure, ``_parse`` reads an answer and ``_Events`` reads an event stream, and no
redirect is followed (``FOLLOW_REDIRECTS``). What is left in each client method is the
transport call itself. tests/test_conformance.py runs the same checks over both.

Streams (``stream`` / ``astream``) post the same body with ``stream`` and
``stream_options.include_usage`` set and read the server-sent events as they arrive: an
error status raises before the first chunk, as the whole call would; an ``error`` event, or
a connection that ends before any finish reason, raises in the middle of the stream.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx

from ..._redact import redact, remember_call, remember_secret
from ...errors import ConfigError
from ...messages import ChatRequest, ChatResponse, is_large
from ...runtime.chunks import ChatChunk
from ..compat import release_session
from ..litellm import STREAM_USAGE, OpenAIStream, from_model_response, import_litellm, litellm_timeout, sized
from .param_contract import ParamContract

LEAN_PREFIXES = {"hosted_vllm/": "hosted_vllm", "openai/": "openai"}
# Where LiteLLM looks for a key when none is passed: the lean path must look there too.
ENV_KEYS = {"openai": "OPENAI_API_KEY", "hosted_vllm": "HOSTED_VLLM_API_KEY"}
DEFAULT_TIMEOUT = 600.0
FOLLOW_REDIRECTS = False
"""A redirect is an answer, an error one, never followed: the OpenAI SDK's rule (aiohttp would
resend a POST after a 301/302 as a GET)."""
_ERROR_STATUS = 300
"""The first status that is not an answer: redirects (not followed) and errors."""
_TRANSPORT_ERRORS = (httpx.HTTPError, aiohttp.ClientError, TimeoutError)
"""What either client raises when no answer came (``_error`` tells timeouts apart)."""

_STATUS_ERRORS = {
    400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError",
    404: "NotFoundError", 408: "Timeout", 422: "UnprocessableEntityError", 429: "RateLimitError",
    500: "InternalServerError", 502: "ServiceUnavailableError", 503: "ServiceUnavailableError",
    504: "Timeout",
}


def _split_model(model: str) -> tuple[str, str] | None:
    for prefix, provider in LEAN_PREFIXES.items():
        if model.startswith(prefix):
            return provider, model[len(prefix):]
    return None


class LeanHTTPBackend:
    """OpenAI-compatible HTTP with pooled connections; LiteLLM's exceptions on errors."""

    def __init__(self, defaults: dict[str, Any] | None = None, max_connections: int = 256) -> None:
        self.defaults = {k: v for k, v in (defaults or {}).items() if v is not None}
        self._max_connections = max_connections
        # One httpx pool per proxy (the environment's, per URL: ``_proxy``); almost always one.
        self._sync: dict[str | None, httpx.Client] = {}
        # One pool per event loop (an aiohttp session is bound to the loop it was made on).
        self._async: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}
        self._proxies: dict[str, str | None] = {}
        self._lock = threading.Lock()
        self._litellm = import_litellm()  # exception types and usage estimation
        self._contract = ParamContract()
        self._memo = threading.local()

    def timeout_error(self, request: ChatRequest, message: str) -> Exception:
        return litellm_timeout(request, message)  # this path answers as LiteLLM would

    def accepts(self, request: ChatRequest) -> bool:
        return self._body(request) is not None

    def _body(self, request: ChatRequest) -> dict[str, Any] | None:
        """The body LiteLLM would send for this request, or None: not for this path.

        The router asks ``accepts`` and then calls the backend with the same request (on
        the same thread, with no await in between), so the answer is kept for that call.
        """
        memo = self._memo
        if getattr(memo, "request", None) is request:
            return memo.body  # type: ignore[no-any-return]
        body = None
        params = {**self.defaults, **request.params}
        # The LiteLLM proxy's router retries by itself and asks for ``max_retries=0`` on
        # every call: one attempt, which is what this path makes. Other values mean SDK
        # retries, which LiteLLM performs.
        if (_split_model(request.model) is not None and (params.get("api_base") or params.get("base_url"))
                and params.get("max_retries") in (None, 0)):
            body = self._contract.body(request.model, request.messages, params)
        memo.request, memo.body = request, body
        return body

    def _prepare(self, request: ChatRequest, stream: bool = False) -> _Post:
        """The POST either transport sends; with ``stream``, asking for events with their usage."""
        body = self._body(request)
        self._memo.request = self._memo.body = None
        if body is None:
            raise ConfigError(f"the lean path cannot send this request as LiteLLM would ({request.model}); "
                              "route it through LiteLLM (ModelRouter does)")
        params = {**self.defaults, **request.params}
        split = _split_model(request.model)
        assert split is not None
        provider, _ = split
        base = str(params.get("api_base") or params.get("base_url")).rstrip("/")
        url = base + "/chat/completions"
        headers = {"Content-Type": "application/json", **(params.get("extra_headers") or {})}
        api_key = params.get("api_key") or os.environ.get(ENV_KEYS[provider])
        # A provider may echo the key in an error; the error's text goes to the caller
        # (through the proxy: to clients who never held that key). Remembered per call, in
        # a bounded set (redact.py).
        remember_call(params)
        if api_key:
            remember_secret(str(api_key))
            headers["Authorization"] = f"Bearer {api_key}"
        if stream:
            body = {**body, **STREAM_USAGE}
            headers["Accept"] = "text/event-stream"
        # Encoded once, here, the way httpx encodes ``json=`` (UTF-8, compact, no NaN), so
        # both transports send the same bytes.
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
        timeout = float(params.get("timeout") or DEFAULT_TIMEOUT)
        return _Post(url, headers, content, timeout, self._proxy(url), provider, request.model)

    def _client(self, proxy: str | None) -> httpx.Client:
        client = self._sync.get(proxy)  # the hot path: no lock once the pool exists
        if client is not None:
            return client
        with self._lock:
            if proxy not in self._sync:
                limits = httpx.Limits(max_connections=self._max_connections,
                                      max_keepalive_connections=self._max_connections)
                # An explicit transport: httpx then reads no proxy from the environment
                # itself (``_proxy`` decided, for both clients); certificates still come
                # from it (SSL_CERT_FILE), as ``trust_env`` has them.
                transport = httpx.HTTPTransport(limits=limits, proxy=proxy)
                self._sync[proxy] = httpx.Client(transport=transport, follow_redirects=FOLLOW_REDIRECTS)
            return self._sync[proxy]

    def _session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        session = self._async.get(loop)  # the hot path: no lock once the pool exists
        if session is not None:
            return session
        with self._lock:
            # Pools of loops that have ended (``asyncio.run`` per call) are dropped, and
            # their sockets closed, instead of piling up.
            for old_loop in [lp for lp in self._async if lp.is_closed()]:
                release_session(self._async.pop(old_loop))
            session = self._async.get(loop)
            if session is None:
                connector = aiohttp.TCPConnector(
                    limit=self._max_connections,
                    # The system resolver, as httpx and LiteLLM use (aiohttp would switch to
                    # c-ares whenever aiodns happens to be installed).
                    resolver=aiohttp.ThreadedResolver(),
                )
                # No trust_env: it costs two thread hops per request (proxy and netrc
                # look-ups); the environment's proxy is looked up once per URL instead.
                session = self._async[loop] = aiohttp.ClientSession(connector=connector)
            return session

    def _proxy(self, url: str) -> str | None:
        """The proxy the environment names for ``url`` (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY),
        as httpx and LiteLLM honour it; read once per URL, as httpx reads it once per client.
        Both transports use this answer (aiohttp reads none itself: no ``trust_env``)."""
        if url not in self._proxies:
            parts = urllib.parse.urlsplit(url)
            found = urllib.request.getproxies()
            proxy = found.get(parts.scheme) or found.get("all")
            if proxy and parts.hostname and urllib.request.proxy_bypass(parts.hostname):
                proxy = None
            self._proxies[url] = proxy or None
        return self._proxies[url]

    def _error(self, exc: Exception | None, reply: _Reply | None, post: _Post) -> Exception:
        lm, provider, model = self._litellm, post.provider, post.model
        if reply is None:
            if isinstance(exc, (httpx.TimeoutException, TimeoutError)):
                return lm.Timeout(message=redact(f"{provider} request timed out: {exc!r}"), model=model, llm_provider=provider)  # type: ignore[no-any-return]
            return lm.APIConnectionError(message=redact(f"{provider} connection failed: {exc!r}"), llm_provider=provider, model=model)  # type: ignore[no-any-return]
        status = reply.status
        message = redact(f"{provider} returned {status}: {reply.text[:1000]}")
        name = _STATUS_ERRORS.get(status)
        # LiteLLM's exceptions carry an httpx response (retries read its Retry-After).
        response = reply.as_httpx()
        if name == "Timeout":
            return lm.Timeout(message=message, model=model, llm_provider=provider, response=response,  # type: ignore[no-any-return]
                              exception_status_code=status, headers=dict(response.headers))
        if name is None:
            return lm.APIError(status_code=status, message=message, llm_provider=provider, model=model)  # type: ignore[no-any-return]
        return getattr(lm, name)(message=message, llm_provider=provider, model=model, response=response)  # type: ignore[no-any-return]

    def _parse(self, request: ChatRequest, reply: _Reply, post: _Post) -> ChatResponse:
        if reply.status >= _ERROR_STATUS:
            raise self._error(None, reply, post)
        provider = post.provider
        try:
            data = json.loads(reply.content)
            data["choices"][0]  # noqa: B018 - shape check: a body without choices is garbage
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise self._litellm.APIError(
                status_code=reply.status,
                message=redact(f"{provider} returned a malformed body: {reply.text[:200]!r}"),
                llm_provider=provider, model=request.model,
            ) from exc
        for choice in data["choices"]:
            if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
                _reasoning_as_litellm(choice["message"])
        return from_model_response(data, request, self._litellm)

    async def _aprepare(self, request: ChatRequest, stream: bool = False) -> _Post:
        """``_prepare`` (the body, encoded) on the loop; for a large request in a worker thread:
        encoding a few MB of messages takes tens of ms (``messages.LARGE_REQUEST_CHARS``)."""
        if not is_large(request.messages):
            return self._prepare(request, stream)
        self._memo.request = self._memo.body = None  # the worker works the body out itself
        return await asyncio.to_thread(self._prepare, request, stream)

    # -- the transport calls: all that differs between the two clients ------------------------
    # httpx's timeout bounds the connection and each read; aiohttp's bounds a whole answer
    # (``total``) and a stream's connection and each of its reads, as httpx's does.

    def complete(self, request: ChatRequest) -> ChatResponse:
        post = self._prepare(request)
        try:
            response = self._client(post.proxy).post(post.url, content=post.content, headers=post.headers,
                                                     timeout=post.timeout)
        except _TRANSPORT_ERRORS as exc:
            raise self._error(exc, None, post) from exc
        return self._parse(request, _Reply(post.url, response.status_code, response.headers, response.content), post)

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        post = await self._aprepare(request)
        try:
            async with self._session().post(post.url, data=post.content, headers=post.headers, proxy=post.proxy,
                                            timeout=aiohttp.ClientTimeout(total=post.timeout),
                                            allow_redirects=FOLLOW_REDIRECTS) as response:
                reply = _Reply(post.url, response.status, response.headers, await response.read())
        except _TRANSPORT_ERRORS as exc:
            raise self._error(exc, None, post) from exc
        return await sized(request, self._parse, request, reply, post)

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        post = self._prepare(request, stream=True)
        events = _Events(request, post, self._litellm)
        try:
            with self._client(post.proxy).stream("POST", post.url, content=post.content, headers=post.headers,
                                                 timeout=post.timeout) as response:
                if response.status_code >= _ERROR_STATUS:
                    reply = _Reply(post.url, response.status_code, response.headers, response.read())
                    raise self._error(None, reply, post)
                for line in response.iter_lines():
                    yield from events.feed(line)
                    if events.done:
                        break
        except _TRANSPORT_ERRORS as exc:
            raise self._error(exc, None, post) from exc
        yield events.end()

    async def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        post = await self._aprepare(request, stream=True)
        events = _Events(request, post, self._litellm)
        try:
            async with self._session().post(post.url, data=post.content, headers=post.headers, proxy=post.proxy,
                                            timeout=aiohttp.ClientTimeout(connect=post.timeout,
                                                                          sock_read=post.timeout),
                                            allow_redirects=FOLLOW_REDIRECTS) as response:
                if response.status >= _ERROR_STATUS:
                    reply = _Reply(post.url, response.status, response.headers, await response.read())
                    raise self._error(None, reply, post)
                async for raw in response.content:
                    for chunk in events.feed(raw.decode("utf-8", errors="replace")):
                        yield chunk
                    if events.done:
                        break
        except _TRANSPORT_ERRORS as exc:
            raise self._error(exc, None, post) from exc
        yield await sized(request, events.end)

    def close(self) -> None:
        with self._lock:
            for client in self._sync.values():
                client.close()
            self._sync.clear()
            for session in self._async.values():
                release_session(session)
            self._async.clear()

    async def aclose(self) -> None:
        """Close the current event loop's pool properly (``Atlas.aclose`` calls this)."""
        with self._lock:
            session = self._async.pop(asyncio.get_running_loop(), None)
        if session is not None:
            await session.close()
        self.close()


def _reasoning_as_litellm(message: dict[str, Any]) -> None:
    """Put a reasoning field where LiteLLM's response conversion puts it, so the delivered
    ``ModelResponse`` is the one ``litellm.completion`` would return: newer vLLM's and
    OpenRouter's ``reasoning`` becomes ``reasoning_content``; beside a ``reasoning_content``
    it moves to ``provider_specific_fields``. Never into ``content``: it is not the answer."""
    if "reasoning" not in message:
        return
    if message.get("reasoning_content") is None:
        message["reasoning_content"] = message.pop("reasoning")
    else:
        extra = message.get("provider_specific_fields")
        extra = extra if isinstance(extra, dict) else {}
        extra["reasoning"] = message.pop("reasoning")
        message["provider_specific_fields"] = extra


@dataclass(frozen=True, slots=True)
class _Post:
    """One request as both transports send it, built once (``LeanHTTPBackend._prepare``)."""

    url: str
    headers: dict[str, str]
    content: bytes
    """The body, encoded."""
    timeout: float
    proxy: str | None
    """The environment's proxy for ``url`` (``LeanHTTPBackend._proxy``), or None."""
    provider: str
    model: str
    """The request's model string, as LiteLLM's exceptions name it."""


class _Events:
    """A server-sent event stream, read line by line whichever transport reads it (no I/O):
    the chunks each line gives, ``done`` at ``[DONE]``, and the end, or the error of a stream
    cut short. An ``error`` event raises where it stands."""

    def __init__(self, request: ChatRequest, post: _Post, lm: Any) -> None:
        self._reader = OpenAIStream(request, lm)
        self._post, self._lm = post, lm
        self.done = False

    def feed(self, line: str) -> list[ChatChunk]:
        line = line.strip()
        if not line.startswith("data:"):
            return []  # blank separators, comments, ``event:`` names
        payload = line[5:].strip()
        if payload == "[DONE]":
            self.done = True
            return []
        provider, model = self._post.provider, self._post.model
        try:
            data = json.loads(payload)
        except ValueError as exc:
            raise self._lm.APIError(status_code=200, message=redact(
                f"{provider} sent a malformed stream event: {payload[:200]!r}"), llm_provider=provider,
                model=model) from exc
        if isinstance(data, dict) and data.get("error") is not None:
            error = data["error"]
            message = error.get("message") if isinstance(error, dict) else error
            code = error.get("code") if isinstance(error, dict) else None
            raise self._lm.APIError(status_code=code if isinstance(code, int) else 500,
                                    message=redact(f"{provider} stream failed: {message}"),
                                    llm_provider=provider, model=model)
        chunk = self._reader.read(data)
        return [] if chunk is None else [chunk]

    def end(self) -> ChatChunk:
        """The stream's last chunk (its usage); a stream with no finish reason was cut short."""
        if not self._reader.finished:
            provider, model = self._post.provider, self._post.model
            raise self._lm.APIConnectionError(
                message=f"{provider} stream ended before its finish reason", llm_provider=provider, model=model)
        return self._reader.end()


class _Reply:
    """Status, headers and body of one HTTP response, whichever client fetched it."""

    __slots__ = ("url", "status", "headers", "content")

    def __init__(self, url: str, status: int, headers: Mapping[str, str], content: bytes) -> None:
        self.url, self.status, self.headers, self.content = url, status, headers, content

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def as_httpx(self) -> httpx.Response:
        # ``content`` is already decoded: without these headers httpx would try to gunzip
        # it again (and fail) when a server compresses its error bodies.
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _DECODED_HEADERS]
        return httpx.Response(self.status, headers=headers, content=self.content,
                              request=httpx.Request("POST", self.url))


_DECODED_HEADERS = frozenset({"content-encoding", "content-length", "transfer-encoding"})


