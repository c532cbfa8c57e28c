"""A call's role guessed from its messages: for test doubles that see only what a model sees.

In this process the role rides beside each request (``ChatRequest.context``, set by the
flow), and ``scripted.classify`` reads it. A double that serves requests arriving over HTTP
(``server.py``, ``anthropic_server.py``) or through LangChain's chat-model interface
(``langchain.py``) receives only the messages, as a real remote model does; it can tell
its roles apart only by the prompts' wording, and does it here, once. The guess lives in the
testing package alone: no backend or adapter of the library reads a prompt to route a call.
"""

from __future__ import annotations

from typing import Any

from ..messages import CallContext
from ..teaching import prompts, protocols
from ..teaching.protocols import atlas, structured


def _text(message: dict[str, Any] | None) -> str:
    return prompts.content_text((message or {}).get("content"))


def _teacher(messages: list[dict[str, Any]]) -> bool:
    first = _text(messages[0])
    if first == structured.TEACHER_SYSTEM:
        return True
    return len(messages) == 1 and messages[0].get("role") == "user" and first.startswith(atlas.TEACHER_INTRO)


def _probe(messages: list[dict[str, Any]]) -> bool:
    last = _text(messages[-1])
    return last == structured.PROBE_INSTRUCTION or (
        messages[-1].get("role") == "user" and last.endswith(atlas.PROBE_INSTRUCTION))


def guess_context(messages: list[dict[str, Any]]) -> CallContext:
    """The role (and a judge's kind) the prompts' wording says, under either teacher protocol."""
    if not messages:
        return CallContext(role="baseline")
    if _teacher(messages):
        return CallContext(role="teacher")
    first = _text(messages[0])
    if first == prompts.PAIRWISE_SYSTEM:
        return CallContext(role="judge", judging="pairwise")
    if first == prompts.SCORE_SYSTEM:
        return CallContext(role="judge", judging="score")
    if _probe(messages):
        return CallContext(role="probe")
    # Either form of the guidance; an adapter may fold a system note into the caller's prompt.
    if protocols.guidance_of(messages) is not None:
        return CallContext(role="guided")
    return CallContext(role="baseline")


__all__ = ["guess_context"]
