"""Streaming for callers that asked for ``stream=True``.

A policy that compares answers must see the whole answer before it can choose, so the
stream starts once the decision is made; it then replays the delivered answer as OpenAI
``chat.completion.chunk`` objects, ending with a usage chunk when
``stream_options.include_usage`` was set.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict

from .messages import ChatResponse
from .report import CallReport

CHUNK_CHARS = 48


class ChunkDelta(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="allow")

    role: str | None = None
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChunkChoice(BaseModel):
    model_config = ConfigDict(defer_build=True)

    index: int = 0
    delta: ChunkDelta
    finish_reason: str | None = None


class CompletionChunk(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="allow")

    id: str
    object: str = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: dict[str, Any] | None = None


def chunks(response: ChatResponse, include_usage: bool) -> list[CompletionChunk]:
    cid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), response.model or ""

    def chunk(delta: ChunkDelta, finish: str | None = None) -> CompletionChunk:
        return CompletionChunk(id=cid, created=created, model=model,
                               choices=[ChunkChoice(delta=delta, finish_reason=finish)])

    out = [chunk(ChunkDelta(role="assistant", content=""))]
    if response.reasoning:  # before the answer, as a reasoning model streams it; never in content
        out.append(chunk(ChunkDelta(reasoning_content=response.reasoning)))  # type: ignore[call-arg]
    text = response.content or ""
    for i in range(0, len(text), CHUNK_CHARS):
        out.append(chunk(ChunkDelta(content=text[i : i + CHUNK_CHARS])))
    if response.tool_calls:
        calls = [
            {"index": i, "id": tc.id or f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": tc.name, "arguments": tc.arguments}}
            for i, tc in enumerate(response.tool_calls)
        ]
        out.append(chunk(ChunkDelta(tool_calls=calls)))
    out.append(chunk(ChunkDelta(), response.finish_reason or "stop"))
    if include_usage:
        out.append(CompletionChunk(id=cid, created=created, model=model, choices=[],
                                   usage=response.usage.openai_usage()))
    return out


class CompletionStream:
    """Iterable (sync and async) of chunks; ``.atlas`` is the call's report."""

    def __init__(self, items: list[CompletionChunk], report: CallReport) -> None:
        self._items = items
        self.atlas = report

    def __iter__(self) -> Iterator[CompletionChunk]:
        return iter(self._items)

    async def __aiter__(self) -> AsyncIterator[CompletionChunk]:
        for item in self._items:
            yield item
