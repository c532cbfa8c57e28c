"""``atlas-middleware export``: teacher-training data from real ledgers written through ``Atlas``.

Rewards are checked against hand-computed values: the teaching of the scripted teacher is
"Carry the one." (3 words), and the tests count tokens in words, so eff = 100 / 103.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from atlas_middleware.cli import commands  # noqa: F401  (registers the commands)
from atlas_middleware.cli.app import app
from atlas_middleware.errors import ConfigError
from atlas_middleware.learning.reward import adaptive_teaching_reward, efficiency_bonus
from atlas_middleware.ledger import open_ledger
from atlas_middleware.offline.export import (
    SPLITS,
    Example,
    ExportOptions,
    Grades,
    TiktokenCounter,
    build_examples,
    builtin_redact,
    load_redactor,
    rcl_row,
    split_of,
    write_export,
)
from atlas_middleware.teaching.protocols.atlas import TEACHER_INTRO

runner = CliRunner()
RIGHT, WRONG = "The answer is 42", "The answer is 41"
EFF = 100 / 103  # "Carry the one." is 3 words


class Words:
    name = "words"

    def count(self, text: str) -> int:
        return len(text.split())


def judge_42(messages: Any, answer: str) -> float:
    return 1.0 if answer.strip().endswith("42") else 0.0


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.db'}"


@pytest.fixture
def taught(make_atlas, db):  # type: ignore[no-untyped-def]
    """One call through ``Atlas`` into the ledger ``db``; returns its report."""

    def run(guided: str = RIGHT, baseline: str = WRONG, *, task: str | None = None, store_texts: bool = True,
            question: str = "What is 20 + 22?", **kwargs: Any) -> Any:
        kwargs.setdefault("judge", judge_42)
        atlas, *_ = make_atlas(student={"guided": guided, "baseline": baseline}, ledger=db,
                               store_texts=store_texts, **kwargs)
        opts = {"task": task} if task else {}
        resp = atlas.completion(model="student-model", messages=[{"role": "user", "content": question}],
                                atlas=opts)
        atlas.flush()
        return resp.atlas

    return run


def examples_of(db: str, options: ExportOptions | None = None, **kwargs: Any) -> tuple[list[Example], Any]:
    store = open_ledger(db)
    try:
        return build_examples(store.records(), Words(), options, **kwargs)
    finally:
        store.close()


# -- the reward, by hand --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("with_teaching", "without", "tokens", "expected"),
    [
        (False, True, 0, 0.0),  # degraded: 0, the documented 2x penalty is not applied as coded
        (False, True, 100, 0.0),
        (True, True, 0, 1.0),  # both right: 0.5 * (1 + 100/100)
        (True, True, 100, 0.75),  # 0.5 * (1 + 100/200)
        (True, True, 300, 0.625),  # 0.5 * (1 + 100/400)
        (False, False, 5, 0.0),  # both wrong
        (True, False, 0, 2.0),  # improved: 1 * (1 + 1)
        (True, False, 100, 1.5),
        (True, False, 25, 1.8),  # 1 + 100/125
        (None, None, 10, 0.0),  # no ground truth: 0.0 as published
    ],
)
def test_reward_matches_hand_computed_cases(with_teaching, without, tokens, expected) -> None:
    assert adaptive_teaching_reward(with_teaching, without, tokens) == pytest.approx(expected)


def test_reward_efficiency_weight_and_refusals() -> None:
    assert adaptive_teaching_reward(True, False, 100, efficiency_weight=0.0) == 1.0
    assert adaptive_teaching_reward(True, True, 100, efficiency_weight=2.0) == pytest.approx(1.0)  # 0.5*(1+2*0.5)
    assert efficiency_bonus(0) == 1.0 and efficiency_bonus(100) == 0.5
    with pytest.raises(ValueError):
        adaptive_teaching_reward(True, None, 3)
    with pytest.raises(ValueError):
        efficiency_bonus(-1)


# -- examples from real ledgers -------------------------------------------------------------


def test_compared_rewards_from_a_real_ledger(taught, db) -> None:
    assert taught(RIGHT, WRONG).reason.value == "judge_preferred_guided"
    assert taught(WRONG, RIGHT).reason.value == "judge_preferred_baseline"
    assert taught(RIGHT, RIGHT).reason.value == "agreement"
    assert taught(RIGHT, WRONG, policy="off").reason.value == "policy_off"
    improved, degraded, unchanged, off = examples_of(db)[0]

    assert (improved.outcome, improved.reward_basis) == ("improved", "compared")
    assert improved.reward == pytest.approx(1 + EFF)
    assert improved.teaching == "Carry the one." and improved.teaching_tokens == 3
    assert improved.teaching_tokens_counted_by == "words"
    assert (degraded.outcome, degraded.reward, degraded.reward_basis) == ("degraded", 0.0, "compared")
    # unchanged: both right or both wrong, nobody knows which: no reward unless told
    assert (unchanged.outcome, unchanged.reward, unchanged.reward_basis) == ("unchanged", None, "none")
    assert "--unchanged-as" in unchanged.reward_note
    assert (off.outcome, off.reward, off.reward_basis) == (None, None, "none")
    assert "policy_off" in off.reward_note

    as_right = examples_of(db, ExportOptions(unchanged_as="correct"))[0][2]
    assert (as_right.reward, as_right.reward_basis) == (pytest.approx(0.5 * (1 + EFF)), "compared")
    as_wrong = examples_of(db, ExportOptions(unchanged_as="wrong"))[0][2]
    assert (as_wrong.reward, as_wrong.reward_basis) == (0.0, "compared")
    heavier = examples_of(db, ExportOptions(efficiency_weight=2.0))[0][0]
    assert heavier.reward == pytest.approx(1 + 2 * EFF)


def test_an_example_carries_every_text_of_the_call(taught, db) -> None:
    report = taught(RIGHT, WRONG, task="sums")
    (ex,), _ = examples_of(db)
    assert ex.id == report.call_id and ex.family == "t:sums" and ex.policy == "strict"
    assert ex.messages == [{"role": "user", "content": "What is 20 + 22?"}]
    assert ex.question == "What is 20 + 22?"
    assert ex.probe == "Add the two numbers, watch the carry."
    assert ex.diagnosis and "forgets the carry" in ex.diagnosis and ex.level == 2
    assert (ex.guided_answer, ex.baseline_answer, ex.delivered_answer) == (RIGHT, WRONG, RIGHT)
    assert (ex.decision, ex.reason, ex.judge_winner) == ("guided", "judge_preferred_guided", "guided")
    assert ex.judge_scores == {"guided": 1.0, "baseline": 0.0}
    # provider-counted: the scripted teacher's whole reply, tags included, in words
    assert ex.teacher_completion_tokens == report.usage.teacher.completion_tokens > ex.teaching_tokens
    assert ex.guided_correct is None and ex.baseline_correct is None


def test_grades_give_exact_rewards(taught, db) -> None:
    a = taught(RIGHT, RIGHT)  # agreement: unknown from the comparison, known from grades
    b = taught(RIGHT, WRONG)
    grades = {a.call_id: Grades(call_id=a.call_id, guided_correct=True, baseline_correct=True),
              b.call_id: Grades(call_id=b.call_id, guided_correct=False, baseline_correct=False)}
    ex_a, ex_b = examples_of(db, grades=grades)[0]
    assert (ex_a.reward, ex_a.reward_basis, ex_a.outcome) == (pytest.approx(0.5 * (1 + EFF)), "graded", "unchanged")
    assert (ex_a.guided_correct, ex_a.baseline_correct) == (True, True)
    # the grades win over the judge, which preferred the guided answer
    assert (ex_b.reward, ex_b.reward_basis, ex_b.outcome) == (0.0, "graded", "unchanged")


def test_a_ledger_without_texts_is_refused_with_the_setting_to_turn_on(taught, db, tmp_path) -> None:
    taught(store_texts=False)
    taught(store_texts=False)
    with pytest.raises(ConfigError) as err:
        examples_of(db)
    assert "store_texts: true" in str(err.value) and "ATLAS_STORE_TEXTS=1" in str(err.value)
    assert "after that" in str(err.value)

    result = runner.invoke(app, ["export", "--ledger", db, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2
    assert "store_texts" in result.output and "ATLAS_STORE_TEXTS=1" in result.output
    assert not (tmp_path / "x").exists()


def test_records_without_texts_are_skipped_and_counted(taught, db) -> None:
    taught(store_texts=False)
    taught(RIGHT, WRONG)
    taught(WRONG, RIGHT)
    examples, summary = examples_of(db)
    assert len(examples) == 2 and summary.skipped["no_texts"] == 1
    assert "1 without stored texts" in summary.text()


def test_calls_that_never_taught_are_not_examples_unless_asked(make_atlas, db) -> None:
    atlas, *_ = make_atlas(ledger=db, store_texts=True, judge=judge_42)
    atlas.completion(model="m", messages=[{"role": "user", "content": "Hi?"}], atlas={"teach": False})
    atlas.completion(model="m", messages=[{"role": "user", "content": "What is 20 + 22?"}])
    atlas.flush()
    examples, summary = examples_of(db)
    assert len(examples) == 1 and summary.skipped == {"not_taught": 1}
    assert "1 never taught" in summary.text() and "train" in summary.text()
    everything, _ = examples_of(db, ExportOptions(include_untaught=True))
    untaught = everything[0]
    assert (untaught.teaching, untaught.reward, untaught.reward_basis) == (None, None, "none")


def test_policy_decision_and_min_reward_filters(taught, db) -> None:
    taught(RIGHT, WRONG)  # strict, guided, reward 1 + eff
    taught(WRONG, RIGHT)  # strict, baseline, reward 0
    taught(RIGHT, WRONG, policy="off")  # off, guided, no reward
    assert [e.reason for e in examples_of(db, ExportOptions(policy="off"))[0]] == ["policy_off"]
    baseline, summary = examples_of(db, ExportOptions(decision="baseline"))
    assert [e.reason for e in baseline] == ["judge_preferred_baseline"] and summary.skipped["filtered"] == 2
    kept, summary = examples_of(db, ExportOptions(min_reward=1.0))
    assert [e.outcome for e in kept] == ["improved"] and summary.skipped["below_min_reward"] == 2


def test_cli_filters_by_family_and_time(taught, db, tmp_path) -> None:
    taught(task="alpha")
    taught(task="beta")
    out = tmp_path / "fam"
    result = runner.invoke(app, ["export", "--ledger", db, "--out", str(out), "--family", "t:alpha",
                                 "--validation-share", "0"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert [r["family"] for r in rows] == ["t:alpha"]
    assert "1 example(s) (train 1, validation 0) from 1 ledger record(s)" in result.stdout
    future = runner.invoke(app, ["export", "--ledger", db, "--out", str(out), "--since", "2999-01-01"])
    assert future.exit_code == 0 and "0 example(s)" in future.stdout
    past = runner.invoke(app, ["export", "--ledger", db, "--out", str(out), "--until", "2000-01-01"])
    assert past.exit_code == 0 and "from 0 ledger record(s)" in past.stdout


# -- the split ------------------------------------------------------------------------------


def test_split_is_deterministic_and_keeps_families_whole(taught, db, tmp_path) -> None:
    for family in ("a", "b", "c", "d", "e", "f"):
        for n in range(2):
            taught(task=family, question=f"What is {n} + 22?")
    examples, _ = examples_of(db, ExportOptions(validation_share=0.5))
    sides: dict[str | None, set[str]] = {}
    for ex in examples:
        sides.setdefault(ex.family, set()).add(ex.split)
    assert all(len(s) == 1 for s in sides.values())  # a whole family on one side
    assert set().union(*sides.values()) == set(SPLITS)  # both sides used
    # the same on every machine: a SHA-256, not Python's salted hash()
    digest = hashlib.sha256(b"atlas-export-split-v1\0t:a").digest()
    expected = "validation" if int.from_bytes(digest[:8], "big") / 2**64 < 0.5 else "train"
    assert split_of("t:a", 0.5) == expected
    assert [split_of(f"t:{k}", 0.5) for k in "abcdef"] == [min(sides[f"t:{k}"]) for k in "abcdef"]
    assert split_of("t:a", 0.0) == "train" and split_of("t:a", 1.0) == "validation"

    first, second = tmp_path / "one", tmp_path / "two"
    for out in (first, second):
        result = runner.invoke(app, ["export", "--ledger", db, "--out", str(out), "--validation-share", "0.5"])
        assert result.exit_code == 0, result.output
    for split in SPLITS:
        assert (first / f"{split}.jsonl").read_bytes() == (second / f"{split}.jsonl").read_bytes()


def test_records_without_a_family_split_by_their_prompt() -> None:
    from atlas_middleware.offline.export import split_key

    class R:
        task_family = None
        prompt_sha256 = "ab" * 32

    assert split_key(R()) == "p:" + "ab" * 32  # type: ignore[arg-type]


# -- redaction ------------------------------------------------------------------------------

TEXT_FIELDS = ("question", "probe", "diagnosis", "teaching", "guided_answer", "baseline_answer", "delivered_answer")


def mark(text: str) -> str:
    return f"<<{text}>>"


def test_redaction_reaches_every_text_field(taught, db) -> None:
    taught(RIGHT, WRONG)
    (ex,), _ = examples_of(db, redact=mark)
    for name in TEXT_FIELDS:
        value = getattr(ex, name)
        assert value.startswith("<<") and value.endswith(">>"), name
    assert ex.messages == [{"role": "user", "content": "<<What is 20 + 22?>>"}]  # the role is not text
    (plain,), _ = examples_of(db)
    assert ex.teaching_tokens == plain.teaching_tokens  # counted on the teaching itself
    row = rcl_row(ex)
    assert "<<Carry the one.>>" in row["completion"] and "<<What is 20 + 22?>>" in row["prompt"]


def test_redaction_of_multipart_messages() -> None:
    from atlas_middleware.offline.export import _redacted

    messages = [{"role": "user", "content": [{"type": "text", "text": "mail a@b.io"},
                                              {"type": "image_url", "image_url": {"url": "x"}}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "tu_1", "name": "lookup",
                                                   "input": {"id": "bob@secret.com", "phone": 442079460958}}]}]
    out = _redacted(messages, builtin_redact, "messages")
    assert out[0]["content"][0] == {"type": "text", "text": "mail [EMAIL]"} and out[0]["role"] == "user"
    # ids and types of parts stay; a tool's input is the user's data, numbers included
    part = out[1]["content"][0]
    assert part["id"] == "tu_1" and part["type"] == "tool_use"
    assert part["input"]["id"] == "[EMAIL]" and part["input"]["phone"] in ("[PHONE]", "[CARD]")
    assert _redacted({"n": 42}, builtin_redact, "x") == {"n": 42}  # a number the hook leaves stays a number


def test_a_tag_and_a_session_id_are_redacted_too(taught, db) -> None:
    taught(RIGHT, WRONG, task="billing for jane@example.com")
    (ex,), _ = examples_of(db, redact=builtin_redact)
    assert ex.family == "t:billing for [EMAIL]"


def test_builtin_redaction_masks_personal_data() -> None:
    text = ("Write to jane.doe@example.co.uk or call +44 20 7946 0958; card 4111 1111 1111 1111, "
            "key sk-abcdefghijklmnop. The answer is 42, in 2024.")
    out = builtin_redact(text)
    assert "jane.doe" not in out and "7946" not in out and "4111" not in out and "sk-abc" not in out
    assert "[EMAIL]" in out and "[PHONE]" in out and "[CARD]" in out
    assert out.endswith("The answer is 42, in 2024.")  # small numbers stay


def test_redaction_hooks_that_cannot_load_or_raise_are_clear_errors(taught, db, tmp_path) -> None:
    assert load_redactor("builtin") is builtin_redact and load_redactor(None) is None
    assert load_redactor("json:dumps") is json.dumps
    for spec, words in (("nope_no_such_module:f", "cannot import"), ("json:no_such", "no attribute"),
                        ("json", "package.module:function"), ("json:decoder", "not callable")):
        with pytest.raises(ConfigError, match=words):
            load_redactor(spec)
    taught()

    def boom(text: str) -> str:
        raise RuntimeError("hook broke")

    with pytest.raises(ConfigError, match="redaction hook raised .*hook broke"):
        examples_of(db, redact=boom)
    with pytest.raises(ConfigError, match="returned int"):
        examples_of(db, redact=lambda s: 3)  # type: ignore[arg-type,return-value]
    result = runner.invoke(app, ["export", "--ledger", db, "--out", str(tmp_path / "r"),
                                 "--redact", "nope_no_such_module:f"])
    assert result.exit_code == 2 and "cannot import" in result.output


# -- formats --------------------------------------------------------------------------------


def test_jsonl_and_rcl_files(taught, db, tmp_path) -> None:
    taught(RIGHT, WRONG, task="sums")
    out = tmp_path / "jsonl"
    result = runner.invoke(app, ["export", "--ledger", db, "--out", str(out), "--validation-share", "0"])
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert (out / "validation.jsonl").read_text() == ""
    assert set(row) == set(Example.model_fields) and row["split"] == "train"
    assert row["teaching_tokens_counted_by"] == "tiktoken:cl100k_base"  # the default: offline
    assert row["teaching_tokens"] == TiktokenCounter().count("Carry the one.")
    assert row["reward"] == pytest.approx(1 + 100 / (100 + row["teaching_tokens"]))
    manifest = json.loads((out / "export.json").read_text())
    assert manifest["format"] == "jsonl" and manifest["written"] == {"train": 1}

    rcl = tmp_path / "rcl"
    result = runner.invoke(app, ["export", "--ledger", db, "--out", str(rcl), "--format", "rcl",
                                 "--validation-share", "0"])
    assert result.exit_code == 0, result.output
    (r,) = [json.loads(x) for x in (rcl / "train.jsonl").read_text().splitlines()]
    assert r["prompt"].startswith(TEACHER_INTRO) and r["prompt"].endswith("Your adaptive teaching:")
    assert "Question: What is 20 + 22?" in r["prompt"]
    assert "The student's initial approach:\nAdd the two numbers, watch the carry." in r["prompt"]
    assert r["completion"] == "<teaching>Carry the one.</teaching>"
    assert (r["student_approach"], r["teacher_teaching"]) == ("Add the two numbers, watch the carry.", "Carry the one.")
    assert r["reward_basis"] == "compared" and r["family"] == "t:sums"


def test_a_failed_write_leaves_no_half_file(taught, db, tmp_path, monkeypatch) -> None:
    taught()
    examples, _ = examples_of(db, ExportOptions(validation_share=0))
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.jsonl").write_text("old\n")
    calls = []

    def failing_fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 2:
            raise OSError("disk full")

    monkeypatch.setattr("atlas_middleware.offline.export.os.fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_export(examples, "jsonl", out)
    assert (out / "train.jsonl").read_text() == "old\n"  # the old file, whole
    assert sorted(p.name for p in out.iterdir()) == ["train.jsonl"]  # no temporary left behind
    monkeypatch.undo()
    write_export(examples, "jsonl", out)
    assert len((out / "train.jsonl").read_text().splitlines()) == 1


def test_hf_format_is_a_dataset_dict(taught, db, tmp_path) -> None:
    datasets = pytest.importorskip("datasets")
    for family in ("a", "b", "c", "d"):
        taught(task=family)
    out = tmp_path / "hf"
    result = runner.invoke(app, ["export", "--ledger", db, "--out", str(out), "--format", "hf",
                                 "--validation-share", "0.5"])
    assert result.exit_code == 0, result.output
    loaded = datasets.load_from_disk(str(out))
    assert set(loaded) == {"train", "validation"}
    assert loaded["train"].num_rows + loaded["validation"].num_rows == 4
    row = next(iter(loaded["train"] if loaded["train"].num_rows else loaded["validation"]))
    assert json.loads(row["messages"]) == [{"role": "user", "content": "What is 20 + 22?"}]
    assert row["teaching"] == "Carry the one." and row["reward_basis"] == "compared"
    assert set(row) == set(Example.model_fields)
    # an empty split is a split with the same columns and no rows
    empty = tmp_path / "hf-empty"
    result = runner.invoke(app, ["export", "--ledger", db, "--out", str(empty), "--format", "hf",
                                 "--validation-share", "0"])
    assert result.exit_code == 0, result.output
    loaded = datasets.load_from_disk(str(empty))
    assert (loaded["train"].num_rows, loaded["validation"].num_rows) == (4, 0)
    assert loaded["validation"].column_names == loaded["train"].column_names


def test_hf_format_names_its_extra_when_datasets_is_missing(taught, db, tmp_path, monkeypatch) -> None:
    import sys

    taught()
    examples, _ = examples_of(db)
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    from atlas_middleware.errors import MissingExtraError

    with pytest.raises(MissingExtraError, match=r"atlas-middleware\[export\]"):
        write_export(examples, "hf", tmp_path / "hf")


def test_cli_refuses_bad_choices(db, tmp_path) -> None:
    for args, words in ((["--format", "csv"], "--format"), (["--unchanged-as", "maybe"], "--unchanged-as"),
                        (["--decision", "both"], "--decision")):
        result = runner.invoke(app, ["export", "--ledger", db, "--out", str(tmp_path / "o"), *args])
        assert result.exit_code == 2 and words in result.output
    missing = runner.invoke(app, ["export", "--ledger", db, "--out", str(tmp_path / "o"),
                                  "--tokenizer", str(tmp_path / "no-such-folder")])
    assert missing.exit_code == 2 and "is not a folder" in missing.output


def test_guidance_reused_from_an_earlier_call_is_not_an_example(make_atlas, db) -> None:
    # The second step of a session gets the first step's teaching: the teacher never saw
    # this question and this approach, so the pair teaches it nothing.
    atlas, *_ = make_atlas(ledger=db, store_texts=True, judge=judge_42)
    for question in ("What is 20 + 22?", "And 21 + 21?"):
        r = atlas.completion(model="m", messages=[{"role": "user", "content": question}],
                             atlas={"session_id": "s1"}).atlas
    atlas.flush()
    assert r.guidance_reused
    examples, summary = examples_of(db)
    assert [e.question for e in examples] == ["What is 20 + 22?"] and summary.skipped == {"guidance_reused": 1}


def test_a_local_tokenizer_folder_counts_the_teaching(taught, db, tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from atlas_middleware.backends.local.embedded import ensure_converted

    folder = ensure_converted()  # the embedded SmolLM2's folder, converted once, offline
    expected = len(transformers.AutoTokenizer.from_pretrained(str(folder)).encode("Carry the one."))
    taught()
    out = tmp_path / "tok"
    result = runner.invoke(app, ["export", "--ledger", db, "--out", str(out), "--tokenizer", str(folder),
                                 "--validation-share", "0"])
    assert result.exit_code == 0, result.output
    (row,) = [json.loads(x) for x in (out / "train.jsonl").read_text().splitlines()]
    assert row["teaching_tokens_counted_by"] == f"hf:{folder.name}"
    assert row["teaching_tokens"] == expected
    assert row["reward"] == pytest.approx(1 + 100 / (100 + expected))


def test_an_evaluations_results_file_is_a_grades_file(db, tmp_path) -> None:
    """``atlas-middleware eval`` keeps each sample's call id: its results.jsonl joins the ledger."""
    from atlas_middleware import Atlas
    from atlas_middleware.offline.eval import EvalSettings, Problem, evaluate
    from atlas_middleware.offline.export import read_grades
    from atlas_middleware.testing import ScriptedBackend, teacher_reply

    student = ScriptedBackend({"probe": "I add.", "baseline": "The answer is 5.", "guided": "The answer is 4."})
    atlas = Atlas(student_backend=student, teacher_backend=ScriptedBackend({"teacher": teacher_reply("Carry the one.")}),
                  teacher="scripted-teacher", ledger=db, store_texts=True,
                  judge=lambda messages, answer: 1.0 if "5." in answer else 0.0)  # a judge that is wrong
    try:
        evaluate(atlas, EvalSettings(dataset="g", student="s", samples=2, concurrency=1), tmp_path / "eval",
                 problems=[Problem(id="q", question="What is 2 + 2?", answer="4")], progress=False, plots=False)
    finally:
        atlas.close()
    grades = read_grades(tmp_path / "eval" / "results.jsonl")
    assert len(grades) == 2 and all(g.guided_correct and not g.baseline_correct for g in grades.values())
    examples, _ = examples_of(db, grades=grades)
    assert {e.id for e in examples} == set(grades)
    for ex in examples:  # the gold answer wins over the judge, which preferred the baseline
        assert (ex.reward_basis, ex.outcome, ex.reward) == ("graded", "improved", pytest.approx(1 + EFF))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"call_id": "x", "guided_correct": true}\n')
    with pytest.raises(ConfigError, match="line 1"):
        read_grades(bad)


def test_a_mistyped_ledger_or_out_path_is_an_error_not_an_empty_export(tmp_path) -> None:
    typo = f"sqlite:///{tmp_path / 'typo' / 'none.db'}"
    result = runner.invoke(app, ["export", "--ledger", typo, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "no call is recorded in the ledger" in result.output
    assert not (tmp_path / "x").exists()
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        write_export([], "jsonl", tmp_path / "file")


def test_a_bad_grades_line_names_the_grades_fields(tmp_path) -> None:
    from atlas_middleware.offline.export import read_grades

    bad = tmp_path / "g.jsonl"
    bad.write_text('{"call_id": "c", "guided_correct": "maybe", "baseline_correct": true}\n')
    with pytest.raises(ConfigError) as err:
        read_grades(bad)
    assert "guided_correct" in str(err.value) and "problem_id" not in str(err.value)
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="--grades"):
        read_grades(bad)
