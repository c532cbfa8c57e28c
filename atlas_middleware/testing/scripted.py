"""Scripted backends: deterministic students and teachers for tests and offline demos.

``ScriptedBackend`` answers from a per-role script (probe, guided, baseline, teacher,
pairwise judge, grading judge), reading each request's role where the flow put it, beside
the request (``classify``). Each reply may be a string, a ``Reply`` (content, tool
calls, token counts, delay, finish reason), an exception to raise, or a function of the
request returning any of those. Every call is recorded in ``.calls``. Streams
(``stream``/``astream``) yield the same answer word by word, then the finish reason, then
the usage; ``hold_stream`` stops one after its first chunk until a test lets it go on.

Token counts are whitespace words: the fake is its own provider, so its counts are
reported as provider counts, and tests can compute expected figures by hand.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..messages import ChatRequest, ChatResponse, ToolCall
from ..runtime.chunks import ChatChunk, ToolCallDelta
from ..teaching import prompts, protocols
from ..usage import Usage

ScriptItem = Any  # str | Reply | BaseException | Callable[[ChatRequest], ...]


@dataclass
class Reply:
    content: str | None = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    delay: float = 0.0
    finish_reason: str | None = None
    reasoning: str | None = None
    """A separate reasoning field, as vLLM's reasoning parsers return it."""
    reasoning_tokens: int | None = None
    """``completion_tokens_details.reasoning_tokens`` to report (part of the completion
    tokens, as OpenAI counts them); None reports none, as vLLM does."""
    cached_tokens: int | None = None
    """``prompt_tokens_details.cached_tokens`` to report (part of the prompt tokens)."""
    stream_error: BaseException | None = None
    """Raised by a stream of this reply after its first chunk: a failure mid-stream."""


def words(text: str | None) -> int:
    return len((text or "").split())


def prompt_words(request: ChatRequest) -> int:
    return sum(words(prompts.content_text(m.get("content"))) for m in request.messages)


def classify(request: ChatRequest) -> str:
    """Which role of the teaching loop made this request, as the flow set it beside the
    request (``ChatRequest.context``): 'probe', 'teacher', 'guided', 'baseline', and a
    judge's 'judge_pair' or 'judge_score'. A request without a role (made outside the loop)
    is the student's own answer, 'baseline'. Never read from the prompts: a double served
    over a wire guesses the role it is given (``wire.py``)."""
    context = request.context
    if context.role == "judge":
        return "judge_pair" if context.judging == "pairwise" else "judge_score"
    return context.role or "baseline"


def hold_role(backend: Any, role: str, release: threading.Event, timeout: float = 5.0, *,
              also_async: bool = False) -> None:
    """Make ``backend.complete`` (and with ``also_async``, ``acomplete``) hold every ``role``
    call until ``release`` is set.

    For tests of work that runs after the user's call returns (an audit's baseline): a
    sync baseline's thread may otherwise reach the backend before the call returns, so
    holding it, as a busy machine would, keeps the test independent of thread timing.
    """
    complete, acomplete = backend.complete, getattr(backend, "acomplete", None)
    if also_async and acomplete is None:
        raise TypeError("also_async: the backend has no acomplete to hold")

    def held(request: ChatRequest) -> Any:
        if classify(request) == role:
            assert release.wait(timeout), f"the {role} call was never released"
        return complete(request)

    async def aheld(request: ChatRequest) -> Any:  # the async driver's calls: held off the event loop
        if classify(request) == role:
            assert await asyncio.to_thread(release.wait, timeout), f"the {role} call was never released"
        assert acomplete is not None
        return await acomplete(request)

    backend.complete = held
    if also_async:
        backend.acomplete = aheld


def hold_stream(backend: Any, role: str, release: threading.Event, timeout: float = 5.0) -> None:
    """Make streams of ``role`` stop after their first chunk until ``release`` is set.

    The structural test of a live stream: the consumer sets ``release`` once it holds the
    first chunk. Were the answer gathered whole before the consumer saw any of it, the
    stream would wait here for a consumer still waiting for it, and fail after ``timeout``.
    """
    backend.stream_holds[role] = (release, timeout)


def guidance_of(request: ChatRequest) -> str | None:
    """The guidance the loop put into a student request, in either placement."""
    return protocols.guidance_of(request.messages)


def teacher_reply(guidance: str = "Check each step.", level: int = 2, thinking: str = "diagnosis") -> str:
    """A well-formed teacher answer, for scripts."""
    return f"<thinking>{thinking}</thinking>\n<level>{level}</level>\n<teaching>{guidance}</teaching>"


