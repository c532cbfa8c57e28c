"""Doubles of real teachers and judges, with the habits real ones have.

``AtlasStyleTeacher`` writes the way ATLAS-8B-Thinking does when it reads the ``atlas``
protocol's prompt, not the way our prompts hope:

* it reasons first, in a Qwen3 ``<think>`` block long enough (``think_words``) that a small
  ``teacher_max_tokens`` cuts it off mid-thought (``ScriptedBackend`` enforces the cap);
* it may draft a ``<teaching>`` inside that reasoning (``draft_in_think``);
* its teaching is plain text; ``tags=True`` wraps it in ``<teaching>`` as the optimiser's
  seed prompt asks;
* ``template_opens_think``: the chat template opened the block, so the reply holds only
  ``</think>``; ``reasoning_field``: vLLM's reasoning parser moved the reasoning to a
  separate field and the content is the teaching alone;
* ``label``: it echoes the prompt's cue ("Adaptive teaching:") before the teaching;
* ``leak``: a sentence stating the answer, which RL on the published reward can teach.

``guidance`` is a string or a function of ``(question, approach)``.

``PairwiseJudge`` and ``GradingJudge`` stand for a teacher asked to judge: they read the
answers out of the judge prompt, decide with ``is_right(answer_text)`` and are right with
probability ``accuracy`` per call (a seeded coin, so a run can be reproduced). A thinking
judge (``think=True``) reasons before its verdict, as the ATLAS teachers would.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from ..messages import ChatRequest
from ..teaching import prompts
from ..teaching.protocols.atlas import TEACHER_INTRO
from .scripted import Reply

_FIELD = re.compile(r"Question: (?P<q>.*?)\n\nThe student's initial approach:\n(?P<a>.*?)\n\nBased on", re.DOTALL)
_FILLER = ("Let me re-check the arithmetic the student plans to do.",
           "I should not give away the answer, only the method.",
           "The question asks for one number at the end.")


_TAGGED = re.compile(r"<task_data>\n(?P<q>.*?)\n</task_data>.*?<student_plan>\n(?P<a>.*?)\n</student_plan>", re.DOTALL)


def atlas_prompt_parts(request: ChatRequest) -> tuple[str, str]:
    """The question and the student's approach from a teacher prompt of either protocol
    (an ATLAS teacher given the ``structured`` prompt still answers in its own style)."""
    text = "\n".join(prompts.content_text(m.get("content")) for m in request.messages)
    m = _FIELD.search(text) if TEACHER_INTRO in text else _TAGGED.search(text)
    if m is None:
        raise ValueError("not a teacher prompt of the teaching loop")
    return m.group("q"), m.group("a")


@dataclass
class AtlasStyleTeacher:
    """A script item (``ScriptedBackend({"teacher": AtlasStyleTeacher(...)})``); see above."""

    guidance: str | Callable[[str, str], str] = "Check each step of your plan against the question."
    think_words: int = 80
    tags: bool = False
    template_opens_think: bool = False
    reasoning_field: bool = False
    draft_in_think: bool = True
    label: bool = False
    leak: str | None = None

    def reasoning(self, question: str, approach: str) -> str:
        words = (f"Okay, the student has to answer: {question[:120]} Their plan says: {approach[:120]}").split()
        if self.draft_in_think:
            words += "Maybe: <teaching>just tell them the answer</teaching> no, that gives it away.".split()
        i = 0
        while len(words) < self.think_words:
            words += _FILLER[i % len(_FILLER)].split()
            i += 1
        return " ".join(words[: max(self.think_words, 1)])

    def __call__(self, request: ChatRequest) -> Reply:
        question, approach = atlas_prompt_parts(request)
        teaching = self.guidance(question, approach) if callable(self.guidance) else self.guidance
        if self.leak:
            teaching = f"{teaching} {self.leak}"
        if self.label:
            teaching = f"Adaptive teaching: {teaching}"
        if self.tags:
            teaching = f"<teaching>\n{teaching}\n</teaching>"
        thought = self.reasoning(question, approach)
        if self.reasoning_field:
            return Reply(teaching, reasoning=thought)
        opening = "" if self.template_opens_think else "<think>\n"
        return Reply(f"{opening}{thought}\n</think>\n\n{teaching}")


def _coin(*key: object) -> float:
    digest = hashlib.sha256(repr(key).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


# A judge prompt's blocks, with or without the per-call code in the tag (``prompts.py``):
# ``<answer_A_<code>>`` ... ``</answer_A_<code>>``; a block ends only at its own closing tag.
_BLOCK = {name: re.compile(rf"<answer_{name}(_[0-9a-f]+|)>\n(.*?)\n</answer_{name}\1>", re.DOTALL) for name in "AB"}
_ANSWER = re.compile(r"<answer(_[0-9a-f]+|)>\n(.*?)\n</answer\1>", re.DOTALL)
_CODE_LINE = re.compile(r"[^\n]*\bcode\b[^\n]*?([0-9a-f]{8,})\n\n", re.IGNORECASE)


def judged_answers(request: ChatRequest) -> dict[str, str]:
    """The answers a judge prompt holds, as the judge reads them: ``{"A": ..., "B": ...}``
    for a pairwise prompt, ``{"answer": ...}`` for a grading one (tests and doubles)."""
    text = prompts.content_text(request.messages[-1].get("content"))
    found = {k: m.group(2) for k in "AB" if (m := _BLOCK[k].search(text))}
    if not found and (m := _ANSWER.search(text)):
        found["answer"] = m.group(2)
    return found


def _without_code(text: str) -> str:
    """A judge prompt without its per-call code: what a seeded coin may depend on, so a run
    can be reproduced although every prompt carries a fresh code."""
    m = _CODE_LINE.match(text)
    return text if m is None else text[m.end():].replace("_" + m.group(1), "")


@dataclass
class _JudgeDouble:
    is_right: Callable[[str], bool]
    accuracy: float = 1.0
    think: bool = False
    seed: int = 0

    def _read(self, request: ChatRequest) -> tuple[str, bool]:
        """The judge prompt's text, and whether this call is one of the judge's mistakes."""
        text = prompts.content_text(request.messages[-1].get("content"))
        return text, _coin(self.seed, _without_code(text)) >= self.accuracy

    def _reply(self, verdict: object) -> Reply:
        body = f"<verdict>{verdict}</verdict>"
        return Reply(f"<think>\nI compare the final answers with my own solution.\n</think>\n{body}"
                     if self.think else body)


@dataclass
class PairwiseJudge(_JudgeDouble):
    """A teacher judging two answers (script item for the ``judge_pair`` role)."""

    def __call__(self, request: ChatRequest) -> Reply:
        text, mistaken = self._read(request)
        a, b = (m.group(2) if (m := _BLOCK[k].search(text)) else "" for k in "AB")
        right_a, right_b = self.is_right(a), self.is_right(b)
        truth = "A" if right_a and not right_b else "B" if right_b and not right_a else "TIE"
        if mistaken:  # a wrong call: the other answer, or a tie
            truth = {"A": "B", "B": "A", "TIE": "A"}[truth]
        return self._reply(truth)


@dataclass
class GradingJudge(_JudgeDouble):
    """A teacher grading one answer 0-10 (script item for the ``judge_score`` role)."""

    def __call__(self, request: ChatRequest) -> Reply:
        text, mistaken = self._read(request)
        m = _ANSWER.search(text)
        right = self.is_right(m.group(2) if m else "") != mistaken
        return self._reply(10 if right else 0)
