"""The async stream LiteLLM wraps, and Atlas's chunks as LiteLLM's generic chunks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from litellm.types.utils import GenericStreamingChunk, ModelResponseStream

from ..report import CallReport
from ..tracing import parented
from .options import _boundary

if TYPE_CHECKING:
    from .adapter import AtlasLLM


class PendingStream:
    """The async stream LiteLLM wraps: runs the loop on first use, then passes chunks on.

    ``prime()`` runs the loop without consuming a chunk (until a live stream's first chunk
    has come), so that the proxy can send the ``x-atlas-*`` headers of a stream before its
    body. ``report`` is complete once the stream has ended.
    """

    def __init__(self, provider: AtlasLLM, model: str, messages: list[Any], kwargs: dict[str, Any],
                 litellm_params: dict[str, Any] | None, logging_obj: Any) -> None:
        self._provider, self._model, self._messages, self._kwargs = provider, model, messages, kwargs
        self._litellm_params, self._logging_obj = litellm_params, logging_obj
        self._chunks: AsyncIterator[GenericStreamingChunk] | None = None
        self._error: BaseException | None = None
        self._lock = asyncio.Lock()
        self.report: CallReport | None = None

    async def prime(self) -> CallReport | None:
        """Run the loop once; the student's error, if any, is raised by the first ``__anext__``."""
        async with self._lock:
            if self._chunks is None and self._error is None:
                try:
                    with _boundary(self._model, self._kwargs), parented(self._litellm_params):
                        stream = await self._provider.atlas.acompletion(self._model, self._messages, **self._kwargs)
                except Exception as exc:
                    self._error = exc
                    return None
                self.report = stream.atlas
                self._provider._remember(stream.atlas, self._litellm_params, self._logging_obj, stream=True,
                                         observe=False)
                self._chunks = self._generic_chunks(stream)
        return self.report

    async def _generic_chunks(self, stream: Any) -> AsyncIterator[GenericStreamingChunk]:
        writer = GenericWriter()
        with _boundary(self._model, self._kwargs):  # a failure after the first chunk
            async for chunk in stream:
                for item in writer.feed(chunk):
                    yield item
        self.report = stream.atlas  # complete now: the streamed call's usage and price
        self._provider._remember(stream.atlas, self._litellm_params, self._logging_obj, stream=True)
        yield writer.end()

    def __aiter__(self) -> PendingStream:
        return self

    async def __anext__(self) -> GenericStreamingChunk:
        await self.prime()
        if self._error is not None:
            error, self._error, self._chunks = self._error, None, _nothing()
            raise error
        assert self._chunks is not None
        return await anext(self._chunks)

    async def aclose(self) -> None:
        chunks, self._chunks = self._chunks, _nothing()
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def _nothing() -> AsyncIterator[GenericStreamingChunk]:
    return
    yield  # an async generator with no items


class GenericWriter:
    """``Atlas``'s chunks (LiteLLM's ``ModelResponseStream``) as the provider-neutral
    ``GenericStreamingChunk`` dicts a ``CustomLLM`` must yield, as they come; LiteLLM's
    ``CustomStreamWrapper`` turns them back into its own chunks for the caller.

    Text and tool calls are passed on at once; the finish reason and the usage, which
    LiteLLM reads from the chunk that ends the stream, go into one last chunk (with the
    reasoning and cached token details). What the pinned LiteLLM (1.108) cannot carry this
    way is a reasoning model's thinking: a ``GenericStreamingChunk`` has no reasoning field,
    and ``provider_specific_fields`` would put it on ``delta.provider_specific_fields`` (never
    ``delta.reasoning_content``), where ``stream_chunk_builder`` keeps only the last fragment;
    so it is not passed on. A chunk with several tool-call fragments becomes several chunks
    (one ``tool_use`` each), which ``stream_chunk_builder`` joins as before.
    """

    def __init__(self) -> None:
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def feed(self, chunk: ModelResponseStream) -> list[GenericStreamingChunk]:
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.usage = usage.model_dump(exclude_none=True)
        if not chunk.choices:
            return []
        choice = chunk.choices[0]
        if choice.finish_reason:
            self.finish_reason = choice.finish_reason
        text, calls = choice.delta.content or "", choice.delta.tool_calls or []
        out = [_generic_chunk(text if i == 0 else "", _tool_use(tc)) for i, tc in enumerate(calls)]
        if text and not calls:
            out.append(_generic_chunk(text, None))
        return out

    def end(self) -> GenericStreamingChunk:
        return _generic_chunk("", None, finish_reason=self.finish_reason or "stop", usage=self.usage)


def _tool_use(tc: Any) -> dict[str, Any]:
    function = {"name": tc.function.name, "arguments": tc.function.arguments}
    return {"id": tc.id, "type": "function", "index": tc.index, "function": function}


def _generic_chunk(text: str, tool_use: dict[str, Any] | None, *, finish_reason: str | None = None,
             usage: dict[str, Any] | None = None) -> GenericStreamingChunk:
    return GenericStreamingChunk(text=text, tool_use=tool_use,  # type: ignore[typeddict-item]
                                 is_finished=finish_reason is not None, finish_reason=finish_reason or "",
                                 usage=usage, index=0)  # type: ignore[typeddict-item]
