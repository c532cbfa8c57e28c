"""Judges decide between the guided and the baseline answer (pairwise) or grade one answer.

A judge is a small object with two generator methods, driven by the teaching flow like the
rest of the loop, so a judge that needs model calls (the teacher judge) yields them and a
judge that needs none (the answer judge) returns at once::

    compare(task, guided, baseline) -> Verdict   # which answer is better
    score(task, answer) -> float                 # 0..1, passes when >= threshold

Built in:

* ``teacher`` (what ``auto``, the default, means): the teacher model as a pairwise judge,
  asked in both orders concurrently so a position bias cannot pick the winner. Verdicts
  that change with the order say nothing (``undecided``: the baseline). An answer cut at
  its token cap loses to a complete one without a model call.
* ``answer``: extracted final answers and tool calls only, no model call. It can tell a
  complete answer from a broken one, never a right one from a wrong one: two different
  complete answers are ``undecided`` and the baseline is delivered.
* ``package.module:callable``: any ``(messages: list[dict], answer: str) -> float`` scoring
  one answer, higher is better.

A judge that raises or returns garbage raises ``JudgeError``; the flow then delivers the
baseline. Resolution errors (bad import path) raise ``ConfigError`` at construction.

The judges that read the answers' text (``teacher`` and callables) take no word about an
answer that talks to the judge (``markup.aimed_at_judge``: verdict-like markup, a judge
prompt's delimiter, "ignore previous instructions"): a comparison where either answer does
is ``undecided`` and such an answer is not graded, without a model call, since no verdict
about it could count. A decisive verdict between two answers that state the same final
answer is read as a tie, and a judge that gives two different verdicts gives none
(docs/policies.md, "Answers that talk to the judge").
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from .._imports import import_object
from ..errors import ConfigError, JudgeError
from ..messages import CallContext, ChatRequest, ChatResponse, Judging
from . import markup, prompts
from .answers import extract_answer, same_final_answer
from .commands import BlockingResult, CallResult, Command, ModelCall, RunBlocking, Start, Wait
from .parse import split_reasoning

Winner = Literal["guided", "baseline", "tie", "undecided"]
JudgeGen = Generator[Command, Any, Any]


@dataclass
class Verdict:
    winner: Winner
    scores: dict[str, float] = field(default_factory=dict)
    detail: str = ""


@dataclass(frozen=True)
class Task:
    """What a judge sees of the request."""

    messages: list[dict[str, Any]]
    params: dict[str, Any]

    def text(self, max_chars: int = 12000) -> str:
        return prompts.render_conversation(self.messages, max_chars)


@runtime_checkable
class Judge(Protocol):
    name: str
    threshold: float

    def compare(self, task: Task, guided: ChatResponse, baseline: ChatResponse) -> JudgeGen: ...

    def score(self, task: Task, answer: ChatResponse) -> JudgeGen: ...


def tool_calls_valid(response: ChatResponse, params: dict[str, Any]) -> bool:
    """Every tool call names an offered tool and carries JSON-object arguments."""
    offered = {
        t.get("function", {}).get("name")
        for t in params.get("tools") or []
        if isinstance(t, dict)
    }
    for call in response.tool_calls:
        if offered and call.name not in offered:
            return False
        try:
            if not isinstance(call.parsed_arguments(), dict):
                return False
        except ValueError:
            return False
    return True


def _well_formed(task: Task, r: ChatResponse) -> bool:
    if r.truncated:
        return False
    if r.tool_calls:
        return tool_calls_valid(r, task.params)
    return extract_answer(r.content) is not None


class AnswerJudge:
    """Compares extracted answers only; prefers the well-formed answer, else the baseline."""

    name = "answer"
    threshold = 0.5

    def compare(self, task: Task, guided: ChatResponse, baseline: ChatResponse) -> JudgeGen:
        g, b = _well_formed(task, guided), _well_formed(task, baseline)
        scores = {"guided": float(g), "baseline": float(b)}
        if g and not b:
            return Verdict("guided", scores, "only the guided answer is complete")
        if b and not g:
            return Verdict("baseline", scores, "only the baseline answer is complete")
        # Both complete but different (or both broken): nothing here says which is right.
        return Verdict("undecided", scores, "the answers differ; extraction cannot tell which is right")
        yield  # pragma: no cover - makes this a generator

    def score(self, task: Task, answer: ChatResponse) -> JudgeGen:
        return 1.0 if _well_formed(task, answer) else 0.0
        yield  # pragma: no cover


# Possessive and unpadded (the caller strips): a lazy group between two ``\s*`` rereads the
# spaces ahead at every step, quadratic in a long verdict a prompt can ask for.
_VERDICT = re.compile(r"<verdict>([^<]++)</verdict>", re.IGNORECASE)


def _verdict_text(result: CallResult) -> str:
    if not result.ok or result.response is None:
        raise JudgeError(f"judge call failed: {result.error!r}")
    # A thinking teacher drafts verdicts in its reasoning: only what follows it counts. Its
    # tags are read however it wrote them (``＜verdict＞`` is a verdict).
    _, text, unclosed = split_reasoning(markup.canonical(result.response.text))
    if result.response.truncated and not _VERDICT.search(text):
        raise JudgeError("the judge's reply hit its token cap before a verdict")
    if unclosed:
        raise JudgeError("the judge's reply ended inside its reasoning")
    found = [markup.fold(v).strip().upper() for v in _VERDICT.findall(text)]
    if not found:
        raise JudgeError("the judge's answer has no <verdict>")
    if len(set(found)) > 1:  # it said both: which one it meant is anyone's guess
        raise JudgeError(f"the judge gave conflicting verdicts: {', '.join(found)}")
    return found[-1]


def _said(r: ChatResponse) -> str:
    """All of an answer a judge reads: its text and its tool calls."""
    return (r.content or "") + "".join(f"\n[calls tool {t.name}({t.arguments})]" for t in r.tool_calls)


def _talks_to_judge(**answers: ChatResponse) -> str | None:
    """Why no verdict about these answers can count, or None (module docstring)."""
    found = {role: what for role, r in answers.items() if (what := markup.aimed_at_judge(_said(r)))}
    if not found:
        return None
    said = " and ".join(f"the {role} answer carries {what}" for role, what in found.items())
    return f"{said}, aimed at the judge: no verdict can count"


def _weigh(verdict: Verdict, guided: ChatResponse, baseline: ChatResponse) -> Verdict:
    """A decisive verdict between answers that state the same final answer (or make the
    same tool calls) is a preference of style: a tie, whatever the judge was told."""
    if verdict.winner not in ("guided", "baseline"):
        return verdict
    if guided.tool_calls or baseline.tool_calls:
        same = sorted((t.name, t.arguments) for t in guided.tool_calls) == sorted(
            (t.name, t.arguments) for t in baseline.tool_calls)
    else:
        same = same_final_answer(guided.content, baseline.content)
    if not same:
        return verdict
    detail = "; ".join(filter(None, (verdict.detail, "both answers state the same final answer: a tie")))
    return Verdict("tie", verdict.scores, detail)


class TeacherJudge:
    """The teacher as judge: pairwise in both orders, or a 0-10 grade of one answer.

    ``max_tokens`` must leave a thinking teacher room to reason before its verdict; the
    ``Atlas`` client gives it the teacher's own cap.
    """

    name = "teacher"

    def __init__(
        self,
        model: str,
        timeout: float | None = None,
        max_tokens: int = 1024,
        threshold: float = 0.7,
        context_chars: int = 12000,
        params: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.timeout = timeout
        self.max_tokens = max_tokens
        self.threshold = threshold
        self.context_chars = context_chars
        # LiteLLM params of every judge call (``teacher.params`` less prices), as the teacher's calls have.
        self.params = dict(params or {})

    def _call(self, messages: list[dict[str, Any]], judging: Judging) -> ModelCall:
        params: dict[str, Any] = {**self.params, "max_tokens": self.max_tokens}
        if self.timeout is not None:
            params["timeout"] = self.timeout  # the HTTP client gives up with the driver
        req = ChatRequest(model=self.model, messages=messages, params=params,
                          context=CallContext(role="judge", judging=judging))
        return ModelCall(role="judge", target="teacher", request=req, timeout=self.timeout)

    def compare(self, task: Task, guided: ChatResponse, baseline: ChatResponse) -> JudgeGen:
        if guided.truncated != baseline.truncated:  # a cut-off answer loses to a complete one
            winner: Winner = "baseline" if guided.truncated else "guided"
            return Verdict(winner, {}, f"only the {winner} answer is complete")
        if aimed := _talks_to_judge(guided=guided, baseline=baseline):
            return Verdict("undecided", {}, aimed)
        text = task.text(self.context_chars)
        h1 = yield Start(self._call(prompts.pairwise_messages(text, guided, baseline), "pairwise"))
        h2 = yield Start(self._call(prompts.pairwise_messages(text, baseline, guided), "pairwise"))
        r1, r2 = yield Wait((h1, h2))
        first, second = _verdict_text(r1), _verdict_text(r2)
        mapping1 = {"A": "guided", "B": "baseline", "TIE": "tie"}
        mapping2 = {"A": "baseline", "B": "guided", "TIE": "tie"}
        if first not in mapping1 or second not in mapping2:
            raise JudgeError(f"unexpected verdicts {first!r}, {second!r}")
        v1, v2 = mapping1[first], mapping2[second]
        detail = f"order guided-first: {v1}; order baseline-first: {v2}"
        if v1 == v2:
            return _weigh(Verdict(v1, {}, detail), guided, baseline)  # type: ignore[arg-type]
        return Verdict("undecided", {}, detail + " (the verdict follows the order: no evidence)")

    def score(self, task: Task, answer: ChatResponse) -> JudgeGen:
        if aimed := _talks_to_judge(guided=answer):
            raise JudgeError(f"not graded: {aimed}")
        h = yield Start(self._call(prompts.score_messages(task.text(self.context_chars), answer), "score"))
        (r,) = yield Wait((h,))
        raw = _verdict_text(r)
        try:
            value = float(raw)
        except ValueError:
            raise JudgeError(f"the judge's grade is not a number: {raw!r}") from None
        if not 0 <= value <= 10:
            raise JudgeError(f"the judge's grade is out of range: {value}")
        return value / 10.0


ScoreFn = Callable[[list[dict[str, Any]], str], float]


def _checked_score(fn: ScoreFn, messages: list[dict[str, Any]], answer: str) -> float:
    value = fn(messages, answer)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise JudgeError(f"the judge returned {value!r}, not a finite number")
    return float(value)


class CallableJudge:
    """Wraps ``(messages, answer) -> float``; run off the event loop, checked for garbage."""

    def __init__(self, fn: ScoreFn, name: str | None = None, threshold: float = 0.5) -> None:
        if not callable(fn):
            raise ConfigError(f"judge {fn!r} is not callable")
        self.fn = fn
        self.name: str = name or str(getattr(fn, "__qualname__", "callable"))
        self.threshold = threshold

    def _score(self, task: Task, r: ChatResponse) -> JudgeGen:
        answer = r.text + "".join(f"\n[calls tool {t.name}({t.arguments})]" for t in r.tool_calls)
        out: BlockingResult = yield RunBlocking(_checked_score, (self.fn, task.messages, answer))
        if out.error is not None:
            if isinstance(out.error, JudgeError):
                raise out.error
            raise JudgeError(f"the judge raised {type(out.error).__name__}: {out.error}")
        return float(out.value)

    def compare(self, task: Task, guided: ChatResponse, baseline: ChatResponse) -> JudgeGen:
        if aimed := _talks_to_judge(guided=guided, baseline=baseline):
            return Verdict("undecided", {}, aimed)
        g = yield from self._score(task, guided)
        b = yield from self._score(task, baseline)
        scores = {"guided": g, "baseline": b}
        winner: Winner = "guided" if g > b else "baseline" if b > g else "tie"
        return _weigh(Verdict(winner, scores), guided, baseline)

    def score(self, task: Task, answer: ChatResponse) -> JudgeGen:
        if aimed := _talks_to_judge(guided=answer):
            raise JudgeError(f"not graded: {aimed}")
        return (yield from self._score(task, answer))


def resolve_judge(
    spec: str | Judge | ScoreFn | None, *, teacher_model: str | None, timeout: float | None,
    max_tokens: int = 1024, params: dict[str, Any] | None = None, context_chars: int = 12000,
    threshold: float = 0.7,
) -> Judge:
    """Turn a judge setting into a judge; raise ``ConfigError`` for anything unusable.

    ``auto`` (and None) is the teacher judge when there is a teacher, else the answer judge.
    The teacher judge calls the teacher as the flow does: with its ``params`` (the config's
    ``teacher.params`` less prices) and the conversation cut to ``context_chars``.
    """
    if spec in (None, "auto"):
        spec = "teacher" if teacher_model else "answer"
    if spec == "answer":
        return AnswerJudge()
    if spec == "teacher":
        if not teacher_model:
            raise ConfigError("judge 'teacher' needs a teacher model")
        return TeacherJudge(teacher_model, timeout=timeout, max_tokens=max_tokens, threshold=threshold,
                            context_chars=context_chars, params=params)
    if isinstance(spec, Judge):
        return spec
    if callable(spec):
        return CallableJudge(spec)
    if isinstance(spec, str):
        fn = import_object(
            spec, "judge", f"unknown judge {spec!r}: use 'auto', 'teacher', 'answer' or 'package.module:callable'")
        if isinstance(fn, Judge):
            return fn
        return CallableJudge(fn, name=spec)
    raise ConfigError(f"judge must be a name, an import path or a callable, not {spec!r}")
