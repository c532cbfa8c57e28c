"""Streaming for callers that asked for ``stream=True``: LiteLLM's own stream chunks
(``litellm.types.utils.ModelResponseStream``), ending with a usage chunk when
``stream_options.include_usage`` was set.

The chunks are the classes ``litellm.completion(stream=True)`` yields (``ModelResponseStream``,
``StreamingChoices``, ``Delta``, ``ChatCompletionDeltaToolCall`` with a ``Function``, and
``Usage``), in the shape LiteLLM gives them: the role on the first chunk, reasoning as
``delta.reasoning_content``, the finish reason on a chunk of its own, and the usage on a last
chunk with one empty choice. So code written for ``litellm.completion`` keeps working when
wrapped: ``chunk.usage.total_tokens``, ``delta.tool_calls[0].function.name`` and
``litellm.stream_chunk_builder(chunks, messages=...)``. LiteLLM is imported when the first
stream is made, never when atlas_middleware is.

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
from typing import TYPE_CHECKING, Any

from ..messages import ChatResponse
from ..report import CallReport
from .chunks import ChatChunk, ToolCallDelta

if TYPE_CHECKING:
    from litellm.types.utils import ModelResponseStream

CHUNK_CHARS = 48


def _litellm_types() -> Any:
    """``litellm.types.utils``, imported on first use (with the cost map read locally)."""
    from ..backends.litellm import import_litellm

    import_litellm()
    from litellm.types import utils

    return utils


def chunks(response: ChatResponse, include_usage: bool) -> list[ModelResponseStream]:
    """A whole answer as the stream a model would have written: reasoning first, the text
    in ``CHUNK_CHARS`` pieces, the tool calls, the finish reason, then the usage."""
    writer = ChunkWriter(include_usage, model=response.model)
    pieces = [ChatChunk(reasoning=response.reasoning)] if response.reasoning else []
    text = response.content or ""
    pieces += [ChatChunk(content=text[i : i + CHUNK_CHARS]) for i in range(0, len(text), CHUNK_CHARS)]
    if response.tool_calls:
        pieces.append(ChatChunk(tool_calls=tuple(
            ToolCallDelta(index=i, id=tc.id or f"call_{uuid.uuid4().hex[:24]}", name=tc.name, arguments=tc.arguments)
            for i, tc in enumerate(response.tool_calls))))
    pieces.append(ChatChunk(finish_reason=response.finish_reason or "stop", usage=response.usage))
    return [item for piece in pieces for item in writer.feed(piece)] + writer.end()


class CompletionStream:
    """Iterable (sync and async) of chunks; ``.atlas`` is the call's report, ``.response``
    the delivered answer whole."""

    def __init__(self, items: list[ModelResponseStream], report: CallReport,
                 response: ChatResponse | None = None) -> None:
        self._items = items
        self.atlas = report
        self.response = response

    def __iter__(self) -> Iterator[ModelResponseStream]:
        return iter(self._items)

    async def __aiter__(self) -> AsyncIterator[ModelResponseStream]:
        for item in self._items:
            yield item


class ChunkWriter:
    """``ChatChunk`` objects as LiteLLM's ``ModelResponseStream`` chunks, as they come.

    ``feed`` turns one chunk into what is written at once (its content, reasoning and
    tool-call fragments; the role on the first); ``end`` writes the finish chunk and, when
    asked for, the usage chunk. One pydantic object tree per chunk, as LiteLLM builds it.
    """

    def __init__(self, include_usage: bool, model: str | None = None) -> None:
        self.include_usage = include_usage
        self.id, self.created, self.model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), model
        self._started = False
        self._types = _litellm_types()
        self.finish_reason: str | None = None
        self.usage: Any = None

    def _chunk(self, delta: Any, finish: str | None = None, usage: dict[str, Any] | None = None) -> Any:
        t = self._types
        extra = {} if usage is None else {"usage": usage}
        return t.ModelResponseStream(id=self.id, created=self.created, model=self.model or "",
                                     choices=[t.StreamingChoices(delta=delta, finish_reason=finish)], **extra)

    def feed(self, chunk: ChatChunk) -> list[ModelResponseStream]:
        self.model = self.model or chunk.model
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            self.usage = chunk.usage
        if not chunk.written:
            return []
        t = self._types
        calls = [_tool_call_delta(t, tc) for tc in chunk.tool_calls] or None
        role = None if self._started else "assistant"
        self._started = True
        # reasoning where LiteLLM and vLLM stream it (``reasoning_content``); never in content
        return [self._chunk(t.Delta(content=chunk.content, role=role, tool_calls=calls,
                                    reasoning_content=chunk.reasoning or None))]

    def end(self) -> list[ModelResponseStream]:
        t = self._types
        out = [] if self._started else [self._chunk(t.Delta(role="assistant", content=""))]
        out.append(self._chunk(t.Delta(), self.finish_reason or "stop"))
        if self.include_usage and self.usage is not None:
            out.append(self._chunk(t.Delta(), usage=self.usage.openai_usage()))
        return out


def _tool_call_delta(t: Any, tc: ToolCallDelta) -> Any:
    # A continuation fragment has no id, name or type, as OpenAI streams it.
    return t.ChatCompletionDeltaToolCall(id=tc.id, type=None if tc.id is None else "function", index=tc.index,
                                         function=t.Function(name=tc.name, arguments=tc.arguments))


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

    def __iter__(self) -> Iterator[ModelResponseStream]:
        chunks = iter(self._live)
        try:
            for chunk in chunks:
                yield from self._writer.feed(chunk)
        finally:
            chunks.close()  # a caller that stops early: the call is recorded at once
        yield from self._writer.end()

    async def __aiter__(self) -> AsyncIterator[ModelResponseStream]:
        chunks = aiter(self._live)
        try:
            async for chunk in chunks:
                for item in self._writer.feed(chunk):
                    yield item
        finally:
            await chunks.aclose()
        for item in self._writer.end():
            yield item


AtlasStream = CompletionStream | LiveCompletionStream
"""What ``Atlas.completion(..., stream=True)`` returns: iterate it (``for``, or ``async for``
after ``acompletion``) for LiteLLM's chunks; ``report_of(stream)`` is the call's report."""
