"""Read what a teacher wrote: its private reasoning, the guidance the student may see, a level.

Real teachers are messy. Thinking models reason in ``<think>`` first, and a chat template
may open that block for them, so the reply holds only its closing tag (Qwen3's thinking
templates, DeepSeek-R1); vLLM's reasoning parsers move the reasoning to a separate field;
drafts of the guidance appear inside the reasoning; replies run into the token cap. The
rules, the same for every protocol (``protocols/``):

1. **Reasoning is private.** ``<think>``/``<thinking>`` blocks, closed or not; a closing tag
   with no opening one makes everything before it private (the template opened the block);
   a provider's separate reasoning field too. None of it ever reaches the student.
2. **Guidance** is the last complete ``<teaching>`` block outside the reasoning; an unclosed
   final ``<teaching>`` runs to the end of the reply. With no ``<teaching>`` at all, the
   protocol decides: the whole visible reply is the guidance (``atlas``: the published
   training code reads it that way) or the reply is not usable (``structured``).
3. **A reply cut at the token cap** (finish reason ``length``) is used only when a closed
   ``<teaching>`` block came before the cut; otherwise ``TeacherTruncatedError``, so a
   half-written hint never reaches the student.
4. **The level** comes from a ``<level>`` tag outside the guidance, else from the private
   text ("Capability level: 4/5"), never from the guidance: "the lift starts at level 5"
   in a hint says nothing about the student.
5. **Answer leaks** are found here (``leaks.py``) and handled by the flow, per setting.
6. **Tags are read as a model reads them** (``markup.canonical``): ``＜teaching＞`` or a
   ``<teaching>`` with a zero-width character inside is a tag, and format characters are
   dropped; nothing else of the reply is normalised (``x²`` stays ``x²``). This is safe
   only because everything the teacher read was defused through the same fold
   (``prompts.defuse``): a plan or task it echoes holds no tag this reader could take for
   the teacher's own.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import TeacherOutputError, TeacherTruncatedError
from . import markup
from .leaks import find_leaks

Untagged = Literal["guidance", "private"]
"""What a reply without ``<teaching>`` is: all guidance (atlas) or nothing usable (structured)."""

MAX_GUIDANCE_CHARS = 4000

_REASONING_TAG = re.compile(r"<(/?)\s*(?:think|thinking)\s*>", re.IGNORECASE)
# Blocks are paired by a scan of these tags (``_teaching_blocks``): a lazy
# ``<teaching>(.*?)</teaching>`` rereads the rest of the reply from every unclosed tag.
_TEACHING_TAG = re.compile(r"<(/?)teaching\s*+>", re.IGNORECASE)
_TEACHING_OPEN = re.compile(r"<teaching\s*>", re.IGNORECASE)
_TEACHING_CLOSE = re.compile(r"</teaching\s*>", re.IGNORECASE)
_LEVEL_TAG = re.compile(r"<level>\s*([1-5])(?:\s*/\s*5)?\s*</level>", re.IGNORECASE)
_ANY_LEVEL_TAG = re.compile(r"</?level\s*>", re.IGNORECASE)
# A level stated in prose must look like a rating ("Capability level: 4/5", "level = 2",
# "rating: 3 out of 5", "level 5/5"); "starts at level 5" is not one. Runs of spaces and
# stars are read possessively here and in ``_LABEL``: "level:" and a few thousand spaces
# would otherwise be split between two ``\s*`` in every way before the match fails.
_LEVEL_TEXT = re.compile(
    r"\b(?:capability|level|rating)(?:\s+(?:level|score|rating))?\s*(?::|=|\bis\b|\bof\b)\s*+\**+\s*+([1-5])\b"
    r"(?:\s*(?:/|out\s+of)\s*5)?"
    r"|\b(?:capability|level|rating)\s+([1-5])\s*(?:/|out\s+of)\s*5\b",
    re.IGNORECASE,
)
# A label the teacher may put before plain guidance, echoing the prompt's closing cue.
_LABEL = re.compile(
    r"^\s*+(?:#++\s*+)?\**+\s*+(?:your\s++)?(?:adaptive\s++teaching|teaching|guidance)\s*+\**+\s*+:\s*+\**+\s*+",
    re.IGNORECASE,
)


class Diagnosis(BaseModel):
    """What the teacher concluded. ``thinking`` is private; only ``guidance`` is shown."""

    model_config = ConfigDict(defer_build=True)

    level: int | None = None
    thinking: str = ""
    guidance: str = ""
    leaks: list[str] = Field(default_factory=list)
    """Sentences of ``guidance`` that state an answer (see ``leaks.py``)."""


def split_reasoning(text: str) -> tuple[list[str], str, bool]:
    """``(private parts, visible text, ended inside reasoning)`` of a reply.

    One left-to-right walk over the reasoning tags, counting depth, so nested or
    repeated blocks, an unclosed block and a lone closing tag all come out right.
    """
    private: list[str] = []
    visible: list[str] = []
    depth, pos, start = 0, 0, 0
    for m in _REASONING_TAG.finditer(text):
        if m.group(1) != "/":
            if depth == 0:
                visible.append(text[pos : m.start()])
                start = m.end()
            depth += 1
        elif depth > 0:
            depth -= 1
            if depth == 0:
                private.append(text[start : m.start()])
                pos = m.end()
        else:
            # A closing tag with nothing open: the chat template opened the block, so all
            # the reply has said so far was reasoning.
            private.append("".join(visible) + text[pos : m.start()])
            visible = []
            pos = m.end()
    unclosed = depth > 0
    if unclosed:
        private.append(text[start:])
    else:
        visible.append(text[pos:])
    return [p.strip() for p in private if p.strip()], "".join(visible), unclosed


def _teaching_blocks(text: str) -> list[tuple[int, int, int, int]]:
    """Each closed ``<teaching>`` block as (start, inner start, inner end, end): an opening
    tag runs to the first closing tag after it, tags in between are its text, as
    ``<teaching>(.*?)</teaching>`` finds them (spaces before ``>`` allowed), in one pass."""
    blocks: list[tuple[int, int, int, int]] = []
    opened: re.Match[str] | None = None
    for tag in _TEACHING_TAG.finditer(text):
        if not tag.group(1):
            opened = opened or tag
        elif opened is not None:
            blocks.append((opened.start(), opened.end(), tag.start(), tag.end()))
            opened = None
    return blocks


def _without_blocks(text: str) -> str:
    """``text`` with each closed ``<teaching>`` block replaced by a space."""
    kept, pos = [], 0
    for start, _, _, end in _teaching_blocks(text):
        kept += [text[pos:start], " "]
        pos = end
    return "".join(kept) + text[pos:]


def _guidance_span(visible: str, truncated: bool) -> tuple[int, int] | None:
    """Where the guidance lies in the visible text: the last closed ``<teaching>`` block,
    else an unclosed final one (not when the reply was cut: that is half a hint)."""
    blocks = _teaching_blocks(visible)
    if blocks:
        last = blocks[-1]
        tail_open = [m for m in _TEACHING_OPEN.finditer(visible, last[3])]
        if not tail_open or truncated:
            return last[1], last[2]
        return tail_open[-1].end(), len(visible)
    if truncated:
        return None
    opens = list(_TEACHING_OPEN.finditer(visible))
    return (opens[-1].end(), len(visible)) if opens else None


def _level(outside: str, private: list[str]) -> int | None:
    tag = _LEVEL_TAG.search(outside)
    if tag:
        return int(tag.group(1))
    for part in reversed(private):  # the latest statement in the diagnosis wins
        found = list(_LEVEL_TAG.finditer(part)) or list(_LEVEL_TEXT.finditer(part))
        if found:
            m = found[-1]
            return int(m.group(1) or m.group(2))
    return None


def _clean_guidance(text: str) -> str:
    text = _LEVEL_TAG.sub("", text)
    text = _ANY_LEVEL_TAG.sub("", _TEACHING_CLOSE.sub("", _TEACHING_OPEN.sub("", text)))
    text = _LABEL.sub("", text, count=1).strip()
    if len(text) > MAX_GUIDANCE_CHARS:
        text = text[:MAX_GUIDANCE_CHARS].rstrip() + " ..."
    return text


def read_teacher_reply(
    text: str | None,
    *,
    reasoning: str | None = None,
    finish_reason: str | None = None,
    untagged: Untagged = "private",
) -> Diagnosis:
    """Split a teacher's reply into private diagnosis, guidance and level (rules above).

    Raises ``TeacherTruncatedError`` for a reply cut before any complete guidance and
    ``TeacherOutputError`` for one that holds no guidance in the protocol's terms.
    """
    text = markup.canonical(text or "")
    truncated = finish_reason == "length"
    if not text.strip() and not (reasoning or "").strip():
        if truncated:
            raise TeacherTruncatedError("the teacher's reply hit its token cap before any text")
        raise TeacherOutputError("the teacher returned an empty answer")
    private, visible, unclosed = split_reasoning(text)
    if reasoning and reasoning.strip():
        private.insert(0, reasoning.strip())

    span = _guidance_span(visible, truncated)
    if span is None and truncated:
        where = "inside its reasoning" if unclosed or not visible.strip() else "before a closed <teaching> block"
        raise TeacherTruncatedError(f"the teacher's reply hit its token cap {where}")
    if span is not None:
        guidance_raw = visible[span[0] : span[1]]
        outside = visible[: span[0]] + visible[span[1] :]
    elif untagged == "guidance":
        guidance_raw, outside = visible, ""
    else:
        guidance_raw, outside = "", visible
    # Text outside the guidance is private (drafts, stray lines); a <level> tag is markup,
    # read wherever it is outside a <teaching> block.
    stray = _ANY_LEVEL_TAG.sub(" ", _without_blocks(outside)).strip()
    level = _level(outside if span is not None or untagged == "private" else visible,
                   [*private, stray] if stray else private)
    guidance = _clean_guidance(guidance_raw)

    if span is None:
        if untagged == "private" and level is None:
            raise TeacherOutputError("the teacher's output has neither <teaching> nor <level>")
        if untagged == "guidance" and not guidance and unclosed:
            raise TeacherOutputError("the teacher's reply ended inside its reasoning, with no guidance")
    thinking = "\n".join([*private, stray] if stray else private)
    return Diagnosis(level=level, thinking=thinking, guidance=guidance, leaks=find_leaks(guidance))
