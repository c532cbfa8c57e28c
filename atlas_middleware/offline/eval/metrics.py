"""The ATLAS benchmark figures, computed from sample records.

Definitions (ATLAS-PROTOCOL.md, so figures compare with the published ones):

* accuracy: per problem, the share of its samples answered correctly; then the mean over
  problems (with a 95% interval, clipped to [0, 1]). Equal to the sample-level share when every problem has
  the same number of samples. Three arms: teacher+student (the raw guided answer, the
  student's own when no guidance was given), student alone, delivered (after the policy).
* gain: teacher+student minus student alone, paired by problem, with a paired t-test; the
  *maximum gain* is the largest gain among the difficulty groups.
* completion rate: share of samples that finished within the token cap with an answer.
* degradation: the student alone was right and the arm is wrong (per sample);
  NDR = 1 - degraded / samples, for the raw guided answer and for the delivered one.
  Improvement rate: the student alone was wrong and the arm is right.
* student response tokens: mean completion tokens of the answer; token reduction =
  1 - teacher+student / alone. Net tokens: every token of the middleware call (probe,
  teacher, guided, baseline, judge; prompt and completion) minus the student alone's
  prompt+completion tokens, per sample; net reduction = 1 - spent / alone.
* generation time: per problem, the summed latency of its samples (teacher+student: probe +
  teacher + guided; alone: its own call; delivered: the whole middleware call), averaged
  over problems: the published "time for 32 samples".
* teaching tokens: completion tokens of the probe and the teacher per sample.
  TES = gain x completion rate (teacher+student) / (teaching tokens / 1000).
* difficulty: the data set's labels when every problem has one; otherwise tertiles of the
  student-alone pass rate (ranked best first, ties by problem id: top third easy).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from typing import Literal

from pydantic import BaseModel

from .records import Arm, SampleRecord
from .stats import MeanCI, PairedTest, mean_ci, paired_test

ArmName = Literal["guided", "alone", "delivered"]
ARMS: tuple[ArmName, ...] = ("guided", "alone", "delivered")
_ORDER = {"easy": 0, "medium": 1, "hard": 2}


class ArmFigures(BaseModel):
    accuracy: MeanCI
    completion_rate: float
    response_tokens: float
    generation_s: float
    """Mean over problems of the summed latency of the problem's samples, in seconds."""


class GroupMetrics(BaseModel):
    label: str
    problems: int
    samples: int
    teacher_student: ArmFigures
    student_alone: ArmFigures
    delivered: ArmFigures
    gain: PairedTest
    delivered_gain: PairedTest
    degraded_raw: int
    degraded_delivered: int
    improved_raw: int
    improved_delivered: int
    ndr_raw: float
    ndr_delivered: float
    improvement_raw: float
    improvement_delivered: float
    token_reduction: float | None
    spent_tokens: float
    alone_tokens: float
    net_tokens: float
    net_reduction: float | None
    teaching_tokens: float
    tes: float | None
    taught_rate: float
    guidance_leaks: int = 0
    """Samples whose guidance stated an answer (stripped, withheld or allowed)."""
    reasons: dict[str, int]
    errors: int


class EvalMetrics(BaseModel):
    overall: GroupMetrics
    by_difficulty: list[GroupMetrics]
    difficulty_source: Literal["dataset", "tertiles"]
    max_gain: float | None
    max_gain_group: str | None


def _arm(r: SampleRecord, name: ArmName) -> Arm:
    return r.guided if name == "guided" else r.alone if name == "alone" else r.delivered


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return sum(vals) / len(vals) if vals else 0.0


def _ratio_reduction(num: float, den: float) -> float | None:
    return 1 - num / den if den else None


