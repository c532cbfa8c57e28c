"""An agent's model step as LangChain's tracers and streams see it.

LangChain's convention: a chat model run tagged ``nostream`` is internal (LangGraph's
``stream_mode="messages"`` leaves its tokens out, and a UI reading ``astream_events``
skips it); any other run's tokens are the answer. So, inside one model step:

* every internal call runs as a child run of the step, tagged ``nostream``, with its role
  in the run's metadata (``atlas_role``): the probe, the student answer that is not
  delivered, and the teacher's and judge's calls (``TracedTeacher``);
* the delivered answer streams untagged exactly once: live, as the student yields it, where
  the policy delivers without comparing (``off``, ``audit``, ``shadow``); otherwise, after
  the decision, by one more run (``atlas_role: delivered``) that streams the delivered
  message in pieces with the same message id, so the messages stream does not send it
  again whole when the step ends.

The teacher's and the delivered replay's runs carry no ``usage_metadata``: the replay's
tokens were counted by the run that produced them, and the teacher's are the report's and
the ledger's (``get_usage_metadata_callback`` counts the student's tokens, once).

This module owns every touchpoint of LangChain's callback machinery (run managers built from
a config); the one private name it needs (the streaming handler's class) is in
``backends/compat.py``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, LLMResult
from langchain_core.runnables.config import (
    RunnableConfig,
    get_async_callback_manager_for_config,
    get_callback_manager_for_config,
    var_child_runnable_config,
)
from langgraph.constants import TAG_NOSTREAM

from ..backends.compat import streams_to
from ..messages import CallContext, ChatRequest, ChatResponse
from ..runtime.chunks import ChatChunk
from ._convert import restore_messages
from .backend import JUDGING_KEY, ROLE_KEY, role_metadata

_PIECE = re.compile(r"\s*\S+\s*|\s+")


def _config(context: CallContext, *, streams: bool) -> RunnableConfig | None:
    config = var_child_runnable_config.get()
    if config is None:
        return None
    tags = [*(config.get("tags") or [])]
    if not streams and TAG_NOSTREAM not in tags:
        tags.append(TAG_NOSTREAM)
    return {**config, "tags": tags, "metadata": {**(config.get("metadata") or {}), **role_metadata(context)}}


@contextmanager
def child_run(context: CallContext, *, streams: bool) -> Iterator[None]:
    """Run the model call made inside as a child run with its role in its metadata, tagged
    ``nostream`` unless its tokens are the delivered answer (``streams``)."""
    config = _config(context, streams=streams)
    if config is None:  # outside a graph run: nothing to tag
        yield
        return
    token = var_child_runnable_config.set(config)
    try:
        yield
    finally:
        var_child_runnable_config.reset(token)


# -- the delivered answer, streamed after the decision ----------------------------------------


def _pieces(message: AIMessage) -> list[AIMessageChunk]:
    """``message`` as the chunks a streaming model would have sent: its text word by word,
    its tool calls, and a last chunk with its metadata (no usage: counted already)."""
    out = [AIMessageChunk(content=piece, id=message.id) for piece in _PIECE.findall(message.text)]
    for i, call in enumerate(message.tool_calls):
        out.append(AIMessageChunk(content="", id=message.id, tool_call_chunks=[
            tool_call_chunk(name=call["name"], args=json.dumps(call["args"]), id=call.get("id"), index=i)]))
    out.append(AIMessageChunk(content="", id=message.id, response_metadata=dict(message.response_metadata),
                              chunk_position="last"))
    return out


def _result(message: AIMessage) -> LLMResult:
    return LLMResult(generations=[[ChatGeneration(message=message.model_copy(update={"usage_metadata": None}))]])


def _streamed(handlers: list[Any]) -> bool:
    return streams_to(handlers)  # what LangChain checks before it streams a model


def with_id(message: AIMessage) -> AIMessage:
    """``message`` with an id: the replayed chunks and the kept message must share one."""
    return message if message.id else message.model_copy(update={"id": f"lc_run--{uuid.uuid4()}"})


def _delivered(config: RunnableConfig) -> RunnableConfig:
    """``config`` with the run's role marked ``delivered`` in its metadata."""
    return {**config, "metadata": {**(config.get("metadata") or {}), ROLE_KEY: "delivered"}}


def replay(config: RunnableConfig | None, message: AIMessage, name: str, prompt: list[BaseMessage]) -> None:
    """Stream the delivered ``message`` as one untagged run, when someone streams this step."""
    if config is None:
        return
    manager = get_callback_manager_for_config(_delivered(config))
    if not _streamed(manager.handlers):
        return
    (run,) = manager.on_chat_model_start({"name": name}, [prompt], name=name)
    for chunk in _pieces(message):
        run.on_llm_new_token(chunk.text, chunk=ChatGenerationChunk(message=chunk))
    run.on_llm_end(_result(message))


async def areplay(config: RunnableConfig | None, message: AIMessage, name: str, prompt: list[BaseMessage]) -> None:
    if config is None:
        return
    manager = get_async_callback_manager_for_config(_delivered(config))
    if not _streamed(manager.handlers):
        return
    (run,) = await manager.on_chat_model_start({"name": name}, [prompt], name=name)
    for chunk in _pieces(message):
        await run.on_llm_new_token(chunk.text, chunk=ChatGenerationChunk(message=chunk))
    await run.on_llm_end(_result(message))


# -- the teacher's and judge's calls, as child runs --------------------------------------------


def _answer(response: ChatResponse) -> AIMessage:
    return AIMessage(content=response.content or "", response_metadata={"model_name": response.model or "",
                                                                        "finish_reason": response.finish_reason})


class TracedTeacher:
    """A teacher ``ChatBackend`` whose calls made inside an agent's model step show up as
    child runs of that step, tagged ``nostream`` (see the module docstring)."""

    def __init__(self, inner: Any, name: str) -> None:
        self.inner = inner
        self.name = name
        self.retries_inside = getattr(inner, "retries_inside", False)

    def _start(self, request: ChatRequest) -> tuple[RunnableConfig | None, list[BaseMessage]]:
        # The core sends the teacher's and the judge's calls to one backend; each says which it is.
        return _config(request.context, streams=False), restore_messages(request.messages)

    def complete(self, request: ChatRequest) -> ChatResponse:
        config, prompt = self._start(request)
        if config is None:
            return self.inner.complete(request)  # type: ignore[no-any-return]
        (run,) = get_callback_manager_for_config(config).on_chat_model_start(
            {"name": self.name}, [prompt], name=self.name)
        try:
            response: ChatResponse = self.inner.complete(request)
        except BaseException as exc:
            run.on_llm_error(exc)
            raise
        run.on_llm_end(_result(_answer(response)))
        return response

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        config, prompt = self._start(request)
        if config is None:
            return await self.inner.acomplete(request)  # type: ignore[no-any-return]
        (run,) = await get_async_callback_manager_for_config(config).on_chat_model_start(
            {"name": self.name}, [prompt], name=self.name)
        try:
            response: ChatResponse = await self.inner.acomplete(request)
        except BaseException as exc:
            await run.on_llm_error(exc)
            raise
        await run.on_llm_end(_result(_answer(response)))
        return response

    # The teaching loop never streams a teacher call; these pass straight through.
    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        return self.inner.stream(request)  # type: ignore[no-any-return]

    def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        return self.inner.astream(request)  # type: ignore[no-any-return]


__all__ = ["JUDGING_KEY", "ROLE_KEY", "TracedTeacher", "areplay", "child_run", "replay", "role_metadata",
           "with_id"]
