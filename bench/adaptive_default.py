"""The adaptive default on production-like traffic, through the real flow, priced.

Every request goes through ``Atlas.acompletion`` (probe, teacher, guided and baseline calls,
the judge's calls, the policy's decision, the adaptive policy's evidence and modes) against
scripted models whose behaviour is drawn item by item:

* **task families**, interleaved and untagged (each one's key is the fingerprint of its
  template, "Item <n>: a <family> word problem."): ``helps`` (teaching helps a lot and almost
  never hurts), ``helps-little`` (helps a little, sometimes hurts), ``harms``, ``inert`` (the
  same answer either way), and a **long tail** of rare templates, each seen a handful of
  times, each behaving like one of the four;
* **guided answers** shorter than the student's own in some families, longer in others;
  **reused guidance** (``reuse: family``) is weaker than fresh: it keeps only part of the
  improvements, since it was written for another instance;
* a **teacher judge** wrong 10-18% of the time, partly independently (each order of the
  pairwise judge, each grade, its own coin) and partly on the same **hard items** in both
  orders (one coin per item: a correlated error the two orders cannot reveal);
* **prices** given the LiteLLM way: the student like a frontier API model (``--student-in``,
  ``--student-out``: $2.50 / $10 per million tokens), the teacher like a self-hosted 8B
  (``--teacher-price``: $0.10 per million): per call (``input_cost_per_token``,
  ``output_cost_per_token``) and in ``teacher_params``.

For the default (``policy: adaptive``) and each explicit policy it prints delivered
accuracy, NDR (1 - degraded/N, degraded = right alone and wrong as delivered), dollars and
student tokens per request against the student alone (computed here from each call's
per-role usage times the prices), and delivered accuracy against the per-family oracle (the
better of alone and guided in each family; the tail's templates grouped by the family they
behave like). Then, per family, what the default delivered and the mode it ended in. It
runs ``--mixes`` (weights, judge error and degradation rates varied).

    python bench/adaptive_default.py                 # 5 mixes x 8,000 calls, every policy (about 8 min on 2 cores)
    python bench/adaptive_default.py --quick         # 1 mix, 2,000 calls, three rows (CI runs this)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import os
import random
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from atlas_middleware import Atlas
from atlas_middleware.learning.adaptive import AdaptiveRule
from atlas_middleware.messages import ChatRequest
from atlas_middleware.report import CallReport
from atlas_middleware.testing import (
    AtlasStyleTeacher,
    FunctionBackend,
    Reply,
    classify,
    guidance_of,
    judged_answers,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _reports import FinalReports  # noqa: E402

TEACHER = "hosted_vllm/Arc-Intelligence/ATLAS-8B-Thinking"
_ITEM = re.compile(r"Item (\d+)\b")
_STATED = re.compile(r"The answer is (\d+)")
_CASE = re.compile(r"\(case ([g-z]+)\)")
_TAIL_LETTERS = "ghjkmnpqrstvwxyz"  # no hex digits: a tail name is never read as an id


@dataclass(frozen=True)
class Kind:
    """How teaching behaves in a family."""

    alone: float
    guided: float
    degraded: float
    guided_tokens: float
    """A guided answer's length, as a share of the student's own."""
    wrong_agree: float = 0.2
    reused_keeps: float = 0.5
    """Share of fresh guidance's improvements that reused guidance still makes."""


@dataclass(frozen=True)
class Mix:
    name: str
    weights: dict[str, float]
    """Share of the traffic per family; ``tail`` is the long tail's share."""
    kinds: dict[str, Kind]
    tail_kinds: dict[str, float]
    judge_error: float
    """Each order's (each grade's) independent error on an ordinary item."""
    hard_share: float
    hard_error: float
    """On a hard item every verdict is wrong together, with this probability."""

    @property
    def judge_error_rate(self) -> float:
        return (1 - self.hard_share) * self.judge_error + self.hard_share * self.hard_error


