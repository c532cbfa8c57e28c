"""``atlas-middleware eval``: the ATLAS benchmark tables for a student/teacher pair."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import AtlasError
from .app import app
from .options import (
    ConfigOpt,
    JudgeOpt,
    LeakActionOpt,
    LedgerOpt,
    PolicyOpt,
    StudentApiBaseOpt,
    StudentApiKeyOpt,
    StudentOpt,
    TeacherApiBaseOpt,
    TeacherOpt,
    TeacherProtocolOpt,
    TeacherTimeoutOpt,
    atlas_kwargs,
    resolve_student,
    student_kwargs,
)

_DEFAULT_OUT = Path("atlas-eval")


@app.command("eval")
def eval_command(
    dataset: str = typer.Option(..., "--dataset", help="gsm8k | arc-challenge | arc-easy | PATH.jsonl"),
    student: StudentOpt = None,
    student_api_base: StudentApiBaseOpt = None,
    student_api_key: StudentApiKeyOpt = None,
    teacher: TeacherOpt = None,
    teacher_api_base: TeacherApiBaseOpt = None,
    policy: PolicyOpt = None,
    judge: JudgeOpt = None,
    teacher_protocol: TeacherProtocolOpt = None,
    leak_action: LeakActionOpt = None,
    teacher_timeout: TeacherTimeoutOpt = None,
    ledger: LedgerOpt = None,
    config: ConfigOpt = None,
    samples: int = typer.Option(32, "--samples", min=1, help="Samples per problem."),
    seed: int = typer.Option(42, "--seed", help="Sample s of every problem uses seed + s."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N problems."),
    concurrency: int = typer.Option(4, "--concurrency", min=1, help="Samples in flight at once."),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="Cap on each student answer."),
    temperature: float | None = typer.Option(
        None, "--temperature", min=0.0, help="Student temperature (default: 0 for one sample, 0.7 for more)."
    ),
    out: Annotated[Path, typer.Option("--out", help="Folder for results.jsonl, tables, JSON and plots.")] = _DEFAULT_OUT,
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip the PNG plots."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar."),
) -> None:
    """Run DATASET through the middleware and write the ATLAS tables (resumable: rerun to continue)."""
    from ..client import Atlas
    from ..offline.eval import EvalSettings, evaluate

    student = resolve_student(student)
    try:
        atlas = Atlas(**atlas_kwargs(teacher=teacher, teacher_api_base=teacher_api_base, policy=policy,
                                     judge=judge, teacher_timeout=teacher_timeout, ledger=ledger,
                                  teacher_protocol=teacher_protocol, leak_action=leak_action,
                                     config=config))
        settings = EvalSettings(
            dataset=dataset, student=student, teacher=atlas.config.teacher_name, policy=atlas.config.policy,
            samples=samples, seed=seed, limit=limit, concurrency=concurrency, max_tokens=max_tokens,
            temperature=temperature, student_params=student_kwargs(student_api_base, student_api_key),
        )
        with atlas:
            result = evaluate(atlas, settings, out, progress=not no_progress, plots=not no_plots)
    except AtlasError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo(f"\ninterrupted: finished samples are in {out / 'results.jsonl'}; "
                   "rerun the same command to continue", err=True)
        raise typer.Exit(130) from None
    typer.echo(result.tables.read_text(encoding="utf-8"))
    typer.echo(f"[atlas] wrote {result.tables}, {result.json_path}"
               + "".join(f", {p}" for p in result.plots), err=True)