class ScriptedBackend:
    """A backend answering from a per-role script; see the module docstring."""

    def __init__(
        self,
        script: dict[str, ScriptItem] | None = None,
        *,
        default: ScriptItem = "ok",
        delays: dict[str, float] | None = None,
        model: str = "scripted",
    ) -> None:
        self.script = dict(script or {})
        self.default = default
        self.delays = dict(delays or {})
        self.model = model
        self.calls: list[tuple[str, ChatRequest]] = []
        self.stream_holds: dict[str, tuple[threading.Event, float]] = {}
        self._lock = threading.Lock()

    def roles(self) -> list[str]:
        with self._lock:
            return [role for role, _ in self.calls]

    def timeout_error(self, request: ChatRequest, message: str) -> Exception:
        """LiteLLM's ``Timeout``: this double stands in for a LiteLLM model (behind LangChain,
        as ``ScriptedChatModel``, the LangChain backend's own time-out applies instead)."""
        from ..backends.litellm import litellm_timeout

        return litellm_timeout(request, message)

    def _resolve(self, request: ChatRequest) -> tuple[str, Reply]:
        role = classify(request)
        with self._lock:
            self.calls.append((role, request))
        item = self.script.get(role, self.script.get("*", self.default))
        if isinstance(item, list):  # a sequence: one item per call of that role, last repeats
            with self._lock:
                n = sum(1 for r, _ in self.calls if r == role) - 1
            item = item[min(n, len(item) - 1)]
        if callable(item) and not isinstance(item, BaseException):
            item = item(request)
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, ChatResponse):
            return role, Reply(item.content, item.tool_calls, item.usage.prompt_tokens,
                               item.usage.completion_tokens, finish_reason=item.finish_reason,
                               reasoning=item.reasoning, reasoning_tokens=item.usage.reasoning_tokens,
                               cached_tokens=item.usage.cached_tokens)
        if isinstance(item, Reply):
            return role, item
        return role, Reply(content=str(item))

    def _response(self, request: ChatRequest, reply: Reply) -> ChatResponse:
        completion = reply.completion_tokens
        if completion is None:
            completion = (words(reply.reasoning) + words(reply.content)
                          + sum(words(t.arguments) + 1 for t in reply.tool_calls))
        max_tokens = request.params.get("max_tokens")
        finish = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
        content, reasoning = reply.content, reply.reasoning
        if isinstance(max_tokens, int) and completion > max_tokens and (content or reasoning):
            # Like a real model at its cap: reasoning comes first and counts against it.
            thought = (reasoning or "").split()
            if reasoning is not None:
                reasoning = " ".join(thought[:max_tokens])
            room = max(0, max_tokens - len(thought))
            content = " ".join((content or "").split()[:room]) if content is not None else None
            completion, finish = max_tokens, "length"
        usage = Usage(
            prompt_tokens=reply.prompt_tokens if reply.prompt_tokens is not None else prompt_words(request),
            completion_tokens=completion,
            reasoning_tokens=min(reply.reasoning_tokens or 0, completion),
            cached_tokens=reply.cached_tokens or 0,
            calls=1,
            cost_usd=None,
        )
        return ChatResponse(content=content, tool_calls=reply.tool_calls, finish_reason=finish,
                            reasoning=reasoning, usage=usage, model=request.model or self.model)

    def _delay(self, role: str, reply: Reply) -> float:
        return reply.delay or self.delays.get(role, 0.0)

    def complete(self, request: ChatRequest) -> ChatResponse:
        role, reply = self._resolve(request)
        delay = self._delay(role, reply)
        if delay:
            time.sleep(delay)
        return self._response(request, reply)

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        role, reply = self._resolve(request)
        delay = self._delay(role, reply)
        if delay:
            await asyncio.sleep(delay)
        return self._response(request, reply)


    # -- streams: the answer word by word, then the finish reason, then the usage ------------

    def _pieces(self, request: ChatRequest, reply: Reply) -> list[ChatChunk]:
        response = self._response(request, reply)
        out = [ChatChunk(reasoning=word, model=response.model) for word in _WORD.findall(response.reasoning or "")]
        out += [ChatChunk(content=word, model=response.model) for word in _WORD.findall(response.content or "")]
        out += [ChatChunk(tool_calls=(ToolCallDelta(index=i, id=tc.id or f"call_{i}", name=tc.name,
                                                    arguments=tc.arguments),))
                for i, tc in enumerate(response.tool_calls)]
        empty = "" if response.content is not None and not out else None
        out.append(ChatChunk(content=empty, finish_reason=response.finish_reason, model=response.model))
        out.append(ChatChunk(usage=response.usage, model=response.model))
        return out

    def _hold(self, role: str) -> tuple[threading.Event, float] | None:
        return self.stream_holds.get(role)

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        role, reply = self._resolve(request)
        delay = self._delay(role, reply)
        if delay:
            time.sleep(delay)
        for i, chunk in enumerate(self._pieces(request, reply)):
            yield chunk
            if i == 0:
                hold = self._hold(role)
                if hold is not None and not hold[0].wait(hold[1]):
                    raise AssertionError(f"the consumer never received the first chunk of the {role} stream")
                if reply.stream_error is not None:
                    raise reply.stream_error

    async def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        role, reply = self._resolve(request)
        delay = self._delay(role, reply)
        if delay:
            await asyncio.sleep(delay)
        for i, chunk in enumerate(self._pieces(request, reply)):
            yield chunk
            if i == 0:
                hold = self._hold(role)
                if hold is not None and not await asyncio.to_thread(hold[0].wait, hold[1]):
                    raise AssertionError(f"the consumer never received the first chunk of the {role} stream")
                if reply.stream_error is not None:
                    raise reply.stream_error


_WORD = re.compile(r"\s*\S+|\s+$")
"""A stream's pieces: each word with the whitespace before it (they join back to the text)."""


class FunctionBackend(ScriptedBackend):
    """Answers every request with ``fn(request)`` (any script item)."""

    def __init__(self, fn: Callable[[ChatRequest], ScriptItem], **kwargs: Any) -> None:
        super().__init__({"*": fn}, **kwargs)