BASE_KINDS = {
    "helps": Kind(alone=0.55, guided=0.82, degraded=0.003, guided_tokens=0.5),
    "helps-little": Kind(alone=0.65, guided=0.70, degraded=0.03, guided_tokens=1.15),
    "harms": Kind(alone=0.80, guided=0.62, degraded=0.22, guided_tokens=0.9),
    "inert": Kind(alone=0.70, guided=0.70, degraded=0.0, guided_tokens=1.0, wrong_agree=1.0),
}
MIXES = [
    Mix("A", {"helps": 0.30, "helps-little": 0.20, "harms": 0.12, "inert": 0.18, "tail": 0.20}, BASE_KINDS,
        {"helps": 0.4, "helps-little": 0.2, "harms": 0.2, "inert": 0.2}, judge_error=0.10, hard_share=0.04,
        hard_error=1.0),
    Mix("B", {"helps": 0.22, "helps-little": 0.22, "harms": 0.24, "inert": 0.12, "tail": 0.20},
        {**BASE_KINDS, "helps": replace(BASE_KINDS["helps"], degraded=0.006),
         "helps-little": replace(BASE_KINDS["helps-little"], degraded=0.05),
         "harms": replace(BASE_KINDS["harms"], degraded=0.30, guided=0.55)},
        {"helps": 0.3, "helps-little": 0.2, "harms": 0.3, "inert": 0.2}, judge_error=0.13, hard_share=0.06,
        hard_error=1.0),
    Mix("C", {"helps": 0.40, "helps-little": 0.15, "harms": 0.10, "inert": 0.25, "tail": 0.10},
        {**BASE_KINDS, "helps": replace(BASE_KINDS["helps"], degraded=0.002),
         "inert": replace(BASE_KINDS["inert"], guided_tokens=0.6)},
        {"helps": 0.5, "helps-little": 0.2, "harms": 0.1, "inert": 0.2}, judge_error=0.09, hard_share=0.01,
        hard_error=1.0),
    # Written down before it was ever run, and never tuned on: every figure moved.
    Mix("D", {"helps": 0.25, "helps-little": 0.25, "harms": 0.08, "inert": 0.27, "tail": 0.15},
        {"helps": Kind(alone=0.50, guided=0.75, degraded=0.004, guided_tokens=0.7),
         "helps-little": Kind(alone=0.60, guided=0.66, degraded=0.04, guided_tokens=1.3),
         "harms": Kind(alone=0.75, guided=0.60, degraded=0.18, guided_tokens=1.0),
         "inert": replace(BASE_KINDS["inert"], guided_tokens=0.8)},
        {"helps": 0.35, "helps-little": 0.25, "harms": 0.15, "inert": 0.25}, judge_error=0.12, hard_share=0.03,
        hard_error=1.0),
    # Mix A's traffic under a careful judge (3% independent error, 1% hard items): what the
    # same rule does when the judge's evidence can bound more.
    Mix("E", {"helps": 0.30, "helps-little": 0.20, "harms": 0.12, "inert": 0.18, "tail": 0.20}, BASE_KINDS,
        {"helps": 0.4, "helps-little": 0.2, "harms": 0.2, "inert": 0.2}, judge_error=0.03, hard_share=0.01,
        hard_error=1.0),
]


@dataclass(frozen=True)
class Params:
    calls: int = 8000
    tail_visits: tuple[int, int] = (3, 8)
    alone_tokens: int = 2000
    question_tokens: int = 200
    probe_tokens: int = 50
    teacher_tokens: int = 600
    judge_tokens: int = 300
    student_in: float = 2.50
    student_out: float = 10.0
    teacher_price: float = 0.10
    concurrency: int = 16
    seed: int = 42


@dataclass(frozen=True)
class Item:
    family: str
    kind: str
    truth: int
    alone_right: bool
    guided_right: bool
    reused_right: bool
    wrong_agree: bool
    hard: bool
    alone_tokens: int
    guided_tokens: int

    def answer(self, role: str) -> int:
        right = {"baseline": self.alone_right, "guided": self.guided_right, "reused": self.reused_right}[role]
        if right:
            return self.truth
        return self.truth + (1 if role == "baseline" or self.wrong_agree else 2)


def _code(i: int) -> str:
    letters = []
    while True:
        i, r = divmod(i, len(_TAIL_LETTERS))
        letters.append(_TAIL_LETTERS[r])
        if not i:
            return "".join(letters)


def _decode(code: str) -> int:
    return sum(_TAIL_LETTERS.index(c) * len(_TAIL_LETTERS) ** k for k, c in enumerate(code))


def _draw_item(rng: random.Random, kind: Kind, hard_share: float, p: Params) -> tuple[bool, bool, bool, bool, bool,
                                                                                    int, int]:
    both = kind.alone - kind.degraded
    improved = kind.guided - both
    u = rng.random()
    alone_right, guided_right = ((True, True) if u < both else (False, True) if u < both + improved
                                 else (True, False) if u < both + improved + kind.degraded else (False, False))
    reused_right = guided_right and (alone_right or rng.random() < kind.reused_keeps)
    alone = round(p.alone_tokens * rng.uniform(0.8, 1.2))
    guided = round(alone * kind.guided_tokens * rng.uniform(0.9, 1.1))
    return (alone_right, guided_right, reused_right, rng.random() < kind.wrong_agree, rng.random() < hard_share,
            alone, guided)


