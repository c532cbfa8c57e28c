"""The policy frontier: what each non-degradation policy and judge delivers, simulated
through the real ``Atlas`` flow.

Nothing here is a formula: every request goes through ``Atlas.acompletion`` (probe,
teacher, guided and baseline calls, the judge's calls, the policy's decision) against
scripted models whose behaviour is drawn, item by item, from the parameters:

* the student alone is right on ``--alone`` of the items, the guided student on
  ``--guided``; guidance breaks ``--degraded`` of them (right alone, wrong guided);
  two wrong answers agree on ``--wrong-agree`` of the items where both are wrong;
* the teacher is an ATLAS-style thinking teacher (``atlas`` protocol, plain guidance after a
  ``<think>`` block); as judge it is right with probability ``--judge-accuracy`` per call
  (each of the pairwise judge's two orders, each grade of ``verify``), independently;
* answer lengths (completion tokens) ``--alone-tokens`` and ``--guided-tokens`` +-20%,
  ``--probe-tokens``, ``--teacher-tokens`` and ``--judge-tokens`` per call; prompts of
  ``--question-tokens``, the judge's prompt holding the answers it reads.

Defaults from the ATLAS benchmark page (ATLAS-PROTOCOL.md): 62.3% alone, 78.0% guided, 3%
degraded, about 4,000 against 2,000 student tokens per response.

For each policy x judge it prints delivered accuracy, the share of the guided gain that
was delivered, NDR (1 - degraded/N, degraded = right alone and wrong delivered), student
tokens and net tokens per request (net: everything spent minus the student-alone call),
and model calls per request; then a sweep over judge accuracy.

    python bench/policy_frontier.py                 # 2,000 items, about a minute
    python bench/policy_frontier.py --quick         # 200 items, seconds (CI runs this)
    python bench/policy_frontier.py --judge-accuracy 0.7 --degraded 0.05
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from atlas_middleware import Atlas
from atlas_middleware.messages import ChatRequest
from atlas_middleware.testing import (
    AtlasStyleTeacher,
    FunctionBackend,
    GradingJudge,
    PairwiseJudge,
    Reply,
    classify,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _reports import FinalReports  # noqa: E402

TEACHER = "hosted_vllm/Arc-Intelligence/ATLAS-8B-Thinking"
_ITEM = re.compile(r"Item (\d+)\b")
_STATED = re.compile(r"The answer is (\d+)")


@dataclass(frozen=True)
class Params:
    items: int = 2000
    alone: float = 0.623
    guided: float = 0.780
    degraded: float = 0.03
    wrong_agree: float = 0.2
    judge_accuracy: float = 0.85
    alone_tokens: int = 4000
    guided_tokens: int = 2000
    probe_tokens: int = 50
    teacher_tokens: int = 600
    judge_tokens: int = 300
    question_tokens: int = 150
    audit_rate: float = 0.1
    seed: int = 42

    def check(self) -> None:
        improved = self.guided - self.alone + self.degraded
        if not (0 <= self.degraded <= self.alone <= 1 and 0 <= improved and self.guided <= 1):
            raise SystemExit("impossible parameters: need 0 <= degraded <= alone and alone - degraded <= guided <= 1")


@dataclass(frozen=True)
class Item:
    truth: int
    alone_right: bool
    guided_right: bool
    wrong_agree: bool
    alone_tokens: int
    guided_tokens: int

    def answer(self, guided: bool) -> int:
        if (self.guided_right if guided else self.alone_right):
            return self.truth
        return self.truth + (1 if not guided or self.wrong_agree else 2)


def draw(p: Params) -> list[Item]:
    """Each item's joint outcome: both right, improved, degraded or both wrong."""
    rng = random.Random(p.seed)
    both = p.alone - p.degraded
    improved = p.guided - both
    items = []
    for i in range(p.items):
        u = rng.random()
        alone_right, guided_right = (
            (True, True) if u < both else (False, True) if u < both + improved
            else (True, False) if u < both + improved + p.degraded else (False, False)
        )
        items.append(Item(
            truth=1000 + i, alone_right=alone_right, guided_right=guided_right,
            wrong_agree=rng.random() < p.wrong_agree,
            alone_tokens=round(p.alone_tokens * rng.uniform(0.8, 1.2)),
            guided_tokens=round(p.guided_tokens * rng.uniform(0.8, 1.2)),
        ))
    return items


