"""A streamed answer, piece by piece: ``ChatChunk``, and the ``Assembler`` that adds chunks up.

Streaming is part of the backend protocol (``ChatBackend.stream`` / ``astream``): a backend
yields the content, reasoning and tool-call fragments of its answer as the model writes
them, then the finish reason, and the call's ``Usage`` on a last chunk (what
``stream_options.include_usage`` asks a provider for, counted as a whole response's usage
would be). A backend that cannot stream yields its whole answer as one chunk
(``ChatChunk.whole``). The drivers add the chunks of a live stream up with an ``Assembler``,
so the teaching flow sees the same ``ChatResponse`` a whole call would have given it.

Chunks are plain frozen dataclasses, not pydantic models: a stream makes one per token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..messages import ChatResponse, ToolCall
from ..usage import Usage

UNCOUNTED = "unknown"
"""``Usage.counted_by`` of a stream that ended without a usage chunk."""


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A fragment of one tool call; fragments with the same ``index`` make one call."""

    index: int = 0
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(frozen=True, slots=True)
class ChatChunk:
    """One piece of a streamed answer. Every field is optional; ``usage`` comes last."""

    content: str | None = None
    reasoning: str | None = None
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None
    raw: Any = field(default=None, compare=False, repr=False)
    """The provider's own chunk (a LangChain ``AIMessageChunk``, ...), for adapters that
    pass the student's chunks on as the student shaped them."""

    @property
    def empty(self) -> bool:
        """Nothing in it (an OpenAI stream's opening role-only delta, say)."""
        return (not self.content and not self.reasoning and not self.tool_calls
                and self.finish_reason is None and self.usage is None)

    @property
    def written(self) -> bool:
        """Whether it carries something the model wrote (text, reasoning, a tool call)."""
        return bool(self.content or self.reasoning or self.tool_calls)

    @classmethod
    def whole(cls, response: ChatResponse) -> ChatChunk:
        """A whole answer as one chunk: the stream of a backend that cannot stream."""
        calls = tuple(ToolCallDelta(index=i, id=tc.id, name=tc.name, arguments=tc.arguments)
                      for i, tc in enumerate(response.tool_calls))
        return cls(content=response.content, reasoning=response.reasoning, tool_calls=calls,
                   finish_reason=response.finish_reason, usage=response.usage, model=response.model,
                   raw=response.raw)


class Assembler:
    """Adds the chunks of one stream up to the ``ChatResponse`` a whole call would give."""

    def __init__(self) -> None:
        self._content: list[str] | None = None
        self._reasoning: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.model: str | None = None

    def add(self, chunk: ChatChunk) -> None:
        if chunk.content is not None:
            if self._content is None:
                self._content = []
            self._content.append(chunk.content)
        if chunk.reasoning:
            self._reasoning.append(chunk.reasoning)
        for delta in chunk.tool_calls:
            call = self._calls.setdefault(delta.index, {"id": None, "name": "", "arguments": []})
            call["id"] = call["id"] or delta.id
            call["name"] = call["name"] or (delta.name or "")
            call["arguments"].append(delta.arguments)
        if chunk.finish_reason is not None:
            self.finish_reason = chunk.finish_reason
        if chunk.usage is not None:
            self.usage = chunk.usage
        if chunk.model:
            self.model = chunk.model

    @property
    def text(self) -> str:
        return "".join(self._content or ())

    def response(self) -> ChatResponse:
        calls = [ToolCall(id=c["id"], name=c["name"], arguments="".join(c["arguments"]) or "{}")
                 for _, c in sorted(self._calls.items())]
        finish = self.finish_reason or ("tool_calls" if calls else "stop")
        usage = self.usage or Usage(calls=1, counted_by=UNCOUNTED, cost_usd=None)
        return ChatResponse(content=None if self._content is None else self.text, tool_calls=calls,
                            finish_reason=finish, reasoning="".join(self._reasoning) or None,
                            usage=usage, model=self.model)
