"""``atlas-middleware demo``: the README's main job, offline, on the embedded model."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from typer.testing import CliRunner

pytest.importorskip("torch")
pytest.importorskip("transformers")

from atlas_middleware.cli import demo as demo_module  # noqa: E402  (registers the command)
from atlas_middleware.cli.app import app  # noqa: E402


def test_bundled_gsm8k_sample_is_complete_and_attributed() -> None:
    data = resources.files("atlas_middleware").joinpath("data")
    items = [json.loads(line) for line in data.joinpath("gsm8k_sample.jsonl").read_text("utf-8").splitlines()]
    assert len(items) == 20
    for item in items:
        assert item["question"] and item["id"].startswith("gsm8k-test-")
        assert item["solution"].rstrip().endswith(f"#### {item['answer']}")
    attribution = data.joinpath("ATTRIBUTION.md").read_text("utf-8")
    assert "MIT License" in attribution and "GSM8K" in attribution
    assert [p.answer for p in demo_module.load_problems(limit=3)] == [i["answer"] for i in items[:3]]


@pytest.mark.slow
def test_demo_runs_the_loop_offline_and_prints_the_savings(tmp_path: object) -> None:
    result = CliRunner().invoke(app, [
        "demo", "--limit", "1", "--answer-tokens", "40", "--probe-tokens", "16", "--teacher-tokens", "32",
    ])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())  # rich wraps long lines at the terminal width
    assert "#1 gsm8k-test-" in out
    assert "decision" in out and "tokens (prompt+completion): probe" in out
    assert "protocol structured" in out and "'answer' judge" in out  # what suits the embedded model, said
    assert "Tokens by role" in out and "net tokens" in out
    assert "shows the mechanism" in out and "not the teaching gain" in out
