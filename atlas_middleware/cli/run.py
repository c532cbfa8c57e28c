"""``atlas-middleware run``: one prompt through the teaching loop."""

from __future__ import annotations

import sys

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


@app.command()
def run(
    prompt: str = typer.Argument(..., help="The user's message ('-' reads standard input)."),
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
    max_tokens: int | None = typer.Option(None, "--max-tokens", help="Cap on the student's answer."),
    system: str | None = typer.Option(None, "--system", help="A system message for the student."),
    as_json: bool = typer.Option(False, "--json", help="Print the CallReport as JSON instead of the answer."),
) -> None:
    """Send PROMPT to the student through the teacher and print the delivered answer."""
    from ..client import Atlas

    if prompt == "-":
        prompt = sys.stdin.read()
    student = resolve_student(student)
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    params = student_kwargs(student_api_base, student_api_key)
    if max_tokens:
        params["max_tokens"] = max_tokens
    try:
        with Atlas(**atlas_kwargs(teacher=teacher, teacher_api_base=teacher_api_base, policy=policy,
                                  judge=judge, teacher_timeout=teacher_timeout, ledger=ledger,
                                  teacher_protocol=teacher_protocol, leak_action=leak_action,
                                  config=config)) as atlas:
            response = atlas.completion(model=student, messages=messages, **params)
            atlas.flush()
    except AtlasError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    report = response.atlas
    if as_json:
        typer.echo(report.model_dump_json(indent=2))
        return
    typer.echo(response.choices[0].message.content or "")
    typer.echo(f"\n[atlas] {report.summary()}", err=True)
