"""Resumable runs: kill a real evaluation process, rerun, and count every sample exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from atlas_middleware import Atlas
from atlas_middleware.errors import ConfigError
from atlas_middleware.offline.eval import EvalSettings, Problem, ResultsFile, aevaluate
from atlas_middleware.offline.eval.records import Arm, SampleRecord
from atlas_middleware.testing import ScriptedBackend, teacher_reply

PROBLEMS = [Problem(id=f"q{i}", question=f"What is {i} + {i}?", answer=str(2 * i)) for i in range(6)]
SAMPLES = 3
TOTAL = len(PROBLEMS) * SAMPLES

# The child process: the same evaluation, slowed down so that it can be killed midway.
CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from atlas_middleware import Atlas
    from atlas_middleware.offline.eval import EvalSettings, Problem, evaluate
    from atlas_middleware.testing import Reply, ScriptedBackend, teacher_reply

    problems = [Problem(id=f"q{i}", question=f"What is {i} + {i}?", answer=str(2 * i)) for i in range(6)]
    student = ScriptedBackend({"probe": "I add.", "baseline": Reply("The answer is 0.", delay=0.15),
                               "guided": Reply("The answer is 0.", delay=0.15)})
    teacher = ScriptedBackend({"teacher": teacher_reply("Add.")})
    atlas = Atlas(student_backend=student, teacher_backend=teacher, ledger="none")
    settings = EvalSettings(dataset="resume", student="s", samples=3, concurrency=2)
    evaluate(atlas, settings, Path(sys.argv[1]), problems=problems, progress=False, plots=False)
    """
)


def _settings(**kw: object) -> EvalSettings:
    return EvalSettings(**{"dataset": "resume", "student": "s", "samples": SAMPLES, "concurrency": 2, **kw})  # type: ignore[arg-type]


def _atlas() -> tuple[Atlas, ScriptedBackend]:
    student = ScriptedBackend({"probe": "I add.", "baseline": "The answer is 0.", "guided": "The answer is 0."})
    teacher = ScriptedBackend({"teacher": teacher_reply("Add.")})
    return Atlas(student_backend=student, teacher_backend=teacher, ledger="none"), student


def _lines(path: Path) -> list[str]:
    return [x for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.slow
async def test_killed_run_resumes_without_double_counting(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    out = tmp_path / "out"
    results = out / "results.jsonl"
    child = subprocess.Popen([sys.executable, str(script), str(out)], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if results.exists() and len(_lines(results)) >= 4:
                break
            if child.poll() is not None:
                pytest.fail(f"the child ended early: {child.stderr.read().decode() if child.stderr else ''}")
            time.sleep(0.02)
        else:
            pytest.fail("the child wrote no results in time")
        os.kill(child.pid, signal.SIGKILL)  # no cleanup, no flush: a crash
        child.wait(timeout=10)
    finally:
        if child.poll() is None:
            child.kill()
        if child.stderr:
            child.stderr.close()
    done = len(_lines(results))
    assert 4 <= done < TOTAL, "the kill must land mid-run"
    # The process may also die in the middle of a write: simulate a torn last line.
    with results.open("a") as fh:
        fh.write('{"problem_id": "q5", "sample": 2, "se')

    atlas, student = _atlas()
    out_metrics = await aevaluate(atlas, _settings(), out, problems=PROBLEMS, progress=False, plots=False)

    # Only the missing samples were run again, each once; the torn line was dropped.
    assert student.roles().count("baseline") == TOTAL - done
    lines = _lines(results)
    keys = [(json.loads(x)["problem_id"], json.loads(x)["sample"]) for x in lines]
    assert len(lines) == TOTAL and len(set(keys)) == TOTAL
    assert out_metrics.metrics.overall.samples == TOTAL
    assert out_metrics.metrics.overall.problems == len(PROBLEMS)

    # A third run finds nothing to do.
    atlas2, student2 = _atlas()
    await aevaluate(atlas2, _settings(), out, problems=PROBLEMS, progress=False, plots=False)
    assert student2.calls == [] and len(_lines(results)) == TOTAL


def _record(pid: str, sample: int) -> SampleRecord:
    arm = Arm(text="The answer is 0.", answer="0", completed=True, correct=pid == "q0")
    return SampleRecord(problem_id=pid, sample=sample, seed=42 + sample, gold="0", alone=arm, guided=arm,
                        delivered=arm)


def test_duplicate_lines_count_once_and_appends_are_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    line = _record("q0", 0).model_dump_json()
    path.write_text(line + "\n" + line + "\n" + _record("q1", 0).model_dump_json() + "\n")
    results = ResultsFile(path)
    assert len(results) == 2 and results.duplicates == 1
    assert results.append(_record("q0", 0)) is False  # already there: nothing written
    assert results.append(_record("q2", 1)) is True
    assert len(_lines(path)) == 4 and ("q2", 1) in ResultsFile(path)


def test_a_corrupt_line_in_the_middle_is_an_error_not_a_silent_skip(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    path.write_text("not json\n" + _record("q0", 0).model_dump_json() + "\n")
    with pytest.raises(ConfigError, match="line 1"):
        ResultsFile(path)


async def test_a_folder_holding_another_run_is_refused(tmp_path: Path) -> None:
    atlas, _ = _atlas()
    await aevaluate(atlas, _settings(), tmp_path, problems=PROBLEMS[:1], progress=False, plots=False)
    with pytest.raises(ConfigError, match="seed"):
        await aevaluate(atlas, _settings(seed=1), tmp_path, problems=PROBLEMS[:1], progress=False, plots=False)
    # More samples or more problems extend the same run; only the new ones are evaluated.
    atlas2, student2 = _atlas()
    more = EvalSettings(dataset="resume", student="s", samples=SAMPLES + 1)
    out = await aevaluate(atlas2, more, tmp_path, problems=PROBLEMS[:2], progress=False, plots=False)
    assert student2.roles().count("baseline") == 2 * (SAMPLES + 1) - SAMPLES
    assert out.metrics.overall.samples == 2 * (SAMPLES + 1)


async def test_concurrency_is_bounded(tmp_path: Path) -> None:
    in_flight = peak = 0

    class Counting(ScriptedBackend):
        async def acomplete(self, request):  # type: ignore[no-untyped-def]
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                await asyncio.sleep(0.01)
                return await super().acomplete(request)
            finally:
                in_flight -= 1

    student = Counting({"probe": "p", "baseline": "The answer is 0.", "guided": "The answer is 0."})
    atlas = Atlas(student_backend=student, teacher_backend=ScriptedBackend({"teacher": teacher_reply()}),
                  ledger="none")
    await aevaluate(atlas, _settings(concurrency=2), tmp_path, problems=PROBLEMS, progress=False, plots=False)
    # Each sample has at most 2 student calls in flight at once (baseline and probe/guided).
    assert 2 < peak <= 2 * 2
    assert len(student.calls) == TOTAL * 3


def test_student_failure_is_a_failed_sample_not_a_crash(tmp_path: Path) -> None:
    from atlas_middleware.offline.eval import evaluate

    student = ScriptedBackend({"probe": RuntimeError("down"), "baseline": RuntimeError("down")})
    atlas = Atlas(student_backend=student, teacher_backend=ScriptedBackend(), ledger="none")
    out = evaluate(atlas, _settings(), tmp_path, problems=PROBLEMS[:1], progress=False, plots=False)
    assert out.metrics.overall.errors == SAMPLES
    assert out.metrics.overall.student_alone.accuracy.mean == 0.0
