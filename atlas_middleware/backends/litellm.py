"""Any model LiteLLM can reach (OpenAI, Anthropic, ``hosted_vllm/`` servers, ...).

LiteLLM is imported on first use, not when atlas_middleware is imported: it takes seconds
to import, and the pure teaching logic must be testable without it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

from .._redact import remember_call, scrub
from ..messages import ChatRequest, ChatResponse, ToolCall, is_large
from ..runtime.chunks import ChatChunk, ToolCallDelta
from ..usage import Usage
from .compat import hidden_params

_litellm: Any = None
ESTIMATOR = "estimated:litellm.token_counter"
T = TypeVar("T")


async def sized(request: ChatRequest, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``, in a worker thread when ``request`` is large (``messages.is_large``):
    reading a reply that has no usage counts the prompt's tokens, ~60 ms per MB of text,
    which must not hold the event loop."""
    if not is_large(request.messages):
        return fn(*args)
    import asyncio  # loaded: this runs on its event loop

    return await asyncio.to_thread(fn, *args)


def import_litellm() -> Any:
    """Import LiteLLM once, with its cost map read from the package, not the network."""
    global _litellm
    if _litellm is None:
        os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        import litellm

        # Otherwise LiteLLM prints a provider list to stdout whenever it cannot price a model.
        litellm.suppress_debug_info = True
        _litellm = litellm
    return _litellm


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


_prices: dict[str, tuple[float, float, float] | None] = {}


def _unit_prices(litellm: Any, model: str) -> tuple[float, float, float] | None:
    """USD per prompt, per completion and per cached prompt token, looked up once per model
    (None: unknown).

    LiteLLM's own cost functions take about a millisecond a call; a taught call prices
    several responses, so the per-token prices are cached. The cached price is LiteLLM's
    ``cache_read_input_tokens`` rate (the prompt price where the model has none), so a
    response priced here costs what ``litellm.completion`` reports for it.
    """
    if model not in _prices:
        m = 1_000_000
        try:
            p, _ = litellm.cost_per_token(model=model, prompt_tokens=m, completion_tokens=0)
            _, c = litellm.cost_per_token(model=model, prompt_tokens=0, completion_tokens=m)
            cached, _ = litellm.cost_per_token(model=model, prompt_tokens=m, completion_tokens=0,
                                               cache_read_input_tokens=m)
            _prices[model] = (p / m, c / m, cached / m)
        except Exception:  # LiteLLM raises for models it has no price for: unknown, not 0
            _prices[model] = None
    return _prices[model]


def _cost(litellm: Any, response: Any, model: str, usage: Usage) -> float | None:
    cost = hidden_params(response).get("response_cost")
    if isinstance(cost, (int, float)):
        return float(cost)
    prices = _unit_prices(litellm, model)
    if prices is None:
        return None
    # Reasoning tokens are part of completion_tokens and billed as output; cached prompt
    # tokens are part of prompt_tokens and billed at the cache rate.
    uncached = usage.prompt_tokens - usage.cached_tokens
    return prices[0] * uncached + prices[2] * usage.cached_tokens + prices[1] * usage.completion_tokens


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def provider_usage(usage_obj: Any) -> Usage | None:
    """An OpenAI ``usage`` object (or dict) as ``Usage``; None when it has no token counts.

    ``completion_tokens_details.reasoning_tokens`` and ``prompt_tokens_details.cached_tokens``
    are kept as the parts of ``completion_tokens`` and ``prompt_tokens`` OpenAI defines them
    to be. A provider that reports more reasoning (or cached) tokens than the count they are
    part of evidently left them out of it; they are added in, since they are billed.
    """
    if usage_obj is None:
        return None
    prompt = _get(usage_obj, "prompt_tokens")
    completion = _get(usage_obj, "completion_tokens")
    if not (isinstance(prompt, int) and isinstance(completion, int)):
        return None
    reasoning = _count(_get(_get(usage_obj, "completion_tokens_details") or {}, "reasoning_tokens"))
    cached = _count(_get(_get(usage_obj, "prompt_tokens_details") or {}, "cached_tokens"))
    if reasoning > completion:
        completion += reasoning
    if cached > prompt:
        prompt += cached
    return Usage(prompt_tokens=prompt, completion_tokens=completion, reasoning_tokens=reasoning,
                 cached_tokens=cached, calls=1)


def from_model_response(response: Any, request: ChatRequest, litellm: Any = None) -> ChatResponse:
    """Convert an OpenAI-shaped response (object or dict) to the core's ``ChatResponse``."""
    choices = _get(response, "choices") or []
    choice = choices[0] if choices else {}
    message = _get(choice, "message") or {}
    tool_calls = []
    for tc in _get(message, "tool_calls") or []:
        fn = _get(tc, "function") or {}
        tool_calls.append(
            ToolCall(id=_get(tc, "id"), name=_get(fn, "name") or "", arguments=_get(fn, "arguments") or "{}")
        )
    content = _get(message, "content")
    reasoning = _get(message, "reasoning_content") or _get(message, "reasoning")
    reasoning = reasoning if isinstance(reasoning, str) and reasoning else None
    usage = provider_usage(_get(response, "usage"))
    if usage is not None:
        cost = _cost(litellm, response, request.model, usage) if litellm is not None else None
        usage = usage.model_copy(update={"cost_usd": cost})
    elif litellm is not None:
        # The provider gave no usage: count with LiteLLM's tokenizer and say so. A reasoning
        # field was generated (and billed) like the answer.
        thought = litellm.token_counter(model=request.model, text=reasoning) if reasoning else 0
        usage = Usage(
            prompt_tokens=litellm.token_counter(model=request.model, messages=request.messages),
            completion_tokens=litellm.token_counter(model=request.model, text=content or "") + thought,
            reasoning_tokens=thought,
            calls=1,
            counted_by=ESTIMATOR,
            cost_usd=None,
        )
    else:
        usage = Usage(calls=1, counted_by="unknown", cost_usd=None)
    return ChatResponse(
        content=content,
        tool_calls=tool_calls,
        finish_reason=_get(choice, "finish_reason"),
        reasoning=reasoning,
        usage=usage,
        model=_get(response, "model"),
        raw=response,
    )


