"""The lean path: OpenAI-compatible servers called directly over one shared connection pool.

A taught call makes three to five backend calls. Through ``litellm.completion`` each pays
LiteLLM's own per-call work (several milliseconds of parameter mapping, logging objects and
cost look-ups); for servers that already speak OpenAI's protocol (vLLM, OpenAI itself, any
``/v1/chat/completions``) that translation does nothing useful. This backend posts the JSON
itself with httpx and keeps LiteLLM's *behaviour*: the same usage fields, the same
exception types for the same HTTP statuses (so retries and user code see no difference),
the same ``ModelResponse`` handed to the user.

It serves a request only when it can do so faithfully (see ``LeanHTTPBackend.accepts``):
a ``hosted_vllm/`` or ``openai/`` model with an explicit ``api_base`` and only standard
OpenAI parameters. Anything else goes to LiteLLM.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any

import httpx

from ..messages import ChatRequest, ChatResponse
from ..redact import redact, register_secret
from .litellm import from_model_response, import_litellm

LEAN_PREFIXES = {"hosted_vllm/": "hosted_vllm", "openai/": "openai"}
# Where LiteLLM looks for a key when none is passed: the lean path must look there too.
ENV_KEYS = {"openai": "OPENAI_API_KEY", "hosted_vllm": "HOSTED_VLLM_API_KEY"}
# Parameters that go into the JSON body exactly as OpenAI defines them.
BODY_PARAMS = frozenset(
    {
        "temperature", "top_p", "n", "stop", "max_tokens", "max_completion_tokens",
        "presence_penalty", "frequency_penalty", "logit_bias", "user", "tools", "tool_choice",
        "parallel_tool_calls", "response_format", "seed", "logprobs", "top_logprobs",
        "reasoning_effort", "service_tier",
    }
)
# Parameters this backend handles itself rather than sending.
TRANSPORT_PARAMS = frozenset({"api_base", "base_url", "api_key", "timeout", "extra_headers", "extra_body"})
DEFAULT_TIMEOUT = 600.0

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
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._sync: httpx.Client | None = None
        # One pool per event loop (an httpx.AsyncClient is bound to the loop it first ran on).
        self._async: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}
        self._lock = threading.Lock()
        self._litellm = import_litellm()  # exception types and usage estimation

    def accepts(self, request: ChatRequest) -> bool:
        params = {**self.defaults, **request.params}
        if _split_model(request.model) is None:
            return False
        if not (params.get("api_base") or params.get("base_url")):
            return False
        # The LiteLLM proxy's router retries by itself and asks for ``max_retries=0`` on
        # every call: one attempt, which is what this path makes. Other values mean SDK
        # retries, which LiteLLM performs.
        if params.get("max_retries") not in (None, 0):
            return False
        return all(k in BODY_PARAMS or k in TRANSPORT_PARAMS or k == "max_retries" for k in params)

    def _prepare(self, request: ChatRequest) -> tuple[str, dict[str, str], dict[str, Any], float, str]:
        params = {**self.defaults, **request.params}
        split = _split_model(request.model)
        assert split is not None
        provider, model = split
        base = str(params.get("api_base") or params.get("base_url")).rstrip("/")
        url = base + "/chat/completions"
        headers = {"Content-Type": "application/json", **(params.get("extra_headers") or {})}
        api_key = params.get("api_key") or os.environ.get(ENV_KEYS[provider])
        if api_key:
            # A provider may echo the key in an error; the error's text goes to the caller
            # (through the proxy: to clients who never held that key).
            register_secret(str(api_key))
            headers["Authorization"] = f"Bearer {api_key}"
        body: dict[str, Any] = {"model": model, "messages": request.messages}
        body.update({k: v for k, v in params.items() if k in BODY_PARAMS})
        body.update(params.get("extra_body") or {})
        timeout = float(params.get("timeout") or DEFAULT_TIMEOUT)
        return url, headers, body, timeout, provider

    def _client(self) -> httpx.Client:
        with self._lock:
            if self._sync is None:
                self._sync = httpx.Client(limits=self._limits)
            return self._sync

    def _aclient(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async.get(loop)
            if client is None:
                # Pools of loops that have ended (``asyncio.run`` per call) are dropped,
                # and their sockets closed, instead of piling up.
                for old_loop in [lp for lp in self._async if lp.is_closed()]:
                    _close_sockets(self._async.pop(old_loop))
                client = self._async[loop] = httpx.AsyncClient(limits=self._limits)
            return client

    def _error(self, exc: Exception | None, response: httpx.Response | None, provider: str, model: str) -> Exception:
        lm = self._litellm
        if response is None:
            if isinstance(exc, httpx.TimeoutException):
                return lm.Timeout(message=f"{provider} request timed out: {exc}", model=model, llm_provider=provider)  # type: ignore[no-any-return]
            return lm.APIConnectionError(message=f"{provider} connection failed: {exc}", llm_provider=provider, model=model)  # type: ignore[no-any-return]
        status = response.status_code
        message = redact(f"{provider} returned {status}: {response.text[:1000]}")
        name = _STATUS_ERRORS.get(status)
        if name == "Timeout":
            return lm.Timeout(message=message, model=model, llm_provider=provider, response=response,  # type: ignore[no-any-return]
                              exception_status_code=status, headers=dict(response.headers))
        if name is None:
            return lm.APIError(status_code=status, message=message, llm_provider=provider, model=model)  # type: ignore[no-any-return]
        return getattr(lm, name)(message=message, llm_provider=provider, model=model, response=response)  # type: ignore[no-any-return]

    def _parse(self, request: ChatRequest, response: httpx.Response, provider: str, model: str) -> ChatResponse:
        if response.status_code >= 400:
            raise self._error(None, response, provider, model)
        try:
            data = response.json()
            data["choices"][0]  # noqa: B018 - shape check: a body without choices is garbage
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise self._litellm.APIError(
                status_code=response.status_code,
                message=redact(f"{provider} returned a malformed body: {response.text[:200]!r}"),
                llm_provider=provider, model=model,
            ) from exc
        return from_model_response(data, request, self._litellm)

    def complete(self, request: ChatRequest) -> ChatResponse:
        url, headers, body, timeout, provider = self._prepare(request)
        try:
            response = self._client().post(url, json=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            raise self._error(exc, None, provider, request.model) from exc
        return self._parse(request, response, provider, request.model)

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        url, headers, body, timeout, provider = self._prepare(request)
        try:
            response = await self._aclient().post(url, json=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            raise self._error(exc, None, provider, request.model) from exc
        return self._parse(request, response, provider, request.model)

    def close(self) -> None:
        with self._lock:
            if self._sync is not None:
                self._sync.close()
                self._sync = None
            for client in self._async.values():
                _close_sockets(client)
            self._async.clear()

    async def aclose(self) -> None:
        """Close the current event loop's pool properly (``Atlas.aclose`` calls this)."""
        with self._lock:
            client = self._async.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()
        self.close()


def _close_sockets(client: httpx.AsyncClient) -> None:
    """Close the sockets of a pool whose event loop is gone (``aclose`` needs that loop).

    httpx keeps its connections in ``_transport._pool``; closing their network streams'
    sockets directly is the only release left once the loop has been closed.
    """
    pool = getattr(getattr(client, "_transport", None), "_pool", None)
    for conn in list(getattr(pool, "connections", []) or []):
        stream = getattr(getattr(conn, "_connection", None), "_network_stream", None)
        sock = stream.get_extra_info("socket") if stream is not None else None
        # asyncio hands out a TransportSocket wrapper; the real socket is inside it.
        raw = getattr(sock, "_sock", sock)
        if raw is not None and hasattr(raw, "close"):
            try:
                raw.close()
            except OSError:
                pass
