"""The learned teaching gate, simulated through the real ``Atlas`` flow: task families whose
teaching helps, harms, or changes nothing, arriving interleaved.

It extends ``policy_frontier.py`` (same scripted student, ATLAS-style thinking teacher and
teacher judge, right with probability ``--judge-accuracy`` per call) to three families, each
drawn with its own parameters:

* ``helps``: right alone on 55% of the items, guided on 80% (3% degraded); guided answers
  about half as long (the ATLAS benchmark's shape);
* ``harms``: right alone on 80%, guided on 60% (25% degraded, 5% improved);
* ``inert``: right on 70% either way, the same answer with or without guidance, as long.

Every call goes through ``Atlas.acompletion`` with no tag, so its family is the derived
fingerprint of its template ("Item <n>: a <family> word problem."). The calls arrive in a
seeded random interleaving, ``--concurrency`` at a time, so the gate learns while traffic
flows. Each policy runs three ways: ``gate: always`` (the default), ``gate: learned``, and
``gate: learned`` with ``reuse: family``.

Printed: delivered accuracy, NDR (1 - degraded/N, degraded = right alone and wrong
delivered), net tokens per request (everything spent minus the student alone) and teacher
calls per request; per family, the gate's final state and the number of the family's calls
after which it stayed in the right state (closed for ``harms`` and ``inert``, taught for
``helps``).

    python bench/learned_gate.py              # 3 x 800 calls, about 25 s on 2 cores
    python bench/learned_gate.py --quick      # 3 x 150 calls (CI runs this)
"""

from __future__ import annotations

import argparse
import asyncio
import random
from dataclasses import dataclass, field, replace
from typing import Any

from _reports import FinalReports
from policy_frontier import TEACHER, Item, Params, backends, draw

from atlas_middleware import Atlas
from atlas_middleware.report import CallReport, Reason

FAMILIES: dict[str, dict[str, Any]] = {
    "helps": {"alone": 0.55, "guided": 0.80, "degraded": 0.03},
    "harms": {"alone": 0.80, "guided": 0.60, "degraded": 0.25},
    "inert": {"alone": 0.70, "guided": 0.70, "degraded": 0.0, "wrong_agree": 1.0, "guided_tokens": 4000},
}
RIGHT_STATE = {"helps": "taught", "harms": "closed", "inert": "closed"}
MODES: dict[str, dict[str, Any]] = {
    "always": {},
    "learned": {"gate": "learned"},
    "learned + reuse": {"gate": "learned", "reuse": "family"},
}


def workload(per_family: int, seed: int) -> tuple[list[Item], list[str]]:
    """Items of every family, interleaved; ``truth`` is 1000 + the item's global index."""
    drawn = [(name, it) for k, (name, kw) in enumerate(FAMILIES.items())
             for it in draw(Params(items=per_family, seed=seed + k, **kw))]
    random.Random(seed).shuffle(drawn)
    items = [replace(it, truth=1000 + i) for i, (_, it) in enumerate(drawn)]
    return items, [name for name, _ in drawn]


@dataclass
class Run:
    policy: str
    mode: str
    reports: list[CallReport] = field(default_factory=list)
    right: list[bool] = field(default_factory=list)
    net: list[float] = field(default_factory=list)


async def run(p: Params, items: list[Item], families: list[str], policy: str, mode: str, concurrency: int) -> Run:
    student, teacher = backends(p, items, p.judge_accuracy)
    ledger = FinalReports()  # each call's final report: an audit's baseline and judge come after delivery
    atlas = Atlas(teacher=TEACHER, student_backend=student, teacher_backend=teacher, ledger=ledger, spool="none",
                  policy=policy, audit_rate=p.audit_rate, **MODES[mode])
    out = Run(policy, mode)
    try:
        for start in range(0, len(items), concurrency):
            chunk = range(start, min(start + concurrency, len(items)))
            answers = await asyncio.gather(*(atlas.acompletion(
                model="student", messages=[{"role": "user", "content": f"Item {i}: a {families[i]} word problem."}])
                for i in chunk))
            await atlas.aflush()  # audits finish (and teach the gate) before the next calls
            for i, response in zip(chunk, answers, strict=True):
                text = response.choices[0].message.content
                report = ledger.take(response.atlas)
                out.reports.append(report)
                out.right.append(f"The answer is {items[i].truth}" in text)
                out.net.append(report.usage.total().total_tokens - (p.question_tokens + items[i].alone_tokens))
    finally:
        await atlas.aclose()
    return out