STREAM_USAGE = {"stream": True, "stream_options": {"include_usage": True}}
"""What a stream asks for: the usage chunk at the end, as a whole response carries usage."""


class OpenAIStream:
    """Reads the chunks of one OpenAI-shaped stream (LiteLLM's chunk objects, or the JSON
    of server-sent events) into ``ChatChunk`` objects.

    ``end()`` is the last chunk: the stream's usage, counted as ``from_model_response``
    counts a whole response's (priced per model; estimated with LiteLLM's tokenizer, and
    said so, when the server sent no usage).
    """

    def __init__(self, request: ChatRequest, litellm: Any) -> None:
        self.request, self.litellm = request, litellm
        self._text: list[str] = []
        self._usage: Any = None
        self._model: str | None = None
        self.finished = False

    def read(self, chunk: Any) -> ChatChunk | None:
        usage = _get(chunk, "usage")
        if usage is not None and isinstance(_get(usage, "completion_tokens"), int):
            self._usage = usage
        model = _get(chunk, "model")
        if isinstance(model, str) and model:
            self._model = model
        choices = _get(chunk, "choices") or []
        if not choices:
            return None
        choice = choices[0]
        delta = _get(choice, "delta") or {}
        content = _get(delta, "content")
        reasoning = _get(delta, "reasoning_content") or _get(delta, "reasoning")
        calls = []
        for tc in _get(delta, "tool_calls") or []:
            fn = _get(tc, "function") or {}
            calls.append(ToolCallDelta(index=_get(tc, "index", 0) or 0, id=_get(tc, "id"),
                                       name=_get(fn, "name"), arguments=_get(fn, "arguments") or ""))
        finish = _get(choice, "finish_reason") or None
        self.finished = self.finished or finish is not None
        if content:
            self._text.append(content)
        out = ChatChunk(content=content or None,
                        reasoning=reasoning if isinstance(reasoning, str) and reasoning else None,
                        tool_calls=tuple(calls), finish_reason=finish, model=self._model, raw=chunk)
        return None if out.empty else out

    def end(self) -> ChatChunk:
        whole = {"choices": [{"message": {"content": "".join(self._text)}}], "usage": self._usage,
                 "model": self._model}
        return ChatChunk(usage=from_model_response(whole, self.request, self.litellm).usage, model=self._model)


def litellm_timeout(request: ChatRequest, message: str) -> Exception:
    """LiteLLM's ``Timeout`` for ``request``: what ``litellm.completion(..., timeout=T)``
    raises when T passes (the LiteLLM backend's and the lean path's ``timeout_error``)."""
    provider, _, rest = request.model.partition("/")
    error: Exception = import_litellm().Timeout(message=message, model=request.model,
                                                llm_provider=provider if rest else "atlas")
    return error


class LiteLLMBackend:
    """Calls ``litellm.completion``/``acompletion``.

    ``defaults`` (``api_base``, ``api_key``, ...) fill in what the request does not set:
    the teacher's endpoint and key live here, never in the request or the report.

    The call's key is remembered as a secret before the call (LiteLLM's log lines about it
    are masked), and an error is scrubbed of it before it leaves: LiteLLM re-raises the
    provider's text, which may quote the key, and masks only key shapes (``sk-...``) itself.
    """

    def __init__(self, defaults: dict[str, Any] | None = None) -> None:
        self.defaults = {k: v for k, v in (defaults or {}).items() if v is not None}
        # Import now (seconds), not inside the first call, where it would eat the teacher's
        # time budget and time out the first guidance path.
        import_litellm()

    def _kwargs(self, request: ChatRequest) -> dict[str, Any]:
        return {**self.defaults, **request.params, "model": request.model, "messages": request.messages}

    def timeout_error(self, request: ChatRequest, message: str) -> Exception:
        return litellm_timeout(request, message)

    def complete(self, request: ChatRequest) -> ChatResponse:
        litellm = import_litellm()
        kwargs = self._kwargs(request)
        secrets = remember_call(kwargs)
        try:
            return from_model_response(litellm.completion(**kwargs), request, litellm)
        except Exception as exc:
            scrub(exc, secrets)
            raise

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        litellm = import_litellm()
        kwargs = self._kwargs(request)
        secrets = remember_call(kwargs)
        try:
            response = await litellm.acompletion(**kwargs)
        except Exception as exc:
            scrub(exc, secrets)
            raise
        return await sized(request, from_model_response, response, request, litellm)

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        litellm = import_litellm()
        kwargs = {**self._kwargs(request), **STREAM_USAGE}
        secrets = remember_call(kwargs)
        reader = OpenAIStream(request, litellm)
        try:
            for raw in litellm.completion(**kwargs):
                chunk = reader.read(raw)
                if chunk is not None:
                    yield chunk
        except Exception as exc:
            scrub(exc, secrets)
            raise
        yield reader.end()

    async def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        litellm = import_litellm()
        kwargs = {**self._kwargs(request), **STREAM_USAGE}
        secrets = remember_call(kwargs)
        reader = OpenAIStream(request, litellm)
        try:
            async for raw in await litellm.acompletion(**kwargs):
                chunk = reader.read(raw)
                if chunk is not None:
                    yield chunk
        except Exception as exc:
            scrub(exc, secrets)
            raise
        yield await sized(request, reader.end)