def workload(mix: Mix, p: Params) -> list[Item]:
    """The mix's calls in a seeded random interleaving; ``truth`` is 1000 + the call's index."""
    rng = random.Random(p.seed)
    names: list[tuple[str, str]] = []
    for family, weight in mix.weights.items():
        if family != "tail":
            names += [(family, family)] * round(weight * p.calls)
    tail_calls, t = round(mix.weights.get("tail", 0.0) * p.calls), 0
    kinds, shares = list(mix.tail_kinds), list(mix.tail_kinds.values())
    while tail_calls > 0:
        visits = min(tail_calls, rng.randint(*p.tail_visits))
        kind = rng.choices(kinds, shares)[0]
        names += [(f"tail-{_code(t + 7)}", kind)] * visits
        tail_calls -= visits
        t += 1
    rng.shuffle(names)
    return [Item(family, kind, 1000 + i, *_draw_item(rng, mix.kinds[kind], mix.hard_share, p))
            for i, (family, kind) in enumerate(names)]


def _coin(*key: object) -> float:
    return int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "big") / 2**64


def backends(mix: Mix, p: Params, items: list[Item]) -> tuple[FunctionBackend, FunctionBackend]:
    q = p.question_tokens

    def item_of(text: str) -> Item:
        return items[int(_ITEM.findall(text)[0])]

    def is_right(answer: str) -> bool:
        stated, where = _STATED.findall(answer), _ITEM.findall(answer)
        return bool(stated and where) and int(stated[-1]) == items[int(where[0])].truth

    def student(request: ChatRequest) -> Reply:
        role = classify(request)
        item = item_of(" ".join(str(m.get("content")) for m in request.messages))
        i = item.truth - 1000
        if role == "probe":
            return Reply("Plan: set up the quantities, then compute.", prompt_tokens=q + 60,
                         completion_tokens=p.probe_tokens)
        if role == "guided":
            case = _CASE.search(guidance_of(request) or "")
            answer_role = "guided" if case is not None and _decode(case.group(1)) == i else "reused"
            return Reply(f"Item {i}: working it through. The answer is {item.answer(answer_role)}",
                         prompt_tokens=q + 120, completion_tokens=item.guided_tokens)
        return Reply(f"Item {i}: working it through. The answer is {item.answer('baseline')}", prompt_tokens=q,
                     completion_tokens=item.alone_tokens)

    def mistaken(item: Item, *key: object) -> bool:
        """One verdict's error: shared by every verdict on a hard item, independent otherwise."""
        if item.hard:
            return _coin(p.seed, "hard", item.truth) < mix.hard_error
        return _coin(p.seed, item.truth, *key) < mix.judge_error

    def verdict(value: object) -> str:
        return f"<think>\nI compare the final answers with my own solution.\n</think>\n<verdict>{value}</verdict>"

    teach = AtlasStyleTeacher(lambda question, approach: "Write down each quantity before combining them "
                              f"(case {_code(int(_ITEM.findall(question)[0]))}).", think_words=60)

    def teacher(request: ChatRequest) -> Reply:
        role = classify(request)
        if role == "teacher":
            return Reply(teach(request).content, prompt_tokens=q + p.probe_tokens + 150,
                         completion_tokens=p.teacher_tokens)
        answers = judged_answers(request)
        item = item_of(" ".join(answers.values()))
        read = sum(len(a) for a in answers.values()) // 4 + item.guided_tokens
        if role == "judge_pair":
            a, b = is_right(answers["A"]), is_right(answers["B"])
            truth = "A" if a and not b else "B" if b and not a else "TIE"
            if mistaken(item, answers["A"], answers["B"]):
                truth = {"A": "B", "B": "A", "TIE": "A"}[truth]
            return Reply(verdict(truth), prompt_tokens=q + read + item.alone_tokens + 80,
                         completion_tokens=p.judge_tokens)
        right = is_right(answers.get("answer", "")) != mistaken(item, "grade")
        return Reply(verdict(10 if right else 0), prompt_tokens=q + read + 80, completion_tokens=p.judge_tokens)

    return FunctionBackend(student), FunctionBackend(teacher)


