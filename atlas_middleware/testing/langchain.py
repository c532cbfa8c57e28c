"""A scripted LangChain chat model, for tests and offline examples (needs the ``langchain`` extra).

``ScriptedChatModel`` puts a ``ScriptedBackend`` behind LangChain's ``BaseChatModel``: the
per-role scripts ('probe', 'guided', 'baseline', 'teacher', ...) answer exactly as they do
for the core, and the model behaves like a real provider integration where the fakes that
ship with langchain-core do not: it supports ``bind_tools``, reports ``usage_metadata``
(whitespace words, as the scripted backend counts them) on ``invoke`` and on the last
chunk of ``stream``, honours ``stop`` and ``max_tokens``, and records every call.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

try:
    from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
    from langchain_core.language_models import BaseChatModel, LanguageModelInput
    from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
    from langchain_core.messages.tool import tool_call_chunk
    from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
    from langchain_core.runnables import Runnable, ensure_config
    from langchain_core.tools import BaseTool
    from pydantic import ConfigDict, Field
except ImportError as exc:  # pragma: no cover - exercised without the extra
    from ..errors import MissingExtraError

    raise MissingExtraError("atlas_middleware.testing.langchain", "langchain", "langchain-core") from exc

from ..langchain._convert import openai_tools, to_openai_messages, usage_metadata
from ..langchain.backend import JUDGING_KEY, ROLE_KEY
from ..messages import CallContext, ChatRequest, ChatResponse, ToolCall
from ..teaching import prompts
from ..usage import ROLES
from .scripted import Reply, ScriptedBackend, classify
from .wire import guess_context

__all__ = ["ScriptedChatModel", "rule_student"]


def _cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
    for s in stop or ():
        at = text.find(s)
        if s and at >= 0:
            text = text[:at]
    return text


def _context(run_manager: Any, messages: list[dict[str, Any]]) -> CallContext:
    """The role the atlas adapter put in this run's metadata (``_runs.ROLE_KEY``); without
    one, what the prompts' wording says (``wire.py``): like a real chat model, this one
    receives only messages and its run's config, never the core's request."""
    # LangChain hands ``_stream`` no run manager when it streams an ``invoke``: the run's
    # config (the current one, in LangChain's context variable) has the same metadata.
    metadata = {**(ensure_config().get("metadata") or {}), **(getattr(run_manager, "metadata", None) or {})}
    role = metadata.get(ROLE_KEY)
    if role in ROLES:
        return CallContext(role=role, judging=metadata.get(JUDGING_KEY))
    return guess_context(messages)


class ScriptedChatModel(BaseChatModel):
    """A LangChain chat model answering from a ``ScriptedBackend``'s per-role script."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    backend: ScriptedBackend = Field(default_factory=ScriptedBackend)
    model_name: str = "scripted-student"
    chunk_words: int = 2
    """Words per streamed chunk."""
    calls: list[ChatRequest] = Field(default_factory=list, exclude=True)

    @classmethod
    def from_script(cls, script: dict[str, Any], **kwargs: Any) -> ScriptedChatModel:
        return cls(backend=ScriptedBackend(script), **kwargs)

    @property
    def _llm_type(self) -> str:
        return "scripted-chat-model"

    @property
    def roles(self) -> list[str]:
        return self.backend.roles()

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        return self.bind(tools=openai_tools(tools), tool_choice=tool_choice, **kwargs)

    # -- one call ----------------------------------------------------------------------------

    def _request(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
                 run_manager: Any = None) -> ChatRequest:
        params = {k: v for k, v in kwargs.items() if v is not None}
        if stop:
            params["stop"] = stop
        dicts = to_openai_messages(messages)
        request = ChatRequest(model=kwargs.get("model") or self.model_name, messages=dicts, params=params,
                              context=_context(run_manager, dicts))
        self.calls.append(request)
        return request

    def _message(self, response: ChatResponse, request: ChatRequest) -> AIMessage:
        content = _cut_at_stop(response.content or "", request.params.get("stop"))
        calls = []
        invalid = []
        for tc in response.tool_calls:
            call_id = tc.id or f"call_{uuid.uuid4().hex[:12]}"
            try:
                args = json.loads(tc.arguments or "{}")
                calls.append({"name": tc.name, "args": args, "id": call_id, "type": "tool_call"})
            except ValueError:
                invalid.append({"name": tc.name, "args": tc.arguments, "id": call_id,
                                "error": "arguments are not JSON", "type": "invalid_tool_call"})
        return AIMessage(
            content=content,
            tool_calls=calls,
            invalid_tool_calls=invalid,
            usage_metadata=usage_metadata(response.usage),
            response_metadata={"model_name": response.model or self.model_name,
                               "finish_reason": response.finish_reason, "model_provider": "scripted"},
            id=f"run-{uuid.uuid4().hex}",
        )

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        request = self._request(messages, stop, kwargs, run_manager)
        return ChatResult(generations=[ChatGeneration(message=self._message(self.backend.complete(request), request))])

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        request = self._request(messages, stop, kwargs, run_manager)
        response = await self.backend.acomplete(request)
        return ChatResult(generations=[ChatGeneration(message=self._message(response, request))])

    # -- streaming: content in word chunks, then tool calls, usage on the last chunk ---------

    def _chunks(self, message: AIMessage) -> list[AIMessageChunk]:
        words = str(message.content).split(" ")
        step = max(1, self.chunk_words)
        pieces = [" ".join(words[i:i + step]) + (" " if i + step < len(words) else "")
                  for i in range(0, len(words), step)] if message.content else []
        out = [AIMessageChunk(content=p, id=message.id) for p in pieces]
        for i, tc in enumerate(message.tool_calls):
            out.append(AIMessageChunk(content="", id=message.id, tool_call_chunks=[
                tool_call_chunk(name=tc["name"], args=json.dumps(tc["args"]), id=tc["id"], index=i)]))
        out.append(AIMessageChunk(content="", id=message.id, usage_metadata=message.usage_metadata,
                                  response_metadata=message.response_metadata, chunk_position="last"))
        return out

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs, run_manager)
        message = self._message(self.backend.complete(request), request)
        for chunk in self._chunks(message):
            if run_manager:
                run_manager.on_llm_new_token(str(chunk.content), chunk=ChatGenerationChunk(message=chunk))
            yield ChatGenerationChunk(message=chunk)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs, run_manager)
        message = self._message(await self.backend.acomplete(request), request)
        for chunk in self._chunks(message):
            if run_manager:
                await run_manager.on_llm_new_token(str(chunk.content), chunk=ChatGenerationChunk(message=chunk))
            yield ChatGenerationChunk(message=chunk)