def _per_problem(records: list[SampleRecord], fn: Callable[[SampleRecord], float]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for r in records:
        out[r.problem_id].append(fn(r))
    return out


def _accuracy(records: list[SampleRecord], name: ArmName, problems: list[str]) -> list[float]:
    """Per problem (in ``problems`` order), the share of its samples the arm got right."""
    acc = _per_problem(records, lambda r: float(_arm(r, name).correct))
    return [_mean(acc[p]) for p in problems]


def _arm_figures(records: list[SampleRecord], name: ArmName, problems: list[str]) -> ArmFigures:
    time = _per_problem(records, lambda r: _arm(r, name).latency_ms / 1000)
    return ArmFigures(
        accuracy=mean_ci(_accuracy(records, name, problems), bounds=(0.0, 1.0)),
        completion_rate=_mean(float(_arm(r, name).completed) for r in records),
        response_tokens=_mean(_arm(r, name).completion_tokens for r in records),
        generation_s=_mean(sum(time[p]) for p in problems),
    )


def group_metrics(label: str, records: list[SampleRecord]) -> GroupMetrics:
    """Every figure of one group of samples (all of them, or one difficulty)."""
    problems = sorted({r.problem_id for r in records})
    n = len(records)
    per = {a: _accuracy(records, a, problems) for a in ARMS}
    figures = {a: _arm_figures(records, a, problems) for a in ARMS}
    degraded = {a: sum(r.alone.correct and not _arm(r, a).correct for r in records) for a in ("guided", "delivered")}
    improved = {a: sum(not r.alone.correct and _arm(r, a).correct for r in records) for a in ("guided", "delivered")}
    gain = paired_test(per["guided"], per["alone"], bounds=(-1.0, 1.0))
    spent = _mean(r.spent_tokens for r in records)
    alone = _mean(r.alone_tokens for r in records)
    teaching = _mean(r.teaching_tokens for r in records)
    ts = figures["guided"]
    tes = (
        gain.mean_diff * ts.completion_rate / (teaching / 1000)
        if teaching and gain.mean_diff is not None else None
    )
    return GroupMetrics(
        label=label, problems=len(problems), samples=n,
        teacher_student=ts, student_alone=figures["alone"], delivered=figures["delivered"],
        gain=gain, delivered_gain=paired_test(per["delivered"], per["alone"], bounds=(-1.0, 1.0)),
        degraded_raw=degraded["guided"], degraded_delivered=degraded["delivered"],
        improved_raw=improved["guided"], improved_delivered=improved["delivered"],
        ndr_raw=1 - degraded["guided"] / n if n else 0.0,
        ndr_delivered=1 - degraded["delivered"] / n if n else 0.0,
        improvement_raw=improved["guided"] / n if n else 0.0,
        improvement_delivered=improved["delivered"] / n if n else 0.0,
        token_reduction=_ratio_reduction(ts.response_tokens, figures["alone"].response_tokens),
        spent_tokens=spent, alone_tokens=alone, net_tokens=spent - alone,
        net_reduction=_ratio_reduction(spent, alone),
        teaching_tokens=teaching, tes=tes,
        taught_rate=_mean(float(r.taught) for r in records),
        guidance_leaks=sum(1 for r in records if r.guidance_leak),
        reasons=dict(Counter(r.reason for r in records)),
        errors=sum(1 for r in records if r.errors),
    )


def difficulty_labels(records: list[SampleRecord]) -> tuple[dict[str, str], Literal["dataset", "tertiles"]]:
    """Each problem's difficulty: its own label, or its tertile of the student-alone pass rate."""
    given = {r.problem_id: r.difficulty for r in records}
    if given and all(label for label in given.values()):
        return {p: str(label) for p, label in given.items()}, "dataset"
    rate = {p: _mean(v) for p, v in _per_problem(records, lambda r: float(r.alone.correct)).items()}
    ranked = sorted(rate, key=lambda p: (-rate[p], p))
    names = ("easy", "medium", "hard")
    return {p: names[min(2, 3 * i // len(ranked))] for i, p in enumerate(ranked)}, "tertiles"


def compute_metrics(records: Iterable[SampleRecord]) -> EvalMetrics:
    recs = list(records)
    if not recs:
        raise ValueError("no sample records to compute metrics from")
    labels, source = difficulty_labels(recs)
    groups: dict[str, list[SampleRecord]] = defaultdict(list)
    for r in recs:
        groups[labels[r.problem_id]].append(r)
    order = sorted(groups, key=lambda g: (_ORDER.get(g.lower(), 3), g))
    by = [group_metrics(g, groups[g]) for g in order]
    gains = [(g.gain.mean_diff, g.label) for g in by if g.gain.mean_diff is not None]
    best = max(gains, key=lambda g: g[0]) if gains else None  # ties: the easier group
    return EvalMetrics(
        overall=group_metrics("all", recs), by_difficulty=by, difficulty_source=source,
        max_gain=best[0] if best else None, max_gain_group=best[1] if best else None,
    )