def settled_after(states: list[str], right: str) -> int | None:
    """How many of a family's calls came before its state was ``right`` for good."""
    last_wrong = max((k for k, s in enumerate(states) if s != right), default=-1)
    return None if last_wrong == len(states) - 1 else last_wrong + 1


def _state(report: CallReport) -> str:
    return "closed" if report.gate is not None and report.gate.state == "closed" else "taught"


def summary(r: Run, items: list[Item]) -> dict[str, float]:
    n = len(items)
    degraded = sum(it.alone_right and not ok for it, ok in zip(items, r.right, strict=True))
    return {
        "accuracy": sum(r.right) / n, "ndr": 1 - degraded / n, "net": sum(r.net) / n,
        "teacher": sum(x.usage.teacher.calls for x in r.reports) / n,
        "avoided": sum(x.guidance_reused for x in r.reports),
        "skipped": sum(x.reason == Reason.GATE_SKIPPED for x in r.reports),
    }


def tables(runs: list[Run], items: list[Item], families: list[str]) -> str:
    lines = ["| policy | gate | delivered accuracy | NDR | net tokens | vs always | teacher calls | "
             "teacher calls avoided by reuse | calls skipped by the gate |", "|" + "---|" * 9]
    base: dict[str, float] = {}
    for r in runs:
        s = summary(r, items)
        if r.mode == "always":
            base[r.policy] = s["net"]
        saved = s["net"] - base[r.policy]
        lines.append(f"| {r.policy} | {r.mode} | {100 * s['accuracy']:.1f}% | {100 * s['ndr']:.2f}% | "
                     f"{s['net']:+,.0f} | {saved:+,.0f} | {s['teacher']:.2f} | {s['avoided']:.0f} | {s['skipped']:.0f} |")
    lines += ["", "Net tokens: per request, everything spent minus the student alone; vs always: the same "
              "policy's always-teach run.", ""]
    lines += ["| policy | gate | family | right state | final state | settled after (calls) | taught share | "
              "accuracy | net tokens |", "|" + "---|" * 9]
    for r in runs:
        if r.mode == "always":
            continue
        for name in FAMILIES:
            idx = [i for i, f in enumerate(families) if f == name]
            states = [_state(r.reports[i]) for i in idx]
            after = settled_after(states, RIGHT_STATE[name])
            taught = sum(r.reports[i].usage.guided.calls > 0 for i in idx) / len(idx)
            acc = sum(r.right[i] for i in idx) / len(idx)
            net = sum(r.net[i] for i in idx) / len(idx)
            lines.append(f"| {r.policy} | {r.mode} | {name} | {RIGHT_STATE[name]} | {states[-1]} | "
                         f"{'never' if after is None else after} | {100 * taught:.0f}% | {100 * acc:.1f}% | {net:+,.0f} |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> None:
    p = Params(judge_accuracy=args.judge_accuracy, audit_rate=args.audit_rate, seed=args.seed)
    items, families = workload(args.per_family, args.seed)
    print(f"{len(items)} calls, {args.per_family} per family, interleaved; judge accuracy {p.judge_accuracy:.2f} "
          f"per call; audit rate {p.audit_rate}; concurrency {args.concurrency}; seed {args.seed}\n")
    runs = [await run(p, items, families, policy, mode, args.concurrency)
            for policy in args.policies.split(",") for mode in MODES]
    print(tables(runs, items, families))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-family", type=int, default=800)
    ap.add_argument("--quick", action="store_true", help="150 calls per family")
    ap.add_argument("--policies", default="strict,audit")
    ap.add_argument("--judge-accuracy", type=float, default=0.85)
    ap.add_argument("--audit-rate", type=float, default=0.1)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)
    if args.quick:
        args.per_family = min(args.per_family, 150)
    return args


if __name__ == "__main__":
    asyncio.run(main_async(parse_args()))
