"""The evaluation's figures, end to end through the real ``Atlas`` with scripted models.

Scenario (strict policy, the default ``answer`` judge, 4 problems x 2 samples), with token
counts fixed per role: probe 10+5, teacher 100+30, guided 25+20, baseline 20+40
(prompt+completion); the truncated baseline of p4/sample 0 spends 20+60.

    problem gold  student alone              guided        delivered (why)
    p1      10    right, right               right, right  guided, guided (agree: cheaper)
    p2      7     wrong (8), wrong           right, right  baseline x2 (judge: both complete)
    p3      3     right, right               wrong (4) x2  baseline x2 (judge)
    p4      5     cut off (s0), right (s1)   right, right  guided (only complete), guided (agree)

Worked by hand:
* accuracy per problem: guided 1, 1, 0, 1 -> 0.75; alone 1, 0, 1, 0.5 -> 0.625;
  delivered 1, 0, 1, 1 -> 0.75. Gain differences 0, 1, -1, 0.5: mean 0.125,
  sd sqrt(2.1875/3) = 0.853913, se 0.426956, t = 0.292770 (df 3).
* completion: guided 8/8, alone 7/8, delivered 8/8.
* degraded raw: p3 x2 -> NDR 1 - 2/8 = 0.75; delivered: none -> 1.0.
  improved raw: p2 x2 + p4/s0 = 3 -> 0.375; delivered: p4/s0 -> 0.125.
* response tokens: guided 20; alone (7*40 + 60)/8 = 42.5; reduction 1 - 20/42.5 = 9/17.
* spent per sample 15+130+45+60 = 250 (270 for p4/s0): mean 2020/8 = 252.5; alone mean
  (7*60 + 80)/8 = 62.5; net +190; net reduction 1 - 252.5/62.5 = -3.04.
* teaching tokens 5 + 30 = 35; TES = 0.125 x 1.0 / 0.035 = 25/7.
* tertiles of the alone pass rate (1, 0, 1, 0.5), ranked p1, p3, p4, p2: easy {p1, p3}
  (gain 0.5 - 1 = -0.5), medium {p4} (+0.5), hard {p2} (+1): max gain +1 (hard).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from atlas_middleware import Atlas
from atlas_middleware.messages import ChatRequest
from atlas_middleware.offline.eval import EvalSettings, Problem, aevaluate, compute_metrics
from atlas_middleware.offline.eval.metrics import difficulty_labels
from atlas_middleware.offline.eval.records import Arm, SampleRecord
from atlas_middleware.testing import Reply, ScriptedBackend, teacher_reply

PROBLEMS = [
    Problem(id="p1", question="Q1: ten?", answer="10"),
    Problem(id="p2", question="Q2: seven?", answer="7"),
    Problem(id="p3", question="Q3: three?", answer="3"),
    Problem(id="p4", question="Q4: five?", answer="5"),
]


def _which(request: ChatRequest) -> tuple[str, int]:
    text = " ".join(str(m.get("content")) for m in request.messages)
    problem = next(p.id for p in PROBLEMS if p.question in text)
    return problem, int(request.params["seed"]) - 42


def _baseline(request: ChatRequest) -> Reply:
    problem, sample = _which(request)
    if problem == "p4" and sample == 0:
        return Reply("Let me think step by step about the", prompt_tokens=20, completion_tokens=60,
                     finish_reason="length")
    text = {"p1": "The answer is 10.", "p2": "The answer is 8.", "p3": "The answer is 3.",
            "p4": "The answer is 5."}[problem]
    return Reply(text, prompt_tokens=20, completion_tokens=40)


def _guided(request: ChatRequest) -> Reply:
    problem, _ = _which(request)
    text = {"p1": "The answer is $10.", "p2": "The answer is 7.", "p3": "The answer is 4.",
            "p4": "The answer is 5."}[problem]
    return Reply(text, prompt_tokens=25, completion_tokens=20)


def scripted_atlas(**kwargs: Any) -> tuple[Atlas, ScriptedBackend]:
    student = ScriptedBackend({
        "probe": Reply("I will add.", prompt_tokens=10, completion_tokens=5),
        "baseline": _baseline,
        "guided": _guided,
    })
    teacher = ScriptedBackend({"teacher": Reply(teacher_reply("Check the arithmetic."), prompt_tokens=100,
                                                completion_tokens=30)})
    kwargs.setdefault("judge", "answer")  # the hand-computed figures below count no judge calls
    return Atlas(student_backend=student, teacher_backend=teacher, ledger="none", **kwargs), student


def p_df3(t: float) -> float:
    theta = math.atan(t / math.sqrt(3))
    return 1 - (2 / math.pi) * (theta + math.sin(theta) * math.cos(theta))


async def test_strict_run_gives_the_hand_computed_figures(tmp_path: Path) -> None:
    atlas, student = scripted_atlas()
    settings = EvalSettings(dataset="hand", student="student-model", samples=2, concurrency=3)
    out = await aevaluate(atlas, settings, tmp_path, problems=PROBLEMS, progress=False)
    m = out.metrics.overall

    assert (m.problems, m.samples) == (4, 8)
    assert m.teacher_student.accuracy.mean == pytest.approx(0.75)
    assert m.student_alone.accuracy.mean == pytest.approx(0.625)
    assert m.delivered.accuracy.mean == pytest.approx(0.75)
    assert m.gain.mean_diff == pytest.approx(0.125)
    assert m.gain.t == pytest.approx(0.125 / (math.sqrt(2.1875 / 3) / 2))
    assert m.gain.p_value == pytest.approx(p_df3(0.29277), abs=1e-5)
    # 0.125 -/+ 3.182446 * 0.426956 = [-1.2338, 1.4838], clipped to the possible [-1, 1]
    assert (m.gain.low, m.gain.high) == (-1.0, 1.0)
    assert m.delivered_gain.low == pytest.approx(0.125 - 3.182446 * 0.125, abs=1e-6)
    assert m.delivered_gain.high == pytest.approx(0.125 + 3.182446 * 0.125, abs=1e-6)
    assert m.delivered_gain.p_value == pytest.approx(1 - 1 / 3 - math.sqrt(3) / (2 * math.pi), abs=1e-9)

    assert m.teacher_student.completion_rate == 1.0
    assert m.student_alone.completion_rate == 7 / 8
    assert m.delivered.completion_rate == 1.0
    assert (m.degraded_raw, m.degraded_delivered, m.improved_raw, m.improved_delivered) == (2, 0, 3, 1)
    assert (m.ndr_raw, m.ndr_delivered) == (0.75, 1.0)
    assert (m.improvement_raw, m.improvement_delivered) == (0.375, 0.125)

    assert m.teacher_student.response_tokens == 20
    assert m.student_alone.response_tokens == 42.5
    assert m.delivered.response_tokens == 30  # guided 20 x4, baseline 40 x4
    assert m.token_reduction == pytest.approx(9 / 17)
    assert (m.spent_tokens, m.alone_tokens, m.net_tokens) == (252.5, 62.5, 190.0)
    assert m.net_reduction == pytest.approx(-3.04)
    assert m.teaching_tokens == 35
    assert m.tes == pytest.approx(25 / 7)
    assert m.taught_rate == 1.0
    assert m.reasons == {"agreement": 3, "no_evidence": 4, "judge_preferred_guided": 1}

    by = {g.label: g for g in out.metrics.by_difficulty}
    assert out.metrics.difficulty_source == "tertiles"
    assert [g.label for g in out.metrics.by_difficulty] == ["easy", "medium", "hard"]
    assert (by["easy"].problems, by["medium"].problems, by["hard"].problems) == (2, 1, 1)
    assert by["easy"].gain.mean_diff == pytest.approx(-0.5)
    assert by["medium"].gain.mean_diff == pytest.approx(0.5)
    assert by["hard"].gain.mean_diff == pytest.approx(1.0)
    assert (out.metrics.max_gain, out.metrics.max_gain_group) == (1.0, "hard")

    # One middleware call per sample: strict measured both arms; nothing was called twice.
    assert student.roles().count("baseline") == 8 and student.roles().count("guided") == 8

    # Every figure is in the JSON, the tables carry the headline numbers, the plots exist.
    data = json.loads(out.json_path.read_text())
    assert data["metrics"]["overall"]["gain"]["mean_diff"] == pytest.approx(0.125)
    assert data["settings"]["seed"] == 42 and data["settings"]["temperature"] == 0.7
    tables = out.tables.read_text()
    assert "| Accuracy (95% CI) | 75.0% [" in tables
    assert "| hard | 1 | 100.0% | 0.0% | 0.0% | +100.0 pts | n/a | 100.0% |" in tables
    assert "| Non-degradation rate | 75.0% |  | 100.0% | 2 raw / 0 delivered degraded |" in tables
    for png in out.plots:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_each_record_keeps_the_three_arms_and_the_seeds(tmp_path: Path) -> None:
    atlas, _ = scripted_atlas()
    settings = EvalSettings(dataset="hand", student="student-model", samples=2)
    out = await aevaluate(atlas, settings, tmp_path, problems=PROBLEMS[3:], progress=False, plots=False)
    lines = [SampleRecord.model_validate_json(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    first = next(r for r in lines if r.sample == 0)
    assert first.seed == 42 and first.alone.finish_reason == "length"
    assert next(r for r in lines if r.sample == 1).seed == 43
    assert (first.alone.completed, first.alone.correct) == (False, False)
    assert first.guided.correct and first.delivered.correct and first.decision == "guided"
    assert first.usage["teacher"] == {"prompt": 100, "completion": 30, "calls": 1}
    assert first.delivered.text == "The answer is 5."
    assert out.plots == []


async def test_policy_without_baseline_measures_the_student_alone_separately(tmp_path: Path) -> None:
    atlas, student = scripted_atlas(policy="off")
    settings = EvalSettings(dataset="hand", student="student-model", samples=1)
    out = await aevaluate(atlas, settings, tmp_path, problems=PROBLEMS, progress=False, plots=False)
    m = out.metrics.overall
    records = [SampleRecord.model_validate_json(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert all(r.alone_separate and r.decision == "guided" for r in records)
    # "off" delivers the guided answer: p3 degrades for real (1 of 4 samples).
    assert (m.degraded_raw, m.degraded_delivered) == (1, 1)
    assert m.delivered.accuracy.mean == m.teacher_student.accuracy.mean == 0.75
    # The middleware spent probe+teacher+guided = 15+130+45 = 190; the separate call is
    # the counterfactual (20+40, and 20+60 for p4's cut-off answer), not spend.
    assert m.spent_tokens == 190 and m.alone_tokens == (60 * 3 + 80) / 4
    assert student.roles().count("baseline") == 4


async def test_teacher_failure_means_no_teaching_and_the_student_alone(tmp_path: Path) -> None:
    student = ScriptedBackend({"baseline": Reply("The answer is 10.", completion_tokens=12)})
    teacher = ScriptedBackend({"teacher": RuntimeError("teacher down")})
    atlas = Atlas(student_backend=student, teacher_backend=teacher, ledger="none", teacher_retries=1)
    settings = EvalSettings(dataset="hand", student="s", samples=1)
    await aevaluate(atlas, settings, tmp_path, problems=PROBLEMS[:1], progress=False, plots=False)
    (record,) = [SampleRecord.model_validate_json(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert not record.taught and record.reason == "teacher_error" and record.decision == "student_only"
    assert record.guided.correct and record.guided.completion_tokens == record.alone.completion_tokens == 12
    assert any("teacher" in e for e in record.errors)


def _record(pid: str, sample: int, alone: bool, guided: bool, ms: tuple[float, float] = (0, 0),
            difficulty: str | None = None) -> SampleRecord:
    return SampleRecord(
        problem_id=pid, sample=sample, seed=42 + sample, gold="1", difficulty=difficulty,
        alone=Arm(correct=alone, completed=True, latency_ms=ms[0]),
        guided=Arm(correct=guided, completed=True, latency_ms=ms[1]),
        delivered=Arm(correct=guided or alone, completed=True, latency_ms=ms[1]),
    )


def test_generation_time_is_per_problem_sum_of_its_samples() -> None:
    # a: 2 samples of 1.0 s + 2.0 s alone, 0.5 s + 0.5 s guided; b: 3.0 s + 1.0 s, 1.0 s + 2.0 s.
    # Time for the samples of a problem, averaged: alone (3 + 4)/2 = 3.5 s, guided (1 + 3)/2 = 2 s.
    recs = [_record("a", 0, True, True, (1000, 500)), _record("a", 1, True, True, (2000, 500)),
            _record("b", 0, False, True, (3000, 1000)), _record("b", 1, False, False, (1000, 2000))]
    m = compute_metrics(recs).overall
    assert m.student_alone.generation_s == pytest.approx(3.5)
    assert m.teacher_student.generation_s == pytest.approx(2.0)
    assert m.tes is None  # no teaching tokens: the score is undefined, not infinite


def test_dataset_labels_win_over_tertiles() -> None:
    recs = [_record("a", 0, True, True, difficulty="hard"), _record("b", 0, False, True, difficulty="easy"),
            _record("c", 0, False, False, difficulty="easy")]
    labels, source = difficulty_labels(recs)
    assert source == "dataset" and labels == {"a": "hard", "b": "easy", "c": "easy"}
    m = compute_metrics(recs)
    assert [g.label for g in m.by_difficulty] == ["easy", "hard"]
    assert m.by_difficulty[0].teacher_student.accuracy.mean == 0.5
    # One label missing: the whole set falls back to tertiles (mixing would be misleading).
    recs.append(_record("d", 0, True, True))
    assert difficulty_labels(recs)[1] == "tertiles"
