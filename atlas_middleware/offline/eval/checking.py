"""Grading one student answer against a problem's reference.

A response is *completed* when it finished within the token cap (its finish reason is not
``length``) and states an answer that can be extracted. A response cut off by the cap is
neither completed nor correct, even when the last number in the cut text happens to match:
the published completion figures count such answers as failures, and a "last number"
fallback on unfinished reasoning would otherwise award lucky guesses.
"""

from __future__ import annotations

from pydantic import BaseModel

from ...teaching.answers import answers_equivalent, extract_answer, extract_choice
from .datasets import Problem


class Grade(BaseModel):
    answer: str | None
    completed: bool
    correct: bool


def grade(problem: Problem, text: str | None, finish_reason: str | None) -> Grade:
    if problem.kind == "choice":
        answer = extract_choice(text, "".join(problem.choices) or "ABCDE")
    else:
        answer = extract_answer(text)
    completed = answer is not None and finish_reason != "length"
    correct = completed and answers_equivalent(answer, problem.answer)
    return Grade(answer=answer, completed=completed, correct=correct)