# -- a rule-following student, for LangChain's standard integration tests --------------------

_INT = re.compile(r"-?\d+")
_QUOTED = re.compile(r"'([^']+)'|\"([^\"]+)\"")


def _example_args(schema: dict[str, Any], text: str) -> dict[str, Any]:
    """Arguments for a tool's JSON schema: integers and quoted strings from the prompt."""
    numbers = [int(n) for n in _INT.findall(text)]
    quoted = [a or b for a, b in _QUOTED.findall(text)]
    args: dict[str, Any] = {}
    for name, prop in (schema.get("properties") or {}).items():
        kind = prop.get("type") if isinstance(prop, dict) else None
        if kind == "integer" or kind == "number":
            args[name] = numbers.pop(0) if numbers else 1
        elif kind == "boolean":
            args[name] = True
        elif kind == "array":
            args[name] = []
        elif kind == "object":
            args[name] = {}
        else:
            args[name] = quoted.pop(0) if quoted else f"{name} text"
    return args


def _chosen_tool(params: dict[str, Any]) -> dict[str, Any] | None:
    tools = [t for t in params.get("tools") or [] if isinstance(t, dict) and "function" in t]
    if not tools:
        return None
    choice = params.get("tool_choice")
    if isinstance(choice, dict):
        choice = (choice.get("function") or {}).get("name") or choice.get("name")
    for tool in tools:
        if isinstance(choice, str) and tool["function"]["name"] == choice:
            return tool
    return tools[0]


def rule_student(request: ChatRequest) -> Reply:
    """A deterministic student that follows simple rules, whatever role its call plays.

    * the probe: a one-line plan;
    * tools offered and the last message is the user's: call the chosen tool (``tool_choice``
      or the first), arguments built from its schema and the integers in the prompt;
    * after a tool result: state the result;
    * otherwise: a short answer that repeats the user's words.
    """
    if classify(request) == "probe":
        return Reply("Plan: read the request, use a tool when one fits, answer briefly.")
    last = request.messages[-1]
    text = prompts.content_text(last.get("content"))
    tool = _chosen_tool(request.params)
    if tool is not None and last.get("role") == "user":
        fn = tool["function"]
        args = _example_args(fn.get("parameters") or {}, text)
        return Reply(None, tool_calls=[ToolCall(id=f"call_{uuid.uuid4().hex[:12]}", name=fn["name"],
                                                arguments=json.dumps(args))])
    if last.get("role") == "tool":
        return Reply(f"The tool returned {text}.")
    return Reply(f"Hello! You said: {text[:200]}" if text else "Hello!")