CONFIGS: dict[str, dict[str, Any]] = {
    "adaptive **(default)**": {},
    "adaptive, less conservative": {"adaptive": {"credibility": 0.9, "judge_miss_factor": 1.5}},
    "strict": {"policy": "strict"},
    "verify": {"policy": "verify"},
    "audit": {"policy": "audit"},
    "off": {"policy": "off"},
    "strict + gate": {"policy": "strict", "gate": "learned"},
    "audit + gate": {"policy": "audit", "gate": "learned"},
    "verify + gate + reuse": {"policy": "verify", "gate": "learned", "reuse": "family"},
    "adaptive + reuse": {"reuse": "family"},
}
TAUGHT = ("audit", "verify", "strict")
"""The explicit policies the hindsight rows choose among, besides the student alone."""
ACCURACY_GAP = 0.025
"""The accuracy target: delivered accuracy within 2.5 points of the per-family oracle."""
DEFAULT = "adaptive **(default)**"
QUICK_CONFIGS = (DEFAULT, "strict", "audit")


@dataclass
class Run:
    config: str
    reports: list[CallReport] = field(default_factory=list)
    right: list[bool] = field(default_factory=list)
    seconds: float = 0.0


async def run(mix: Mix, p: Params, items: list[Item], config: str) -> Run:
    student, teacher = backends(mix, p, items)
    price = p.teacher_price / 1e6
    ledger = FinalReports()
    atlas = Atlas(teacher=TEACHER, student_backend=student, teacher_backend=teacher, ledger=ledger, spool="none",
                  teacher_params={"input_cost_per_token": price, "output_cost_per_token": price}, **CONFIGS[config])
    student_prices = {"input_cost_per_token": p.student_in / 1e6, "output_cost_per_token": p.student_out / 1e6}
    out = Run(config)
    t0 = time.perf_counter()
    try:
        for start in range(0, len(items), p.concurrency):
            chunk = range(start, min(start + p.concurrency, len(items)))
            answers = await asyncio.gather(*(atlas.acompletion(
                model="student", messages=[{"role": "user", "content": f"Item {i}: a {items[i].family} word problem."}],
                **student_prices) for i in chunk))
            await atlas.aflush()  # audits finish (and teach the evidence) before the next calls
            for i, response in zip(chunk, answers, strict=True):
                out.reports.append(ledger.take(response.atlas))  # with its audit
                out.right.append(f"The answer is {items[i].truth}" in response.choices[0].message.content)
    finally:
        await atlas.aclose()
    out.seconds = time.perf_counter() - t0
    return out


def dollars(report: CallReport, p: Params) -> float:
    """The call's price from its per-role usage and the bench's prices (not the report's own)."""
    u, s_in, s_out, t = report.usage, p.student_in / 1e6, p.student_out / 1e6, p.teacher_price / 1e6
    student = sum(r.prompt_tokens * s_in + r.completion_tokens * s_out for r in (u.probe, u.guided, u.baseline))
    return student + sum(r.total_tokens * t for r in (u.teacher, u.judge))


def alone(item: Item, p: Params) -> tuple[float, float]:
    """What the student alone spends on the item: dollars and tokens."""
    return (p.question_tokens * p.student_in + item.alone_tokens * p.student_out) / 1e6, \
        p.question_tokens + item.alone_tokens


def oracle(items: list[Item]) -> tuple[float, dict[str, float]]:
    """The per-family oracle's accuracy: the better of alone and guided in each family (the
    tail's templates grouped by the family they behave like)."""
    groups: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        groups[it.family if not it.family.startswith("tail-") else f"tail ({it.kind})"].append(it)
    best = {g: max(sum(i.alone_right for i in its), sum(i.guided_right for i in its)) / len(its)
            for g, its in groups.items()}
    total = sum(best[g] * len(its) for g, its in groups.items()) / len(items)
    return total, best


@dataclass
class Served:
    """Per call of a run: delivered right or not, and what it cost (dollars, student tokens,
    model calls)."""

    name: str
    right: list[bool]
    usd: list[float]
    tokens: list[float]
    calls: list[float]
    chose: str = ""
    """A hindsight row's choice per family."""


def served(r: Run, p: Params) -> Served:
    return Served(r.config, r.right, [dollars(x, p) for x in r.reports],
                  [float(x.usage.student().total_tokens) for x in r.reports],
                  [float(x.usage.total().calls) for x in r.reports])


def student_alone(items: list[Item], p: Params) -> Served:
    return Served("student alone", [it.alone_right for it in items], [alone(it, p)[0] for it in items],
                  [float(alone(it, p)[1]) for it in items], [1.0] * len(items))


