"""Any model LiteLLM can reach (OpenAI, Anthropic, ``hosted_vllm/`` servers, ...).

LiteLLM is imported on first use, not when atlas_middleware is imported: it takes seconds
to import, and the pure teaching logic must be testable without it.
"""

from __future__ import annotations

import os
from typing import Any

from ..messages import ChatRequest, ChatResponse, ToolCall
from ..usage import Usage

_litellm: Any = None
ESTIMATOR = "estimated:litellm.token_counter"


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


_prices: dict[str, tuple[float, float] | None] = {}


def _unit_prices(litellm: Any, model: str) -> tuple[float, float] | None:
    """USD per prompt and per completion token, looked up once per model (None: unknown).

    LiteLLM's own cost functions take about a millisecond a call; a taught call prices
    several responses, so the per-token prices are cached.
    """
    if model not in _prices:
        try:
            p, _ = litellm.cost_per_token(model=model, prompt_tokens=1_000_000, completion_tokens=0)
            _, c = litellm.cost_per_token(model=model, prompt_tokens=0, completion_tokens=1_000_000)
            _prices[model] = (p / 1_000_000, c / 1_000_000)
        except Exception:  # LiteLLM raises for models it has no price for: unknown, not 0
            _prices[model] = None
    return _prices[model]


def _cost(litellm: Any, response: Any, model: str, prompt: int, completion: int) -> float | None:
    hidden = getattr(response, "_hidden_params", None) or {}
    cost = hidden.get("response_cost")
    if isinstance(cost, (int, float)):
        return float(cost)
    prices = _unit_prices(litellm, model)
    return None if prices is None else prices[0] * prompt + prices[1] * completion


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
    usage_obj = _get(response, "usage")
    prompt = _get(usage_obj, "prompt_tokens") if usage_obj is not None else None
    completion = _get(usage_obj, "completion_tokens") if usage_obj is not None else None
    if isinstance(prompt, int) and isinstance(completion, int):
        cost = _cost(litellm, response, request.model, prompt, completion) if litellm is not None else None
        usage = Usage(prompt_tokens=prompt, completion_tokens=completion, calls=1, cost_usd=cost)
    elif litellm is not None:
        # The provider gave no usage: count with LiteLLM's tokenizer and say so.
        usage = Usage(
            prompt_tokens=litellm.token_counter(model=request.model, messages=request.messages),
            completion_tokens=litellm.token_counter(model=request.model, text=content or ""),
            calls=1,
            counted_by=ESTIMATOR,
            cost_usd=None,
        )
    else:
        usage = Usage(calls=1, counted_by="unknown", cost_usd=None)
    reasoning = _get(message, "reasoning_content") or _get(message, "reasoning")
    return ChatResponse(
        content=content,
        tool_calls=tool_calls,
        finish_reason=_get(choice, "finish_reason"),
        reasoning=reasoning if isinstance(reasoning, str) and reasoning else None,
        usage=usage,
        model=_get(response, "model"),
        raw=response,
    )


class LiteLLMBackend:
    """Calls ``litellm.completion``/``acompletion``.

    ``defaults`` (``api_base``, ``api_key``, ...) fill in what the request does not set:
    the teacher's endpoint and key live here, never in the request or the report.
    """

    def __init__(self, defaults: dict[str, Any] | None = None) -> None:
        self.defaults = {k: v for k, v in (defaults or {}).items() if v is not None}
        # Import now (seconds), not inside the first call, where it would eat the teacher's
        # time budget and time out the first guidance path.
        import_litellm()

    def _kwargs(self, request: ChatRequest) -> dict[str, Any]:
        return {**self.defaults, **request.params, "model": request.model, "messages": request.messages}

    def complete(self, request: ChatRequest) -> ChatResponse:
        litellm = import_litellm()
        return from_model_response(litellm.completion(**self._kwargs(request)), request, litellm)

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        litellm = import_litellm()
        response = await litellm.acompletion(**self._kwargs(request))
        return from_model_response(response, request, litellm)
