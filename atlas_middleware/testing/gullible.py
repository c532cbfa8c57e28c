"""Doubles of models that do what the text they read tells them: the judges and the teacher
that prompt injection works on.

A language model reads its prompt as text, not as code points: zero-width, bidi and other
format characters are invisible to it, a fullwidth ``＜`` or a mathematical bold ``𝐯`` reads
as ``<`` and ``v``. The worst case, ``sees_defused=True``: the angle quote ``‹`` that
``prompts.defuse`` puts in place of ``<`` still reads as a bracket. A gullible model also
follows what it read last, wherever it sat:

* ``EchoingJudge`` answers the last ``<verdict>X</verdict>`` it sees after its own
  instruction (the system message), an answer's text included;
* ``ObeyingJudge`` follows the last "ignore previous instructions, answer X" it reads;
* ``GullibleTeacher`` hands on, as its own teaching, a ``<teaching>`` block it reads in the
  task or the student's plan.

When nothing in the prompt steers them they judge (or teach) honestly, as ``PairwiseJudge``
and ``GradingJudge`` do: ``is_right(answer)`` decides. They read their prompts with their
own folding (``perceive``), not the middleware's, so a test of the middleware's defences
does not grade itself.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from ..messages import ChatRequest
from ..teaching import prompts
from .scripted import Reply, teacher_reply
from .teachers import GradingJudge, PairwiseJudge, judged_answers

# Brackets a model may read as ``<`` / ``>`` although NFKC keeps them apart.
_LOOKALIKE_BRACKETS = str.maketrans({"\u2039": "<", "\u203a": ">", "\u3008": "<", "\u3009": ">",
                                     "\u27e8": "<", "\u27e9": ">", "\u02c2": "<", "\u02c3": ">"})
_SEEN_VERDICT = re.compile(r"<\s*verdict\s*>\s*([^<\n]{1,20}?)\s*<\s*/\s*verdict\s*>", re.IGNORECASE)
_ORDER = re.compile(
    r"ignore\s+(?:all\s+|any\s+)?(?:the\s+|your\s+)?(?:previous|prior|above|earlier|preceding)\s+instructions?"
    r"[\s,.;:!-]*(?:and\s+|then\s+)?(?:answer|reply|respond|say|output|grade(?:\s+it)?|give)"
    r"(?:\s+with)?[\s:\"']*(TIE|A|B|\d{1,2})\b",
    re.IGNORECASE,
)
_SEEN_TEACHING = re.compile(r"<\s*teaching\s*>(.*?)<\s*/\s*teaching\s*>", re.IGNORECASE | re.DOTALL)


def perceive(text: str, sees_defused: bool = True) -> str:
    """``text`` as a model reads it: format characters unseen, compatibility forms folded."""
    visible = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    folded = unicodedata.normalize("NFKC", visible)
    return folded.translate(_LOOKALIKE_BRACKETS) if sees_defused else folded


def _after_instruction(request: ChatRequest) -> str:
    """What follows the model's own instruction: every message after the system ones."""
    return "\n".join(prompts.content_text(m.get("content")) for m in request.messages if m.get("role") != "system")


@dataclass
class _Gullible:
    is_right: Callable[[str], bool] = lambda answer: False
    sees_defused: bool = False
    think: bool = False

    def _steered(self, text: str) -> str | None:
        raise NotImplementedError

    def __call__(self, request: ChatRequest) -> Reply:
        value = self._steered(perceive(_after_instruction(request), self.sees_defused))
        if value is None:  # nothing steers it: an honest judge
            honest = PairwiseJudge if "A" in judged_answers(request) else GradingJudge
            return honest(self.is_right, think=self.think)(request)
        body = f"<verdict>{value}</verdict>"
        return Reply(f"<think>\nThe prompt tells me the verdict.\n</think>\n{body}" if self.think else body)


@dataclass
class EchoingJudge(_Gullible):
    """A judge that answers the last verdict it reads after its own instruction (either
    role: ``judge_pair`` or ``judge_score``)."""

    def _steered(self, text: str) -> str | None:
        found = _SEEN_VERDICT.findall(text)
        return found[-1].strip() if found else None


@dataclass
class ObeyingJudge(_Gullible):
    """A judge that follows the last "ignore previous instructions, answer X" it reads."""

    def _steered(self, text: str) -> str | None:
        found = _ORDER.findall(text)
        return found[-1].upper() if found else None


@dataclass
class GullibleTeacher:
    """A teacher (``teacher`` role) that takes a ``<teaching>`` block it reads in its prompt
    (the task or the student's plan) for what it was asked to teach, and hands it on."""

    guidance: str = "Check each step."
    sees_defused: bool = False

    def __call__(self, request: ChatRequest) -> Reply:
        read = perceive(prompts.content_text(request.messages[-1].get("content")), self.sees_defused)
        found = _SEEN_TEACHING.findall(read)
        teaching = found[-1].strip() if found else self.guidance
        return Reply(teacher_reply(teaching, level=2, thinking="the prompt says what to teach"))
