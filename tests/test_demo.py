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
def test_demo_prints_the_figures_its_ledger_holds(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import re

    from atlas_middleware.ledger import SQLiteLedger

    db = tmp_path / "demo.db"
    result = CliRunner().invoke(app, [
        "demo", "--limit", "2", "--answer-tokens", "40", "--probe-tokens", "16", "--teacher-tokens", "32",
        "--ledger", f"sqlite:///{db}", "--shadow", "1",
    ])
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())  # rich wraps long lines at the terminal width
    every = sorted(SQLiteLedger(db).records(), key=lambda r: r.created_at)
    rows = [r for r in every if r.policy != "shadow"]
    assert len(rows) == 2

    calls = re.findall(r"#\d (gsm8k-test-\d+): .*? decision (\w+) \((\w+)\); protocol (\w+); .*? "
                       r"tokens \(prompt\+completion\): (.*?) delivered answer .*? "
                       r"completion tokens saved (\S+), net (\S+?) ", out)
    assert len(calls) == 2, out
    for (_, decision, reason, protocol, tokens, saved, net), row in zip(calls, rows, strict=True):
        assert (decision, reason, protocol) == (row.decision, row.reason, "structured")
        printed = {role: (int(p), int(c)) for role, p, c in re.findall(r"(\w+) (\d+)\+(\d+)", tokens)}
        assert printed == {role: (t["prompt"], t["completion"]) for role, t in row.tokens.items() if t["calls"]}
        assert saved == ("n/a" if row.tokens_saved is None else f"{row.tokens_saved:+d}")
        assert net == ("n/a" if row.net_tokens is None else f"{row.net_tokens:+d}")

    # the savings table and the summary lines are the ledger's sums
    for role in ("probe", "teacher", "guided", "baseline", "judge"):
        p = sum(r.tokens[role]["prompt"] for r in rows)
        c = sum(r.tokens[role]["completion"] for r in rows)
        n = sum(r.tokens[role]["calls"] for r in rows)
        assert f"│ {role} │ {n} │ {p} │ {c} │ {p + c} │" in out
    measured = [r for r in rows if r.tokens_saved is not None]
    assert f"calls with a baseline, {len(measured)}): {sum(r.tokens_saved or 0 for r in measured):+d}" in out
    assert f"the student-alone call): {sum(r.net_tokens or 0 for r in measured):+d}" in out
    decisions = ", ".join(f"{d} {sum(r.decision == d for r in rows)}" for d in sorted({r.decision for r in rows}))
    assert f"calls: 2; decisions: {decisions}" in out
    assert "shows the mechanism" in out and "not the teaching gain" in out
    assert "'answer' judge" in out  # what suits the embedded model, said

    # Then the shadow run: the student's own answer at once, what strict would have done after,
    # and the savings report's shadow figures, from the same ledger.
    (shadow,) = [r.report() for r in every if r.policy == "shadow"]
    assert shadow.shadow is not None and shadow.shadow.reason is not None and shadow.shadow.decision is not None
    m = re.search(r"shadow #1 (gsm8k-test-\d+): delivered student_only \(shadow_sampled\), the student's own "
                  r"answer, in \d+ ms then in the background: (.*?); strict would have delivered (\w+) \((\w+)\)", out)
    assert m is not None, out
    assert (m[3], m[4]) == (shadow.shadow.decision, shadow.shadow.reason.value)
    assert m[1] == calls[0][0]  # the first problem again
    from atlas_middleware.offline.reporting.summary import summarize

    figures = summarize([r for r in every], ledger="x").overall.shadow
    assert figures is not None and figures.sampled == 1
    assert "Shadow report: what teaching would have delivered" in out
    assert f"t:gsm8k: shadow calls 1; sampled 1; compared {figures.compared};" in out
    assert f"all: shadow calls 1; sampled 1; compared {figures.compared};" in out
