"""Streaming for callers that asked for ``stream=True``: OpenAI ``chat.completion.chunk``
objects, ending with a usage chunk when ``stream_options.include_usage`` was set.

Two kinds, as the decision allows:

* live (``LiveCompletionStream``): when the delivered answer is one nothing is compared
  with before delivery (the guided answer under ``off`` and ``audit``, the student's own
  answer when it is delivered alone), the flow decides first and the call is then made as
  a stream; its chunks reach the caller as the student writes them (``ChunkWriter``);
* replayed (``CompletionStream``): a policy that compares answers (``strict``, ``verify``)
  must see them whole before it can choose, so the stream starts once the decision is
  made and replays the delivered answer.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict

from .chunks import ChatChunk
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
    """Iterable (sync and async) of chunks; ``.atlas`` is the call's report, ``.response``
    the delivered answer whole."""

    def __init__(self, items: list[CompletionChunk], report: CallReport,
                 response: ChatResponse | None = None) -> None:
        self._items = items
        self.atlas = report
        self.response = response

    def __iter__(self) -> Iterator[CompletionChunk]:
        return iter(self._items)

    async def __aiter__(self) -> AsyncIterator[CompletionChunk]:
        for item in self._items:
            yield item


class ChunkWriter:
    """``ChatChunk`` objects as OpenAI ``chat.completion.chunk`` objects, as they come.

    ``feed`` turns one chunk into what is written at once (its content, reasoning and
    tool-call fragments; the role on the first); ``end`` writes the finish chunk and, when
    asked for, the usage chunk.
    """

    def __init__(self, include_usage: bool, model: str | None = None) -> None:
        self.include_usage = include_usage
        self.id, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model
        self._started = False
        self.finish_reason: str | None = None
        self.usage: Any = None

    def _chunk(self, delta: ChunkDelta, finish: str | None = None) -> CompletionChunk:
        return CompletionChunk(id=self.id, created=self.created, model=self.model or "",
                               choices=[ChunkChoice(delta=delta, finish_reason=finish)])

    def feed(self, chunk: ChatChunk) -> list[CompletionChunk]:
        self.model = self.model or chunk.model
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            self.usage = chunk.usage
        if not chunk.written:
            return []
        delta = ChunkDelta(content=chunk.content)
        if chunk.reasoning:  # where LiteLLM and vLLM stream it; never in content
            delta = ChunkDelta(content=chunk.content, reasoning_content=chunk.reasoning)  # type: ignore[call-arg]
        if chunk.tool_calls:
            delta.tool_calls = [_tool_call_delta(tc) for tc in chunk.tool_calls]
        if not self._started:
            delta.role, self._started = "assistant", True
        return [self._chunk(delta)]

    def end(self) -> list[CompletionChunk]:
        out = [] if self._started else [self._chunk(ChunkDelta(role="assistant", content=""))]
        out.append(self._chunk(ChunkDelta(), self.finish_reason or "stop"))
        if self.include_usage and self.usage is not None:
            out.append(CompletionChunk(id=self.id, created=self.created, model=self.model or "", choices=[],
                                       usage=self.usage.openai_usage()))
        return out


def _tool_call_delta(tc: Any) -> dict[str, Any]:
    function = {"arguments": tc.arguments} if tc.name is None else {"name": tc.name, "arguments": tc.arguments}
    out: dict[str, Any] = {"index": tc.index, "function": function}
    if tc.id is not None:
        out.update(id=tc.id, type="function")
    return out


class LiveCompletionStream:
    """The delivered answer as the student writes it; iterate it once (``async for`` after
    ``acompletion``).

    ``.atlas`` is the call's report: the decision from the start, and, once the stream has
    ended, the usage of the streamed call, the latencies and the savings figures (the ledger
    row is written then). A failure in the middle of the stream is raised by the iteration,
    as the provider raised it; the report then says ``failed``.
    """

    def __init__(self, live: Any, include_usage: bool) -> None:
        self._live = live
        self._writer = ChunkWriter(include_usage)

    @property
    def atlas(self) -> CallReport:
        return self._live.report  # type: ignore[no-any-return]

    @property
    def response(self) -> ChatResponse | None:
        """The delivered answer whole, once the stream has ended."""
        delivered = self._live.delivered
        return None if delivered is None else delivered.response

    def chat_chunks(self) -> Any:
        """The student's own chunks (``ChatChunk``, with ``raw``), for adapters that pass
        them on in their own shape; iterate with ``for`` or ``async for`` as the call was made."""
        return self._live

    def __iter__(self) -> Iterator[CompletionChunk]:
        chunks = iter(self._live)
        try:
            for chunk in chunks:
                yield from self._writer.feed(chunk)
        finally:
            chunks.close()  # a caller that stops early: the call is recorded at once
        yield from self._writer.end()

    async def __aiter__(self) -> AsyncIterator[CompletionChunk]:
        chunks = aiter(self._live)
        try:
            async for chunk in chunks:
                for item in self._writer.feed(chunk):
                    yield item
        finally:
            await chunks.aclose()
        for item in self._writer.end():
            yield item