def _item_of(request: ChatRequest, items: list[Item]) -> Item:
    text = " ".join(str(m.get("content")) for m in request.messages)
    return items[int(_ITEM.findall(text)[0])]


def _text(i: int, value: int) -> str:
    return f"Item {i}: working it through. The answer is {value}"


def backends(p: Params, items: list[Item], judge_accuracy: float) -> tuple[FunctionBackend, FunctionBackend]:
    q = p.question_tokens

    def student(request: ChatRequest) -> Reply:
        role = classify(request)
        item = _item_of(request, items)
        i = item.truth - 1000
        if role == "probe":
            return Reply("Plan: set up the quantities, then compute.", prompt_tokens=q + 60,
                         completion_tokens=p.probe_tokens)
        guided = role == "guided"
        tokens = item.guided_tokens if guided else item.alone_tokens
        return Reply(_text(i, item.answer(guided)), prompt_tokens=q + (150 if guided else 0), completion_tokens=tokens)

    def is_right(answer: str) -> bool:
        stated, where = _STATED.findall(answer), _ITEM.findall(answer)
        return bool(stated and where) and int(stated[-1]) == items[int(where[0])].truth

    teach = AtlasStyleTeacher("Write down each quantity before combining them.", think_words=60)
    pair = PairwiseJudge(is_right, accuracy=judge_accuracy, think=True, seed=p.seed)
    grade = GradingJudge(is_right, accuracy=judge_accuracy, think=True, seed=p.seed)

    def teacher(request: ChatRequest) -> Reply:
        role = classify(request)
        item = _item_of(request, items)
        if role == "teacher":
            reply = teach(request)
            return Reply(reply.content, prompt_tokens=q + p.probe_tokens + 150, completion_tokens=p.teacher_tokens)
        reply = pair(request) if role == "judge_pair" else grade(request)
        read = item.guided_tokens + (item.alone_tokens if role == "judge_pair" else 0)
        return Reply(reply.content, prompt_tokens=q + read + 80, completion_tokens=p.judge_tokens)

    return FunctionBackend(student), FunctionBackend(teacher)


@dataclass
class Row:
    policy: str
    judge: str
    judge_accuracy: float
    accuracy: float = 0.0
    gain_share: float = 0.0
    ndr: float = 0.0
    improved: int = 0
    degraded: int = 0
    student_tokens: float = 0.0
    net_tokens: float = 0.0
    calls: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)


async def run(p: Params, policy: str, judge: str, judge_accuracy: float | None = None, batch: int = 250) -> Row:
    """Every item through ``Atlas.acompletion`` under one policy and judge."""
    acc = p.judge_accuracy if judge_accuracy is None else judge_accuracy
    items = draw(p)
    student, teacher = backends(p, items, acc)
    row = Row(policy, judge, acc)
    ledger = FinalReports()  # the audits' comparisons, which come after delivery, counted too
    atlas = Atlas(teacher=TEACHER, student_backend=student, teacher_backend=teacher, ledger=ledger, spool="none",
                  policy=policy, judge=judge, audit_rate=p.audit_rate)
    reports = []
    try:
        for start in range(0, len(items), batch):
            chunk = range(start, min(start + batch, len(items)))
            out = await asyncio.gather(*(atlas.acompletion(
                model="student", messages=[{"role": "user", "content": f"Item {i}: a word problem."}])
                for i in chunk))
            reports += [(i, r.atlas, r.choices[0].message.content) for i, r in zip(chunk, out, strict=True)]
        await atlas.aflush()  # audits compare after delivery: their calls count too
        reports = [(i, ledger.take(report), text) for i, report, text in reports]
    finally:
        await atlas.aclose()
    right = degraded = improved = 0
    student_tokens = net = calls = 0
    for i, report, text in reports:
        item = items[i]
        ok = int(_STATED.findall(text)[-1]) == item.truth
        right += ok
        degraded += item.alone_right and not ok
        improved += ok and not item.alone_right
        u = report.usage
        student_tokens += sum(getattr(u, r).total_tokens for r in ("probe", "guided", "baseline"))
        net += u.total().total_tokens - (p.question_tokens + item.alone_tokens)
        calls += u.total().calls
        row.reasons[report.reason.value] = row.reasons.get(report.reason.value, 0) + 1
    n = len(items)
    alone = sum(it.alone_right for it in items) / n
    guided = sum(it.guided_right for it in items) / n
    row.accuracy = right / n
    row.gain_share = (row.accuracy - alone) / (guided - alone) if guided != alone else 0.0
    row.ndr = 1 - degraded / n
    row.improved, row.degraded = improved, degraded
    row.student_tokens, row.net_tokens, row.calls = student_tokens / n, net / n, calls / n
    return row


