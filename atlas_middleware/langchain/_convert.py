"""LangChain <-> core conversion: messages, tools, responses and usage.

The core reasons about OpenAI-shaped dicts; LangChain models want ``BaseMessage`` objects.
Converting a conversation to dicts and back would lose what only LangChain objects carry
(message ids, ``additional_kwargs``, provider content blocks), so ``restore_messages``
hands back the caller's *original* objects for every message the core left untouched and
converts only what the core added (the guidance note, the probe question).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    SystemMessage,
    convert_to_messages,
    convert_to_openai_messages,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.utils.function_calling import convert_to_openai_tool

from ..messages import ChatResponse, ToolCall
from ..usage import Usage

UNREPORTED = "unreported"
"""``Usage.counted_by`` for a LangChain model whose message carries no ``usage_metadata``."""


def to_openai_messages(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    return [dict(m) for m in convert_to_openai_messages(list(messages))]


def restore_messages(
    dicts: Sequence[dict[str, Any]],
    originals: Sequence[BaseMessage] = (),
    original_dicts: Sequence[dict[str, Any]] = (),
) -> list[BaseMessage]:
    """LangChain messages for ``dicts``, reusing ``originals`` where the core kept them.

    The core only ever inserts messages (it never edits or reorders the caller's), so one
    ordered walk matches every original. An inserted system message (the guidance note)
    that follows a system message is folded into it: several providers accept only one
    system prompt.
    """
    out: list[BaseMessage] = []
    j = 0
    for d in dicts:
        if j < len(original_dicts) and d == original_dicts[j]:
            out.append(originals[j])
            j += 1
            continue
        for message in convert_to_messages([d]):
            if isinstance(message, SystemMessage) and out and isinstance(out[-1], SystemMessage):
                out[-1] = _merged(out[-1], message)
            else:
                out.append(message)
    return out


def _merged(first: SystemMessage, note: SystemMessage) -> SystemMessage:
    if isinstance(first.content, str) and isinstance(note.content, str):
        return first.model_copy(update={"content": f"{first.content}\n\n{note.content}"})
    blocks: list[Any] = []
    for m in (first, note):
        blocks.extend(m.content if isinstance(m.content, list) else [{"type": "text", "text": m.content}])
    return first.model_copy(update={"content": blocks})


def openai_tools(tools: Sequence[Any]) -> list[dict[str, Any]]:
    """Tools in OpenAI format (what the teacher and the tool-call check read)."""
    out = []
    for tool in tools:
        try:
            out.append(convert_to_openai_tool(tool))
        except (ValueError, TypeError, NotImplementedError):
            # A provider's built-in tool (``{"type": "web_search"}``): passed on as is.
            if isinstance(tool, dict):
                out.append(tool)
    return out


def usage_of(message: BaseMessage) -> Usage:
    meta = getattr(message, "usage_metadata", None)
    if not meta:
        return Usage(calls=1, counted_by=UNREPORTED, cost_usd=None)
    # LangChain's details are parts of its counts, as OpenAI's are of theirs.
    out_details = meta.get("output_token_details") or {}
    in_details = meta.get("input_token_details") or {}
    return Usage(
        prompt_tokens=int(meta.get("input_tokens", 0)),
        completion_tokens=int(meta.get("output_tokens", 0)),
        reasoning_tokens=int(out_details.get("reasoning") or 0),
        cached_tokens=int(in_details.get("cache_read") or 0),
        calls=1,
        cost_usd=None,  # LangChain reports no price; unknown is not zero
    )


def _finish_reason(message: AIMessage) -> str | None:
    meta = message.response_metadata or {}
    reason = meta.get("finish_reason") or meta.get("stop_reason")
    if reason in ("max_tokens", "MAX_TOKENS"):
        return "length"
    if reason is None and message.tool_calls:
        return "tool_calls"
    return str(reason) if reason is not None else None


def to_chat_response(message: AIMessage, raw: Any) -> ChatResponse:
    """The parts of an ``AIMessage`` the teaching loop reasons about; ``raw`` rides along."""
    calls = [
        ToolCall(id=tc.get("id"), name=tc["name"], arguments=json.dumps(tc.get("args") or {}))
        for tc in message.tool_calls
    ]
    # LangChain moves calls whose arguments are not JSON to ``invalid_tool_calls``; the core
    # must see them, with their raw arguments, to rule the step invalid.
    calls += [
        ToolCall(id=tc.get("id"), name=tc.get("name") or "", arguments=tc.get("args") or "")
        for tc in message.invalid_tool_calls
    ]
    meta = message.response_metadata or {}
    # Reasoning models behind LangChain (ChatOpenAI on vLLM, ChatDeepSeek) put their
    # reasoning here; it is private to the teacher path and never its guidance.
    reasoning = (message.additional_kwargs or {}).get("reasoning_content")
    return ChatResponse(
        content=message.text,
        tool_calls=calls,
        finish_reason=_finish_reason(message),
        reasoning=reasoning if isinstance(reasoning, str) and reasoning else None,
        usage=usage_of(message),
        model=meta.get("model_name") or meta.get("model"),
        raw=raw,
    )


def usage_metadata(usage: Usage) -> UsageMetadata:
    meta = UsageMetadata(
        input_tokens=usage.prompt_tokens,
        output_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
    )
    if usage.reasoning_tokens:
        meta["output_token_details"] = {"reasoning": usage.reasoning_tokens}
    if usage.cached_tokens:
        meta["input_token_details"] = {"cache_read": usage.cached_tokens}
    return meta


def model_name(model: Any) -> str:
    """The name a LangChain chat model calls its model by (for reports and the ledger)."""
    for attr in ("model_name", "model", "model_id", "deployment_name"):
        value = getattr(model, attr, None)
        if isinstance(value, str) and value:
            return value
    llm_type = getattr(model, "_llm_type", None)
    return llm_type if isinstance(llm_type, str) else type(model).__name__