def hindsight(runs: dict[str, Served], items: list[Item], p: Params, by_kind: bool) -> Served:
    """Not a policy anyone can run: each family served the way that, in this very run, turned
    out cheapest while the mix met the targets, chosen among the student alone and the
    explicit policies ``TAUGHT``: every family's NDR at least ``ndr_target``, and delivered
    accuracy within ``ACCURACY_GAP`` of the per-family oracle. With ``by_kind`` each tail
    template is grouped with the family it behaves like, which nothing in its own few calls
    could reveal. The floor under any rule that picks one of these modes per family."""
    tolerance = AdaptiveRule().tolerance
    base = student_alone(items, p)
    groups: dict[str, list[int]] = defaultdict(list)
    for k, it in enumerate(items):
        groups[f"tail ({it.kind})" if by_kind and it.family.startswith("tail-") else _group(it)].append(k)
    choices = [base, *(runs[t] for t in TAUGHT)]
    # Per group, the choices that keep its NDR: (right, dollars, choice).
    options = [[(sum(c.right[k] for k in idx), sum(c.usd[k] for k in idx), c) for c in choices
                if sum(items[k].alone_right and not c.right[k] for k in idx) <= tolerance * len(idx)]
               for idx in groups.values()]
    needed = (oracle(items)[0] - ACCURACY_GAP) * len(items)
    combos = list(itertools.product(*options))
    met = [c for c in combos if sum(o[0] for o in c) >= needed]
    best = min(met, key=lambda c: sum(o[1] for o in c)) if met else max(combos, key=lambda c: sum(o[0] for o in c))
    what = "per template kind" if by_kind else "per family"
    name = (f"hindsight {what}, cheapest within the targets (not a policy)" if met
            else f"hindsight {what}: nothing meets the accuracy target; the most accurate (not a policy)")
    chose = ", ".join(f"{g} {'skip' if c is base else c.name}" for g, (_, _, c) in zip(groups, best, strict=True))
    out = Served(name, list(base.right), list(base.usd), list(base.tokens), list(base.calls), chose)
    for idx, (_, _, chosen) in zip(groups.values(), best, strict=True):
        for k in idx:
            out.right[k], out.usd[k], out.tokens[k], out.calls[k] = chosen.right[k], chosen.usd[k], \
                chosen.tokens[k], chosen.calls[k]
    return out


def summary(s: Served, items: list[Item], p: Params) -> dict[str, float]:
    n = len(items)
    base = student_alone(items, p)
    degraded = sum(it.alone_right and not ok for it, ok in zip(items, s.right, strict=True))
    accuracy = sum(s.right) / n
    return {"accuracy": accuracy, "ndr": 1 - degraded / n, "usd": sum(s.usd) / sum(base.usd),
            "tokens": sum(s.tokens) / sum(base.tokens), "oracle": accuracy - oracle(items)[0],
            "calls": sum(s.calls) / n}


def main_table(rows: list[Served], items: list[Item], p: Params) -> str:
    lines = ["| policy | delivered accuracy | vs per-family oracle | NDR | dollars vs alone | student tokens vs alone "
             "| calls |", "|" + "---|" * 7]
    for r in rows:
        s = summary(r, items, p)
        lines.append(f"| {r.name} | {100 * s['accuracy']:.1f}% | {100 * s['oracle']:+.1f} | {100 * s['ndr']:.2f}% | "
                     f"{s['usd']:.2f}x | {s['tokens']:.2f}x | {s['calls']:.2f} |")
    return "\n".join(lines)


def _group(it: Item) -> str:
    return "tail" if it.family.startswith("tail-") else it.family


def family_table(r: Run, items: list[Item], p: Params) -> str:
    """Per family under the default: what was delivered, and the mode it ended in."""
    _, best = oracle(items)
    lines = ["| family | calls | alone | delivered | oracle | NDR | dollars vs alone | modes (share of calls) | "
             "final mode |", "|" + "---|" * 9]
    for name in sorted({_group(it) for it in items}, key=lambda g: (g == "tail", g)):
        idx = [k for k, it in enumerate(items) if _group(it) == name]
        its = [items[k] for k in idx]
        modes = Counter(r.reports[k].mode or "-" for k in idx)
        shares = ", ".join(f"{m} {100 * c / len(idx):.0f}%" for m, c in modes.most_common())
        ora = (sum(best[it.family if name != "tail" else f"tail ({it.kind})"] for it in its) / len(its))
        degraded = sum(it.alone_right and not r.right[k] for k, it in zip(idx, its, strict=True))
        usd = sum(dollars(r.reports[k], p) for k in idx) / sum(alone(it, p)[0] for it in its)
        final = "many" if name == "tail" else (r.reports[idx[-1]].mode or "-")
        lines.append(f"| {name} | {len(idx)} | {100 * sum(i.alone_right for i in its) / len(its):.1f}% | "
                     f"{100 * sum(r.right[k] for k in idx) / len(idx):.1f}% | {100 * ora:.1f}% | "
                     f"{100 * (1 - degraded / len(idx)):.2f}% | {usd:.2f}x | {shares} | {final} |")
    return "\n".join(lines)