CONFIGS = [("strict", "auto"), ("strict", "answer"), ("verify", "auto"), ("verify", "answer"),
           ("audit", "auto"), ("off", "auto")]
DEFAULT: tuple[str, str] | None = None  # the default policy is adaptive: bench/adaptive_default.py


def _judge_name(judge: str) -> str:
    return "teacher (auto)" if judge == "auto" else judge


def table(rows: list[Row], p: Params, with_accuracy: bool = False) -> str:
    items = draw(p)
    alone_tokens = p.question_tokens + sum(it.alone_tokens for it in items) / len(items)
    head = "| policy | judge | " + ("judge accuracy | " if with_accuracy else "") + (
        "delivered accuracy | share of the guided gain | NDR | improved / degraded | "
        "student tokens | net tokens | calls |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        mark = " **(default)**" if (r.policy, r.judge) == DEFAULT and not with_accuracy else ""
        lines.append(
            f"| {r.policy}{mark} | {_judge_name(r.judge)} | " + (f"{r.judge_accuracy:.2f} | " if with_accuracy else "")
            + f"{100 * r.accuracy:.1f}% | {100 * r.gain_share:.0f}% | {100 * r.ndr:.2f}% | "
            f"{r.improved} / {r.degraded} | {r.student_tokens:,.0f} | {r.net_tokens:+,.0f} | {r.calls:.2f} |"
        )
    lines.append("")
    lines.append(f"Student alone: {alone_tokens:,.0f} tokens per request (prompt + completion), 1 call. "
                 "Net tokens: everything spent minus that.")
    return "\n".join(lines)


async def main_async(p: Params, sweep: list[float]) -> None:
    p.check()
    items = draw(p)
    n = len(items)
    print(f"{n} items: alone right {sum(i.alone_right for i in items) / n:.1%}, guided right "
          f"{sum(i.guided_right for i in items) / n:.1%}, degraded by guidance "
          f"{sum(i.alone_right and not i.guided_right for i in items) / n:.1%}; judge accuracy "
          f"{p.judge_accuracy:.2f} per call; seed {p.seed}\n")
    rows = [await run(p, policy, judge) for policy, judge in CONFIGS]
    print(table(rows, p))
    print("\nReasons:")
    for r in rows:
        top = ", ".join(f"{k} {v}" for k, v in sorted(r.reasons.items(), key=lambda kv: -kv[1]))
        print(f"- {r.policy} / {_judge_name(r.judge)}: {top}")
    print("\nSweep over the judge's accuracy (teacher judge):\n")
    swept = [await run(p, policy, "auto", acc) for policy in ("strict", "verify") for acc in sweep]
    print(table(swept, p, with_accuracy=True))


def parse_args(argv: list[str] | None = None) -> tuple[Params, list[float]]:
    d = Params()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="200 items")
    for name in ("items", "alone", "guided", "degraded", "wrong_agree", "judge_accuracy", "alone_tokens",
                 "guided_tokens", "probe_tokens", "teacher_tokens", "judge_tokens", "question_tokens",
                 "audit_rate", "seed"):
        default: Any = getattr(d, name)
        ap.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    ap.add_argument("--sweep", default="0.6,0.7,0.8,0.9,1.0", help="judge accuracies for the sweep")
    args = ap.parse_args(argv)
    values = {k: v for k, v in vars(args).items() if k not in ("quick", "sweep")}
    if args.quick:
        values["items"] = min(values["items"], 200)
    return Params(**values), [float(x) for x in args.sweep.split(",") if x]


if __name__ == "__main__":
    params, sweep = parse_args()
    asyncio.run(main_async(params, sweep))
