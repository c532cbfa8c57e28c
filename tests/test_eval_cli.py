"""``atlas-middleware eval`` over real HTTP: LiteLLM talking to the OpenAI-compatible test server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from atlas_middleware.cli import (
    app,
    commands,  # noqa: F401  (registers the commands)
)
from atlas_middleware.messages import ChatRequest
from atlas_middleware.testing import OpenAITestServer, Reply, ScriptedBackend, teacher_reply


def _guided(request: ChatRequest) -> Reply:
    # The guided student answers "4" to every question; the baseline always says "5".
    return Reply("Two and two make four. The answer is 4.", completion_tokens=9)


@pytest.mark.slow
def test_eval_command_writes_tables_json_and_plots(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = tmp_path / "mine.jsonl"
    data.write_text('{"id": "a", "question": "2+2?", "answer": "4", "difficulty": "easy"}\n'
                    '{"id": "b", "question": "2+3?", "answer": "5", "difficulty": "hard"}\n')
    backend = ScriptedBackend({
        "probe": "Add the numbers.",
        "teacher": teacher_reply("Count on your fingers."),
        "baseline": Reply("The answer is 5.", completion_tokens=15),
        "guided": _guided,
    })
    monkeypatch.setenv("ATLAS_TEACHER_API_KEY", "test-key")
    out = tmp_path / "run"
    with OpenAITestServer(backend) as server:
        args = [
            "eval", "--dataset", str(data), "--student", "openai/student", "--student-api-base", server.url,
            "--student-api-key", "test-key", "--teacher", "openai/teacher", "--teacher-api-base", server.url,
            "--policy", "strict", "--judge", "answer", "--teacher-timeout", "20", "--ledger", "none",
            "--samples", "2", "--concurrency", "2", "--out", str(out), "--no-progress",
        ]
        result = CliRunner().invoke(app, [*args, "--seed", "3"])
        assert result.exit_code == 0, result.output
        seeds = sorted({r["body"].get("seed") for r in server.requests if r["body"].get("model") == "student"})
        # A rerun on the same folder has nothing left to do; other settings are refused.
        calls = len(server.requests)
        again = CliRunner().invoke(app, [*args, "--seed", "3", "--no-plots"])
        assert again.exit_code == 0, again.output
        assert len(server.requests) == calls
        refused = CliRunner().invoke(app, [*args, "--seed", "9"])
        assert refused.exit_code == 2 and "other settings" in refused.output

    assert seeds == [3, 4]  # sample s uses seed + s, sent to the provider
    assert "| Metric | Teacher+Student | Student alone | Delivered | Difference |" in result.output
    assert "## Accuracy by difficulty (the data set's own labels)" in result.output
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    # a: guided right, alone wrong; b: guided wrong, alone right. Strict delivers the baseline.
    assert metrics["overall"]["teacher_student"]["accuracy"]["mean"] == 0.5
    assert metrics["overall"]["student_alone"]["accuracy"]["mean"] == 0.5
    assert metrics["overall"]["delivered"]["accuracy"]["mean"] == 0.5
    assert metrics["overall"]["ndr_raw"] == 0.5 and metrics["overall"]["ndr_delivered"] == 1.0
    assert [g["label"] for g in metrics["by_difficulty"]] == ["easy", "hard"]
    assert metrics["overall"]["student_alone"]["response_tokens"] == 15
    assert {p.name for p in out.iterdir()} >= {"results.jsonl", "run.json", "tables.md", "metrics.json",
                                                "accuracy_by_difficulty.png", "tokens.png"}


def test_eval_command_reports_a_missing_data_set_cleanly(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["eval", "--dataset", str(tmp_path / "nope.jsonl"), "--student", "s",
                                      "--teacher", "t", "--ledger", "none", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no such data file" in result.output