async def repeated(mix: Mix, p: Params, seeds: range) -> str:
    """The default again on other seeds (another workload, other call ids): how far one run's
    figures are from the next."""
    figures = []
    for seed in seeds:
        q = replace(p, seed=seed)
        items = workload(mix, q)
        figures.append(summary(served(await run(mix, q, items, DEFAULT), q), items, q))

    def spread(key: str, scale: float, fmt: str) -> str:
        values = [scale * f[key] for f in figures]
        return f"{sum(values) / len(values):{fmt}} ({min(values):{fmt}} to {max(values):{fmt}})"

    return (f"Default over seeds {seeds.start}-{seeds.stop - 1} (mix {mix.name}): NDR {spread('ndr', 100, '.2f')}%, "
            f"{spread('oracle', 100, '+.1f')} points against the oracle, dollars {spread('usd', 1, '.2f')}x, "
            f"student tokens {spread('tokens', 1, '.2f')}x")


async def main_async(args: argparse.Namespace) -> None:
    p = Params(calls=args.calls, seed=args.seed, concurrency=args.concurrency)
    mixes = [m for m in MIXES if m.name in args.mixes.split(",")]
    configs = QUICK_CONFIGS if args.quick else tuple(CONFIGS)
    headline: list[str] = []
    for mix in mixes:
        items = workload(mix, p)
        n = len(items)
        shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in mix.weights.items())
        templates = len({it.family for it in items if it.family.startswith("tail-")})
        print(f"## Mix {mix.name}: {n} calls ({shares}; {templates} tail templates); judge wrong "
              f"{100 * mix.judge_error_rate:.0f}% of the time ({100 * mix.hard_share:.0f}% hard items, wrong together "
              f"{100 * mix.hard_error:.0f}%); alone right {100 * sum(i.alone_right for i in items) / n:.1f}%, "
              f"per-family oracle {100 * oracle(items)[0]:.1f}%; seed {p.seed}\n")
        runs = [await run(mix, p, items, config) for config in configs]
        rows = [served(r, p) for r in runs]
        by_name = {r.name: r for r in rows}
        if all(t in by_name for t in TAUGHT):
            rows += [hindsight(by_name, items, p, by_kind=False), hindsight(by_name, items, p, by_kind=True)]
        print(main_table(rows, items, p))
        for r in rows:
            if r.chose:
                print(f"\n{r.name.split(',')[0].split(':')[0].capitalize()}: {r.chose}.")
        print(f"\nPer family under the default (mix {mix.name}):\n")
        print(family_table(runs[0], items, p))
        print(f"\n({len(runs)} runs in {sum(r.seconds for r in runs):.0f} s)\n")
        if args.repeat:
            print(await repeated(mix, p, range(p.seed + 1, p.seed + 1 + args.repeat)) + "\n")
        s = summary(rows[0], items, p)
        headline.append(f"mix {mix.name}: NDR {100 * s['ndr']:.2f}%, {100 * s['oracle']:+.1f} points against the "
                        f"oracle, {s['usd']:.2f}x dollars, {s['tokens']:.2f}x student tokens")
    print("Default: " + "; ".join(headline))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=Params.calls)
    ap.add_argument("--mixes", default=",".join(m.name for m in MIXES))
    ap.add_argument("--quick", action="store_true", help="mix A, 2,000 calls, three rows")
    ap.add_argument("--concurrency", type=int, default=Params.concurrency)
    ap.add_argument("--seed", type=int, default=Params.seed)
    ap.add_argument("--repeat", type=int, default=0, help="run the default on this many more seeds, per mix")
    args = ap.parse_args(argv)
    if args.quick:
        args.calls, args.mixes = min(args.calls, 2000), "A"
    return args


if __name__ == "__main__":
    asyncio.run(main_async(parse_args()))
