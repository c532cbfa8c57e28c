"""What every teacher protocol owns, and the two ways guidance joins the student's request.

A protocol is the interface between the loop and one style of teacher: the probe the
student answers, the prompt the teacher reads, how its reply is read, and where the
guidance goes. The flow (``flow.py``) calls these four and nothing else, so adding a
protocol never touches the flow.

Guidance joins the request in one of two forms:

* ``user``: appended to the last user message, as in the ATLAS training code (the
  question, "A teacher has provided the following guidance:", the teaching, then an
  instruction to solve step by step applying it). Only the last message is edited, and
  only when it is the user's.
* ``system``: a system message after the leading system messages. The caller's text is
  untouched, which keeps tools, response formats and multimodal parts exactly as given.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

from ...messages import ChatResponse
from .. import prompts
from ..parse import Diagnosis, Untagged, read_teacher_reply

Placement = Literal["auto", "user", "system"]
PLACEMENTS: tuple[Placement, ...] = ("auto", "user", "system")

GUIDANCE_PREFIX = "A teacher has provided the following guidance for this task:\n"
"""Opens the ``system`` form of the guidance."""
GUIDED_MARK = "\n\nA teacher has provided the following guidance:\n"
GUIDED_CLOSE = "\n\nNow solve the problem step by step, applying the teacher's guidance:"
"""Around the teaching in the ``user`` form (the training code's guided template)."""

# Parameters under which the caller's own message must stay as written.
_SHAPED_OUTPUT = ("tools", "functions", "response_format")


class TeacherProtocol(ABC):
    """One teacher style: probe, teacher prompt, reply reader, guidance placement."""

    name: ClassVar[str]
    untagged: ClassVar[Untagged]
    """What a reply without ``<teaching>`` is (see ``parse.py``)."""
    default_placement: ClassVar[Literal["user", "system"]]
    teacher_max_tokens: ClassVar[int]
    teacher_timeout: ClassVar[float]
    """Defaults for ``teacher_max_tokens`` and ``teacher_timeout`` when the user sets none."""

    @abstractmethod
    def probe_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The student's request turned into the diagnostic probe."""

    @abstractmethod
    def teacher_messages(
        self, messages: list[dict[str, Any]], params: dict[str, Any], probe: str, max_chars: int
    ) -> list[dict[str, Any]]:
        """What the teacher reads: the task and the student's approach, user text defused."""

    def parse(self, response: ChatResponse) -> Diagnosis:
        """The teacher's reply read by the shared rules, with this protocol's untagged rule."""
        return read_teacher_reply(response.content, reasoning=response.reasoning,
                                  finish_reason=response.finish_reason, untagged=self.untagged)

    def placement(self, choice: Placement, messages: list[dict[str, Any]], params: dict[str, Any]) -> Literal["user", "system"]:
        """Where guidance goes for this request: ``auto`` is the protocol's own form, except
        that tools or a response format keep the caller's message untouched."""
        if choice == "system" or not _last_is_user(messages):
            return "system"
        if choice == "user":
            return "user"
        if self.default_placement == "user" and any(params.get(k) for k in _SHAPED_OUTPUT):
            return "system"
        return self.default_placement

    def with_guidance(
        self, messages: list[dict[str, Any]], guidance: str, params: dict[str, Any], choice: Placement = "auto"
    ) -> list[dict[str, Any]]:
        if self.placement(choice, messages, params) == "user":
            return in_user_message(messages, guidance)
        return as_system_message(messages, guidance)


def _last_is_user(messages: list[dict[str, Any]]) -> bool:
    return bool(messages) and messages[-1].get("role") == "user" and messages[-1].get("content") is not None


def as_system_message(messages: list[dict[str, Any]], guidance: str) -> list[dict[str, Any]]:
    """The request with guidance as a system message after any leading system messages."""
    note = {"role": "system", "content": GUIDANCE_PREFIX + guidance}
    i = 0
    while i < len(messages) and messages[i].get("role") in ("system", "developer"):
        i += 1
    return [*messages[:i], note, *messages[i:]]


def in_user_message(messages: list[dict[str, Any]], guidance: str) -> list[dict[str, Any]]:
    """The request with guidance inside its last (user) message, as the ATLAS training did."""
    last = messages[-1]
    block = f"{GUIDED_MARK}{guidance}{GUIDED_CLOSE}"
    content = last.get("content")
    if isinstance(content, list):  # multimodal parts stay as they are; the guidance is one more
        new_content: Any = [*content, {"type": "text", "text": block.lstrip("\n")}]
    else:
        new_content = f"Question: {content}{block}"
    return [*messages[:-1], {**last, "content": new_content}]


def guidance_of(messages: list[dict[str, Any]]) -> str | None:
    """The guidance a request carries in either form, or None (adapters and test doubles)."""
    for m in messages:
        text = prompts.content_text(m.get("content"))
        role = m.get("role")
        if role == "system" and GUIDANCE_PREFIX in text:
            return text.split(GUIDANCE_PREFIX, 1)[1]
        if role == "user" and GUIDED_MARK.lstrip("\n") in text and text.rstrip().endswith(GUIDED_CLOSE.strip()):
            inner = text.rsplit(GUIDED_MARK.lstrip("\n"), 1)[1]
            return inner[: inner.rfind(GUIDED_CLOSE.strip())].rstrip()
    return None
