"""Drive the real middleware over a data set: every (problem, sample) is one ``Atlas`` call.

The evaluation never re-implements the teaching loop. Each sample is one
``atlas.acompletion`` with ``keep_answers`` on, which returns the delivered answer and keeps
the raw guided and baseline texts on the report. Under ``strict`` that one call measures all
three arms; under a policy that measured no baseline on a call (``verify`` that passed,
``audit`` unsampled, ``off``), the student alone is measured by one extra opted-out call.

Samples run ``concurrency`` at a time; each finished one is appended to ``results.jsonl``
before it counts, so a rerun with the same ``--out`` continues where a crash stopped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ...errors import MissingExtraError
from ...learning.outcomes import from_grades
from ...report import CallReport, Reason
from ...usage import ROLES, Usage
from .checking import grade
from .datasets import Problem
from .records import Arm, ResultsFile, SampleRecord, check_manifest

# Settings that change what a sample measures; a resumed run must keep them.
MUST_MATCH = ("dataset", "student", "teacher", "policy", "seed", "max_tokens", "temperature")


class EvalSettings(BaseModel):
    dataset: str
    student: str
    teacher: str | None = None
    policy: str = "strict"
    samples: int = Field(default=32, ge=1)
    seed: int = 42
    limit: int | None = Field(default=None, ge=1)
    concurrency: int = Field(default=4, ge=1)
    max_tokens: int = Field(default=512, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    """None: greedy (0) for one sample, 0.7 for several (32 greedy samples would be equal)."""
    student_params: dict[str, Any] = Field(default_factory=dict)
    """Extra arguments of every student call (``api_base``, ...)."""

    def resolved_temperature(self) -> float:
        if self.temperature is not None:
            return self.temperature
        return 0.0 if self.samples == 1 else 0.7

    def seed_of(self, sample: int) -> int:
        """Sample ``s`` of every problem uses ``seed + s``: the arms are paired by seed."""
        return self.seed + sample

    def manifest(self) -> dict[str, Any]:
        data = self.model_dump(exclude={"student_params", "concurrency"})
        data["temperature"] = self.resolved_temperature()
        data["student_api_base"] = self.student_params.get("api_base")
        return data


def _usage(u: Usage) -> dict[str, int]:
    return {"prompt": u.prompt_tokens, "completion": u.completion_tokens, "calls": u.calls}


def _arm(problem: Problem, text: str | None, finish: str | None, usage: Usage, latency: float) -> Arm:
    g = grade(problem, text, finish)
    return Arm(text=text, answer=g.answer, finish_reason=finish, completed=g.completed, correct=g.correct,
               prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
               latency_ms=round(latency, 3))


def _delivered_text(response: Any) -> tuple[str | None, str | None]:
    """Content and finish reason of what ``Atlas`` returned (LiteLLM or OpenAI-shaped)."""
    choice = response.choices[0]
    return choice.message.content, choice.finish_reason


class _Alone(BaseModel):
    text: str | None = None
    finish: str | None = None
    usage: Usage = Usage()
    latency: float = 0.0
    error: str | None = None


async def _alone_call(atlas: Any, settings: EvalSettings, messages: list[dict[str, Any]], params: dict[str, Any]) -> _Alone:
    """The student alone, through the middleware with teaching switched off."""
    try:
        response = await atlas.acompletion(
            model=settings.student, messages=messages, atlas={"teach": False, "keep_answers": True}, **params
        )
    except Exception as exc:  # the student's own failure: recorded, the run goes on
        return _Alone(error=f"{type(exc).__name__}: {exc}"[:500])
    report: CallReport = response.atlas
    text, finish = _delivered_text(response)
    return _Alone(text=text, finish=finish, usage=report.usage.baseline,
                  latency=report.latency_ms.get("baseline", 0.0))


async def evaluate_sample(atlas: Any, problem: Problem, sample: int, settings: EvalSettings) -> SampleRecord:
    """One problem, one sample: student alone, guided and delivered, graded and costed."""
    messages = [{"role": "user", "content": problem.prompt()}]
    seed = settings.seed_of(sample)
    params = {**settings.student_params, "max_tokens": settings.max_tokens,
              "temperature": settings.resolved_temperature(), "seed": seed}
    base: dict[str, Any] = {"problem_id": problem.id, "sample": sample, "seed": seed,
                            "difficulty": problem.difficulty, "gold": problem.answer}
    # A learning gate learns from the graded answers below, not from the call's comparison.
    learning = bool(getattr(getattr(atlas, "gate", None), "active", False))
    try:
        response = await atlas.acompletion(
            model=settings.student, messages=messages, atlas={"keep_answers": True, "learn": not learning}, **params
        )
    except Exception as exc:  # the student failed on every path: a failed sample, not a crash
        failed = Arm(error=f"{type(exc).__name__}: {exc}"[:500])
        return SampleRecord(**base, alone=failed, guided=failed, delivered=failed, reason="student_error",
                            errors=[failed.error or ""])
    report: CallReport = response.atlas
    kept = report.answers or {}
    lat = report.latency_ms

    alone_separate = "baseline" not in kept
    if alone_separate:
        alone = await _alone_call(atlas, settings, messages, params)
    else:
        alone = _Alone(text=kept["baseline"].content, finish=kept["baseline"].finish_reason,
                       usage=report.usage.baseline, latency=lat.get("baseline", 0.0))
    alone_arm = _arm(problem, alone.text, alone.finish, alone.usage, alone.latency)
    alone_arm.error = alone.error

    teaching_ms = lat.get("probe", 0.0) + lat.get("teacher", 0.0)
    if "guided" in kept:
        guided_arm = _arm(problem, kept["guided"].content, kept["guided"].finish_reason,
                          report.usage.guided, teaching_ms + lat.get("guided", 0.0))
    else:  # no guidance was given: teacher + student answered as the student alone did
        guided_arm = alone_arm.model_copy(update={"latency_ms": round(teaching_ms + alone.latency, 3)})

    if learning:
        # Teaching ran (guided, or the teacher saw nothing to add): the grades say what it did.
        ran = "guided" in kept or report.reason in (Reason.STRONG_STUDENT, Reason.NO_GUIDANCE)
        await atlas.alearn(report, from_grades(guided_arm.correct, alone_arm.correct) if ran else None)

    text, finish = _delivered_text(response)
    role_usage = report.usage.guided if report.decision == "guided" else report.usage.baseline
    delivered_arm = _arm(problem, text, finish, role_usage, lat.get("total", 0.0))

    return SampleRecord(
        **base, call_id=report.call_id, alone=alone_arm, guided=guided_arm, delivered=delivered_arm,
        taught="guided" in kept, guidance_leak=report.guidance_leak, decision=report.decision,
        reason=report.reason.value,
        usage={role: _usage(getattr(report.usage, role)) for role in ROLES},
        alone_separate=alone_separate,
        spent_tokens=report.usage.total().total_tokens,
        alone_tokens=alone.usage.total_tokens,
        teaching_tokens=report.usage.probe.completion_tokens + report.usage.teacher.completion_tokens,
        latency_ms={**lat, **({"alone": alone.latency} if alone_separate else {})},
        errors=[f"{e.role}: {e.type}: {e.message}" for e in report.errors]
        + ([f"alone: {alone.error}"] if alone.error else []),
    )


class _Progress:
    """A tqdm bar with an ETA, or nothing (tests, non-interactive use)."""

    def __init__(self, enabled: bool, total: int, initial: int, desc: str) -> None:
        self.bar: Any = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError as exc:
                raise MissingExtraError("the evaluation's progress bar", "eval", "tqdm") from exc
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="sample", dynamic_ncols=True)

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


async def run_samples(
    atlas: Any, problems: list[Problem], settings: EvalSettings, out: Path, *, progress: bool = True
) -> ResultsFile:
    """Evaluate every sample not already in ``out/results.jsonl``; return the whole file."""
    check_manifest(out / "run.json", settings.manifest(), MUST_MATCH)
    results = ResultsFile(out / "results.jsonl")
    keys = [(p, s) for p in problems for s in range(settings.samples)]
    todo = [(p, s) for p, s in keys if (p.id, s) not in results]
    bar = _Progress(progress, len(keys), len(keys) - len(todo), f"{settings.dataset} ({settings.policy})")
    pending: Iterator[tuple[Problem, int]] = iter(todo)

    async def worker() -> None:
        # Workers share one iterator: each takes the next sample when it is free, so at
        # most ``concurrency`` samples are in flight.
        for problem, sample in pending:
            record = await evaluate_sample(atlas, problem, sample, settings)
            results.append(record)
            bar.update()

    try:
        await asyncio.gather(*(worker() for _ in range(min(settings.concurrency, len(todo)))))
    finally:
        bar.close()
    return results
