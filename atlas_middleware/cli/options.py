"""Options shared by the commands that run the loop (``run``, ``eval``, ``demo``).

Each is an ``Annotated`` alias, so a command declares ``student: StudentOpt = None`` and
gets the same flag, help text and environment fallback everywhere.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

StudentOpt = Annotated[str | None, typer.Option("--student", help="Student model (any LiteLLM model string, or local/...).")]
StudentApiBaseOpt = Annotated[str | None, typer.Option("--student-api-base", help="API base of the student (e.g. a vLLM server).")]
StudentApiKeyOpt = Annotated[str | None, typer.Option("--student-api-key", envvar="ATLAS_STUDENT_API_KEY", help="API key of the student.", show_envvar=True)]
TeacherOpt = Annotated[str | None, typer.Option("--teacher", help="Teacher model (LiteLLM model string, or local/...). [env ATLAS_TEACHER]")]
TeacherApiBaseOpt = Annotated[str | None, typer.Option("--teacher-api-base", help="API base of the teacher. [env ATLAS_TEACHER_API_BASE]")]
PolicyOpt = Annotated[str | None, typer.Option("--policy", help="adaptive (the default) | strict | verify | audit | off | shadow. [env ATLAS_POLICY]")]
JudgeOpt = Annotated[str | None, typer.Option("--judge", help="auto (the teacher, pairwise) | teacher | answer | package.module:callable. [env ATLAS_JUDGE]")]
TeacherProtocolOpt = Annotated[str | None, typer.Option("--teacher-protocol", help="auto | atlas | structured: how the teacher is prompted and read (auto: atlas for Arc-Intelligence/ATLAS-* teachers). [env ATLAS_TEACHER_PROTOCOL]")]
LeakActionOpt = Annotated[str | None, typer.Option("--leak-action", help="strip | fallback | allow: guidance that states an answer. [env ATLAS_LEAK_ACTION]")]
TeacherTimeoutOpt = Annotated[float | None, typer.Option("--teacher-timeout", help="Seconds per guidance-path call. [env ATLAS_TEACHER_TIMEOUT]")]
LedgerOpt = Annotated[str | None, typer.Option("--ledger", help="sqlite:///path.db, postgresql://... or none. [env ATLAS_LEDGER]")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML file of settings. [env ATLAS_CONFIG]")]


def atlas_kwargs(
    *, teacher: str | None, teacher_api_base: str | None, policy: str | None, judge: str | None,
    teacher_timeout: float | None, ledger: str | None, config: Path | None,
    teacher_protocol: str | None = None, leak_action: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``Atlas(...)``: flags override the file and the environment."""
    return {
        "teacher": teacher, "teacher_api_base": teacher_api_base, "policy": policy, "judge": judge,
        "teacher_timeout": teacher_timeout, "ledger": ledger, "teacher_protocol": teacher_protocol,
        "leak_action": leak_action,
        "config_file": str(config) if config else None,
    }


def resolve_student(student: str | None) -> str:
    """The student model from ``--student``, else ``ATLAS_STUDENT``; a usage error if neither."""
    student = student or os.environ.get("ATLAS_STUDENT")
    if not student:
        raise typer.BadParameter("give the student model with --student (or ATLAS_STUDENT)")
    return student


def student_kwargs(api_base: str | None, api_key: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if api_base:
        out["api_base"] = api_base
    if api_key:
        out["api_key"] = api_key
    return out
