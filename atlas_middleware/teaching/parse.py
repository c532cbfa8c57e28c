"""Parse the teacher's output into a diagnosis and the guidance the student may see.

Teachers are messy: thinking models wrap everything in ``<think>``, some forget a closing
tag, some repeat the format inside their reasoning. The rules, in order:

1. A reasoning prelude (``<think>...</think>`` or an unclosed ``<think>``) is private.
2. Guidance is the *last* complete ``<teaching>`` block outside the prelude; an unclosed
   final ``<teaching>`` runs to the end of the text.
3. The level is ``<level>N</level>``, else "level: N" / "capability: N/5".
4. No guidance and no level means the teacher did not follow the protocol: that is a
   ``TeacherOutputError`` and the call falls back to the student alone.
5. Guidance that states a final answer (``\\boxed{}``, "the answer is ...") is refused.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

from ..errors import TeacherOutputError

_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.IGNORECASE | re.DOTALL)
_THINK_OPEN = re.compile(r"<think>(.*)$", re.IGNORECASE | re.DOTALL)
_THINKING = re.compile(r"<thinking>(.*?)</thinking>", re.IGNORECASE | re.DOTALL)
_TEACHING = re.compile(r"<teaching>(.*?)</teaching>", re.IGNORECASE | re.DOTALL)
_TEACHING_OPEN = re.compile(r"<teaching>((?:(?!</?teaching>).)*)$", re.IGNORECASE | re.DOTALL)
_LEVEL_TAG = re.compile(r"<level>\s*([1-5])(?:\s*/\s*5)?\s*</level>", re.IGNORECASE)
_LEVEL_TEXT = re.compile(r"\b(?:level|capability)\s*[:=]?\s*([1-5])\b(?:\s*/\s*5)?", re.IGNORECASE)
_LEAKS = (
    re.compile(r"\\boxed\s*\{", re.IGNORECASE),
    re.compile(r"\b(?:the\s+)?(?:final\s+)?answer\s+(?:is|=|should\s+be)\s*[:\-]?\s*\S", re.IGNORECASE),
    re.compile(r"^\s*(?:final\s+)?answer\s*:", re.IGNORECASE | re.MULTILINE),
    re.compile(r"####\s*\S"),
)
MAX_GUIDANCE_CHARS = 4000


class Diagnosis(BaseModel):
    """What the teacher concluded. ``thinking`` is private; only ``guidance`` is shown."""

    model_config = ConfigDict(defer_build=True)

    level: int | None = None
    thinking: str = ""
    guidance: str = ""


def parse_teacher_output(text: str) -> Diagnosis:
    if not text or not text.strip():
        raise TeacherOutputError("the teacher returned an empty answer")
    private: list[str] = [m.group(1).strip() for m in _THINK_BLOCK.finditer(text)]
    body = _THINK_BLOCK.sub(" ", text)
    open_think = _THINK_OPEN.search(body)
    if open_think and "<teaching>" not in open_think.group(1).lower():
        # An unclosed reasoning block with nothing after it: the teacher ran out of tokens.
        private.append(open_think.group(1).strip())
        body = body[: open_think.start()]
    private += [m.group(1).strip() for m in _THINKING.finditer(body)]
    body_wo_thinking = _THINKING.sub(" ", body)

    blocks = _TEACHING.findall(body_wo_thinking)
    if blocks:
        guidance: str | None = blocks[-1]
    else:
        tail = _TEACHING_OPEN.search(body_wo_thinking)
        guidance = tail.group(1) if tail else None

    level_match = _LEVEL_TAG.search(body_wo_thinking) or _LEVEL_TEXT.search(body_wo_thinking)
    level = int(level_match.group(1)) if level_match else None

    if guidance is None and level is None:
        raise TeacherOutputError("the teacher's output has neither <teaching> nor <level>")
    guidance = (guidance or "").strip()
    for leak in _LEAKS:
        if leak.search(guidance):
            raise TeacherOutputError("the guidance states a final answer; it was withheld")
    if len(guidance) > MAX_GUIDANCE_CHARS:
        guidance = guidance[:MAX_GUIDANCE_CHARS].rstrip() + " ..."
    return Diagnosis(level=level, thinking="\n".join(p for p in private if p), guidance=guidance)
