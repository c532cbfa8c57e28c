"""``atlas-middleware demo``: the whole teaching loop, offline, on a real (tiny) model.

It runs a few GSM8K problems (a committed sample, see ``data/ATTRIBUTION.md``) through
``Atlas`` with the embedded SmolLM2-135M-Instruct as both student and teacher, and prints
what happened on each call (decision, reason, guidance, tokens per role) and then the
savings table. Then it runs a few of them again under ``policy: shadow``, the first step of
adoption: each call returns the student's own answer at once, teaching and the comparison
run after it in the background, and the savings report's shadow table says what teaching
would have delivered. No network, no API key, no download.

What it shows is the *mechanism*: real probe/teacher/guided/baseline calls, real token
counts, the non-degradation policy at work. A 135M model is a weak student and a weaker
teacher, so it does not show the teaching gain of an 8B teacher; the output says so.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..backends.local.embedded import EMBEDDED_MODEL
from ..report import CallReport
from ..teaching.answers import answers_equivalent, extract_answer
from ..usage import ROLES, Usage, UsageByRole
from .app import app

SYSTEM = "Solve the math problem. Reason step by step in a few short lines, then end with: The answer is N."

HONESTY = (
    "SmolLM2-135M is a tiny model (about 2% on GSM8K): this run shows the mechanism (real "
    "probe, teacher, guided and baseline calls, exact token counts, the non-degradation "
    "policy), not the teaching gain of an 8B teacher such as ATLAS-8B. As teacher it uses the "
    "'structured' protocol with its reply started with <teaching> for it (it cannot follow a "
    "format alone, and given the ATLAS teachers' prompt it echoes the prompt back); it often "
    "just states an answer, which is withheld (guidance_leaks_answer). It cannot judge either, "
    "so the demo uses the 'answer' judge, not the default teacher judge."
)
# What suits the embedded model (see HONESTY); a real teacher needs none of these.
DEMO_TEACHING: dict[str, Any] = {"teacher_protocol": "structured", "judge": "answer"}


@dataclass
class Problem:
    id: str
    question: str
    answer: str


@dataclass
class DemoResult:
    reports: list[CallReport] = field(default_factory=list)
    answers: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def usage(self) -> UsageByRole:
        total = UsageByRole()
        for report in self.reports:
            for role in ROLES:
                total.add(role, getattr(report.usage, role))
        return total

    def correct(self) -> int:
        return sum(answers_equivalent(extract_answer(a), p.answer)
                   for a, p in zip(self.answers, self.problems, strict=True))


def load_problems(path: Path | None = None, limit: int | None = None) -> list[Problem]:
    """The committed GSM8K sample, or a JSONL file with ``question`` and ``answer`` fields."""
    if path is None:
        text = resources.files("atlas_middleware").joinpath("data/gsm8k_sample.jsonl").read_text("utf-8")
    else:
        text = path.read_text("utf-8")
    problems = []
    for n, line in enumerate(text.splitlines()):
        if line.strip():
            item = json.loads(line)
            answer = str(item["answer"]).split("####")[-1].strip()
            problems.append(Problem(str(item.get("id", n)), item["question"], answer))
    return problems[:limit] if limit is not None else problems


def _messages(problem: Problem) -> list[dict[str, Any]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": problem.question}]


def run_demo(
    problems: list[Problem],
    *,
    model: str = EMBEDDED_MODEL,
    policy: str = "strict",
    answer_tokens: int = 160,
    probe_tokens: int = 48,
    teacher_tokens: int = 96,
    ledger: str = "none",
    threads: int | None = 1,
    console: Console | None = None,
) -> DemoResult:
    """Run ``problems`` through the loop and print each call; return the reports."""
    from ..backends.local import LocalBackend
    from ..backends.local.embedded import PrefilledTeacher
    from ..client import Atlas

    console = console or Console()
    result = DemoResult()
    # One shared backend: the model is loaded once, and the guided and baseline answers
    # (started together by the loop) are decoded in one batch.
    shared = LocalBackend.for_model(model, torch_threads=threads, batch_wait_ms=50)
    # CPU generation is slow: give the guidance path minutes, not the 10 s default.
    with Atlas(teacher=model, policy=policy, ledger=ledger, probe_max_tokens=probe_tokens,
               teacher_max_tokens=teacher_tokens, teacher_timeout=900.0, teacher_retries=1,
               student_backend=shared, teacher_backend=PrefilledTeacher(shared), **DEMO_TEACHING) as atlas:
        progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console, transient=True)
        with progress:
            task = progress.add_task("loading the model and teaching", total=len(problems))
            for problem in problems:
                response = atlas.completion(model=model, messages=_messages(problem), max_tokens=answer_tokens,
                                            temperature=0)
                report: CallReport = response.atlas
                text = response.choices[0].message.content or ""
                result.reports.append(report)
                result.answers.append(text)
                result.problems.append(problem)
                progress.console.print(_call_panel(len(result.reports), problem, report, text))
                progress.advance(task)
    return result


SHADOW_TASK = "gsm8k"
"""The shadow run's task family: the report's shadow table has one row for it (and ``all``)."""
STUDENT_PRICES = {"input_cost_per_token": 2.5e-6, "output_cost_per_token": 1e-5}
TEACHER_PRICES = {"input_cost_per_token": 1e-7, "output_cost_per_token": 1e-7}
"""The shadow run's prices, given the LiteLLM way so that its report shows dollars: the student
priced like a frontier API model, the teacher like a self-hosted 8B (docs/policies.md's benchmark)."""


def run_shadow(
    problems: list[Problem],
    *,
    model: str = EMBEDDED_MODEL,
    answer_tokens: int = 160,
    probe_tokens: int = 48,
    teacher_tokens: int = 96,
    ledger: str = "none",
    threads: int | None = 1,
    console: Console | None = None,
) -> DemoResult:
    """``problems`` under ``policy: shadow``, every call sampled (``shadow.rate`` 1 here; 0.2 by
    default). Each call returns the student's own answer at once; the demo then waits for its
    background teaching (a service would not) to print what it found. The reports returned
    are the completed ones, as the ledger has them."""
    from ..backends.local import LocalBackend
    from ..backends.local.embedded import PrefilledTeacher
    from ..client import Atlas

    console = console or Console()
    result = DemoResult()
    shared = LocalBackend.for_model(model, torch_threads=threads, batch_wait_ms=50)  # the one already loaded
    with Atlas(teacher=model, policy="shadow", shadow={"rate": 1.0}, ledger=ledger, probe_max_tokens=probe_tokens,
               teacher_max_tokens=teacher_tokens, teacher_timeout=900.0, teacher_retries=1,
               teacher_params=TEACHER_PRICES, student_backend=shared, teacher_backend=PrefilledTeacher(shared),
               **DEMO_TEACHING) as atlas:
        for problem in problems:
            response = atlas.completion(model=model, messages=_messages(problem), max_tokens=answer_tokens,
                                        temperature=0, atlas={"task": SHADOW_TASK}, **STUDENT_PRICES)
            delivered: CallReport = response.atlas
            atlas.flush()  # the background teaching, done
            rows = [r for r in atlas.ledger.records() if r.call_id == delivered.call_id]
            report = rows[0].report() if rows else delivered
            text = response.choices[0].message.content or ""
            result.reports.append(report)
            result.answers.append(text)
            result.problems.append(problem)
            console.print(_shadow_panel(len(result.reports), problem, delivered, report))
    return result


def _shadow_panel(n: int, problem: Problem, delivered: CallReport, report: CallReport) -> str:
    shadow = report.shadow
    background = ", ".join(f"{r} {_tokens(getattr(report.usage, r))}" for r in ("probe", "teacher", "guided", "judge")
                           if getattr(report.usage, r).calls) or "nothing"
    would = ("not run" if shadow is None or shadow.reason is None
             else f"{shadow.decision} ({shadow.reason.value})")
    return (
        f"[bold]shadow #{n} {problem.id}[/bold]: delivered [cyan]{delivered.decision}[/cyan] "
        f"({delivered.reason.value}), the student's own answer, in {delivered.latency_ms.get('total', 0):.0f} ms\n"
        f"  then in the background: {background}; strict would have delivered {would}\n"
    )


def shadow_report(ledger: str, console: Console) -> None:
    """The savings report's shadow figures (``atlas-middleware report``'s shadow table), from the
    ledger the shadow calls were written to, one line per task family and one for all."""
    from ..ledger import open_ledger
    from ..offline.reporting.render import SHADOW_HEADERS, SHADOW_NOTE, shadow_row
    from ..offline.reporting.summary import summarize

    store = open_ledger(ledger)
    try:
        summary = summarize(store.records(), ledger=ledger)
    finally:
        store.close()
    overall = summary.overall.shadow
    if overall is None:
        console.print("no shadow calls in the ledger")
        return
    console.print("[bold]Shadow report[/bold]: what teaching would have delivered (atlas-middleware report)")
    groups = [g for g in summary.families if g.shadow is not None] + [summary.overall]
    for g in groups:
        cells = shadow_row(g)
        console.print(f"  {cells[0]}: " + "; ".join(f"{h} {c}" for h, c in zip(SHADOW_HEADERS[1:], cells[1:],
                                                                                  strict=True)), markup=False)
    console.print(SHADOW_NOTE.format(n=overall.priced), markup=False)


def _tokens(u: Usage) -> str:
    return f"{u.prompt_tokens}+{u.completion_tokens}" if u.calls else "-"


def _call_panel(n: int, problem: Problem, report: CallReport, text: str) -> str:
    got = extract_answer(text)
    mark = "right" if answers_equivalent(got, problem.answer) else "wrong"
    guidance = (report.guidance or "").strip().replace("\n", " ")
    if len(guidance) > 220:
        guidance = guidance[:217] + "..."
    usage = report.usage
    roles = ", ".join(f"{r} {_tokens(getattr(usage, r))}" for r in ROLES if getattr(usage, r).calls)
    saved = "n/a" if report.tokens_saved is None else f"{report.tokens_saved:+d}"
    net = "n/a" if report.net_tokens is None else f"{report.net_tokens:+d}"
    level = report.diagnosis.level if report.diagnosis else None
    return (
        f"[bold]#{n} {problem.id}[/bold]: {problem.question[:90]}{'...' if len(problem.question) > 90 else ''}\n"
        f"  decision [cyan]{report.decision}[/cyan] ({report.reason.value}); protocol {report.protocol}; "
        f"teacher level {level}\n"
        f"  guidance: {guidance or '(none)'}\n"
        f"  tokens (prompt+completion): {roles}\n"
        f"  delivered answer {got!r} vs {problem.answer!r}: {mark}; "
        f"completion tokens saved {saved}, net {net}\n"
    )


def savings_table(result: DemoResult) -> Table:
    table = Table(title="Tokens by role (exact: counted by the model's own tokenizer)")
    for col in ("role", "calls", "prompt", "completion", "total"):
        table.add_column(col, justify="left" if col == "role" else "right")
    usage = result.usage()
    for role in ROLES:
        u = getattr(usage, role)
        table.add_row(role, str(u.calls), str(u.prompt_tokens), str(u.completion_tokens), str(u.total_tokens))
    total = usage.total()
    table.add_row("[bold]all", str(total.calls), str(total.prompt_tokens), str(total.completion_tokens),
                  str(total.total_tokens))
    return table


def summary_lines(result: DemoResult) -> list[str]:
    # Calls with their own baseline: an estimate from the family's baselines is not a measurement.
    measured = [r for r in result.reports if r.tokens_saved is not None and r.counterfactual_basis == "measured"]
    saved = sum(r.tokens_saved or 0 for r in measured)
    net = sum(r.net_tokens or 0 for r in measured)
    decisions: dict[str, int] = {}
    for r in result.reports:
        decisions[r.decision] = decisions.get(r.decision, 0) + 1
    return [
        f"calls: {len(result.reports)}; decisions: "
        + ", ".join(f"{k} {v}" for k, v in sorted(decisions.items())),
        f"delivered answers right: {result.correct()}/{len(result.reports)}",
        f"completion tokens saved vs the student alone (calls with a baseline, {len(measured)}): {saved:+d}",
        f"net tokens (everything spent minus the student-alone call): {net:+d} "
        "(positive = the middleware cost tokens)",
    ]


@app.command()
def demo(
    limit: int = typer.Option(3, "--limit", "-n", min=1, help="How many problems to run."),
    policy: str = typer.Option("strict", help="strict | verify | audit | off"),
    data: str | None = typer.Option(None, help="JSONL with question/answer fields (default: bundled GSM8K sample)."),
    answer_tokens: int = typer.Option(160, help="Token cap of the guided and baseline answers."),
    probe_tokens: int = typer.Option(48, help="Token cap of the student's diagnostic probe."),
    teacher_tokens: int = typer.Option(96, help="Token cap of the teacher's diagnosis and guidance."),
    ledger: str | None = typer.Option(
        None, help="Ledger URL (default: a throwaway SQLite file in a temporary folder)."
    ),
    threads: int = typer.Option(
        1, min=1, help="torch CPU threads. A 135M model gains little from more, and on a busy "
        "shared CPU extra threads spin against each other and slow it down several-fold.",
    ),
    shadow: int = typer.Option(
        2, min=0, help="How many of the problems to run again under policy shadow (0: none), for its report.",
    ),
) -> None:
    """Run a few GSM8K problems through the teaching loop with the embedded model, offline."""
    console = Console()
    console.print(f"[bold]atlas-middleware demo[/bold]: {EMBEDDED_MODEL} as student and teacher, offline.")
    console.print(f"[yellow]Note:[/yellow] {HONESTY}\n")
    problems = load_problems(Path(data) if data else None, limit)
    with tempfile.TemporaryDirectory(prefix="atlas-demo-") as tmp:
        url = ledger or f"sqlite:///{Path(tmp) / 'ledger.db'}"
        result = run_demo(problems, policy=policy, answer_tokens=answer_tokens, probe_tokens=probe_tokens,
                          teacher_tokens=teacher_tokens, ledger=url, threads=threads, console=console)
        console.print(savings_table(result))
        for line in summary_lines(result):
            console.print(line)
        if shadow:
            console.print(f"\n[bold]Shadow mode[/bold] (policy: shadow), the first step of adoption: "
                          f"{min(shadow, len(problems))} of the problems again, the student's own answer "
                          "delivered at once, teaching and the comparison after it, in the background. Priced "
                          "the LiteLLM way, for the demo: the student like a frontier API model ($2.50 / $10 per "
                          "million tokens in / out), the teacher like a self-hosted 8B ($0.10).")
            run_shadow(problems[:shadow], answer_tokens=answer_tokens, probe_tokens=probe_tokens,
                       teacher_tokens=teacher_tokens, ledger=url, threads=threads, console=console)
            shadow_report(url, console)
    console.print(f"\n[yellow]Reminder:[/yellow] {HONESTY}")
