"""Teacher-training data from a ledger that stored texts (``atlas-middleware export``).

One ledger record of a taught call becomes one **example**: the question, the student's
approach (its probe), the teacher's private diagnosis and its teaching, the guided and
baseline answers, what was delivered and why, the judge's verdict, the outcome of the
comparison (``outcomes.py``), the teaching's length in tokens and the adaptive-teaching
reward of the published training code (``reward.py``).

What the reward rests on is stated on every example (``reward_basis``):

* ``graded``: both answers were graded against a known answer (a ``--grades`` file keyed by
  call id): exact;
* ``compared``: from the call's comparison: ``improved`` reads as guided right and baseline
  wrong, ``degraded`` the reverse; ``unchanged`` says the two were equal but not whether
  they were right, so it is scored only when ``unchanged_as`` says how to read it
  (``correct`` or ``wrong``);
* ``none``: no reward (``reward`` is null): nothing compared the answers, or ``unchanged``
  under ``unchanged_as="skip"`` (the default). ``reward_note`` says which.

Examples go to ``train`` or ``validation`` by a SHA-256 of their task family (of their
prompt hash when they have none), so a whole family lands on one side, the same on every
machine. Formats: ``jsonl`` (the ``Example`` schema), ``rcl`` (the supervised rows of the
published training code, see ``rcl_row``) and ``hf`` (a ``datasets.DatasetDict``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import types
import typing
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ValidationError

from .._imports import import_object
from .._redact import redact as redact_secrets
from ..errors import ConfigError, MissingExtraError
from ..learning.outcomes import Outcome, from_grades, outcome_of
from ..learning.reward import EFFICIENCY_WEIGHT, adaptive_teaching_reward
from ..ledger import LedgerRecord
from ..report import CallReport
from ..teaching.prompts import defuse
from ..teaching.protocols.atlas import TEACHER_TEMPLATE, question_text

Format = Literal["jsonl", "rcl", "hf"]
FORMATS: tuple[Format, ...] = ("jsonl", "rcl", "hf")
UnchangedAs = Literal["skip", "correct", "wrong"]
UNCHANGED_AS: tuple[UnchangedAs, ...] = ("skip", "correct", "wrong")
RewardBasis = Literal["graded", "compared", "none"]
Split = Literal["train", "validation"]
SPLITS: tuple[Split, ...] = ("train", "validation")

STORE_TEXTS_HINT = (
    "set store_texts: true in the config file (or ATLAS_STORE_TEXTS=1) for the middleware that "
    "writes the ledger; only calls made after that can be exported"
)
SKIP_LABELS = {
    "no_texts": "without stored texts",
    "not_taught": "never taught",
    "guidance_reused": "reused an earlier call's guidance",
    "failed": "failed calls",
    "filtered": "filtered out (--policy / --decision)",
    "below_min_reward": "below --min-reward or without a reward",
}


class Grades(BaseModel):
    """Both answers of one call graded against a known answer (a line of a grades file)."""

    call_id: str
    guided_correct: bool
    baseline_correct: bool


class Example(BaseModel):
    """One training example: the ``jsonl`` format's line, the ``hf`` format's row."""

    id: str
    """The call id (the ledger's ``call_id``)."""
    created_at: str
    split: Split
    family: str | None
    student_model: str
    teacher_model: str | None
    policy: str
    protocol: str | None
    session_id: str | None
    question: str
    """The question as the ATLAS teacher template reads it (``protocols/atlas.py``): the
    user's message with the caller's system prompt above it, or a transcript."""
    messages: list[dict[str, Any]]
    """The request's messages as sent (tools and other parameters are not in the ledger)."""
    probe: str | None
    """The student's approach, as its probe stated it."""
    diagnosis: str | None
    """The teacher's private reasoning (never shown to the student)."""
    level: int | None
    teaching: str | None
    """The guidance the student got: the teacher's ``<teaching>`` text, after leak handling."""
    guidance_leak: str | None
    guided_answer: str | None
    guided_finish_reason: str | None
    baseline_answer: str | None
    baseline_finish_reason: str | None
    decision: str
    reason: str
    delivered_answer: str | None
    judge: str | None
    judge_winner: str | None
    judge_scores: dict[str, float]
    audit_sampled: bool
    audit_winner: str | None
    guided_correct: bool | None
    """Graded against a known answer (``--grades``); None when not graded."""
    baseline_correct: bool | None
    outcome: str | None
    """``improved`` / ``degraded`` / ``unchanged`` (``outcomes.py``, or the grades); None: not compared."""
    teaching_tokens: int | None
    """Tokens of ``teaching``, counted by ``teaching_tokens_counted_by``."""
    teaching_tokens_counted_by: str
    teacher_completion_tokens: int
    """The teacher's whole reply as its provider counted it (thinking included)."""
    teacher_reasoning_tokens: int
    """The part of ``teacher_completion_tokens`` the provider reported as reasoning."""
    reward: float | None
    reward_basis: RewardBasis
    reward_note: str


# -- counting the teaching ----------------------------------------------------------------


class TokenCounter(Protocol):
    name: str

    def count(self, text: str) -> int: ...


class TiktokenCounter:
    """``cl100k_base`` from the copy LiteLLM ships (it points tiktoken at that copy when it is
    imported, ``litellm/litellm_core_utils/default_encoding.py``): nothing is downloaded."""

    name = "tiktoken:cl100k_base"

    def __init__(self) -> None:
        from ..backends.litellm import import_litellm

        import_litellm()  # its cost map from the package, not the network
        from ..backends.compat import default_encoding

        self._encoding = default_encoding()

    def count(self, text: str) -> int:
        return len(self._encoding.encode(text, disallowed_special=()))


class HFTokenizerCounter:
    """A Hugging Face tokenizer from a local folder, offline; ``encode`` with its defaults,
    as the published reward counts (special tokens included where the tokenizer adds them)."""

    def __init__(self, path: str | Path) -> None:
        folder = Path(path)
        if not folder.is_dir():
            raise ConfigError(f"--tokenizer {str(path)!r} is not a folder (a local Hugging Face tokenizer)")
        try:
            from transformers import AutoTokenizer
        except ImportError as exc:
            raise MissingExtraError("counting teaching tokens with --tokenizer", "local", "transformers") from exc
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--tokenizer {str(path)!r}: no tokenizer could be loaded from it: {exc}") from exc
        self.name = f"hf:{folder.resolve().name}"

    def count(self, text: str) -> int:
        return len(self._tokenizer.encode(text))


def open_counter(tokenizer: str | Path | None) -> TokenCounter:
    """The named tokenizer folder, else ``cl100k_base`` (offline)."""
    return HFTokenizerCounter(tokenizer) if tokenizer else TiktokenCounter()


# -- redaction ----------------------------------------------------------------------------

Redactor = Callable[[str], str]

_PERSONAL = (
    # An address starts at the start of its run, and is read possessively: a search from
    # every character of a long "x.x.x..." would read the rest of the run each time.
    (re.compile(r"(?<![\w.+-])[\w.+-]++@[\w-]++(?:\.[\w-]++)++"), "[EMAIL]"),
    # 13 to 19 digits in groups of up to 4, as card numbers are written
    (re.compile(r"\b\d{4}(?:[ -]?\d{3,4}){2,3}(?:[ -]?\d{1,3})?\b"), "[CARD]"),
    (re.compile(r"(?<![\w.])\+?\d{1,3}[ .-]?\(?\d{2,4}\)?(?:[ .-]?\d{2,4}){2,3}(?![\w.])"), "[PHONE]"),
)


def builtin_redact(text: str) -> str:
    """``--redact builtin``: e-mail addresses, card and phone numbers masked, and the key
    shapes ``_redact.py`` masks everywhere. A pattern, not a guarantee: bring your own hook
    for names, addresses and what your domain holds."""
    for pattern, mask in _PERSONAL:
        text = pattern.sub(mask, text)
    return redact_secrets(text)


def load_redactor(spec: str | None) -> Redactor | None:
    """``builtin``, or ``package.module:function`` taking and returning a string."""
    if not spec:
        return None
    if spec == "builtin":
        return builtin_redact
    fn = import_object(spec, "--redact", f"--redact {spec!r}: use builtin or package.module:function")
    if not callable(fn):
        raise ConfigError(f"--redact {spec!r} is not callable")
    return typing.cast(Redactor, fn)


_TEXT_FIELDS = ("question", "probe", "diagnosis", "teaching", "guided_answer", "baseline_answer",
                "delivered_answer", "family", "session_id")
_STRUCTURAL_KEYS = frozenset({"role", "type", "id", "tool_call_id"})
_STRUCTURAL_DEPTH = 3
"""Structural keys are kept as they are only down to a tool call or content part (messages
list 0, message 1, its lists 2, a part or a call 3); deeper, in a tool's arguments or input,
``{"id": "bob@example.com"}`` is the user's data like any other."""


def _redacted(value: Any, hook: Redactor, name: str, depth: int = 0) -> Any:
    if isinstance(value, str):
        out = hook(value)
        if not isinstance(out, str):
            raise ConfigError(f"the redaction hook returned {type(out).__name__}, not a string ({name})")
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        # A phone or card number can be a JSON number: the hook sees it as text; the number
        # stays a number unless the hook changed it.
        text = str(value)
        out = _redacted(text, hook, name)
        return value if out == text else out
    if isinstance(value, list):
        return [_redacted(v, hook, name, depth + 1) for v in value]
    if isinstance(value, dict):
        return {k: v if k in _STRUCTURAL_KEYS and depth <= _STRUCTURAL_DEPTH else _redacted(v, hook, name, depth + 1)
                for k, v in value.items()}
    return value


def redact_example(example: Example, hook: Redactor) -> Example:
    """Every text of the example through ``hook``: the message texts (not roles or ids) and
    every text field. A hook that raises stops the export (``ConfigError``)."""
    try:
        update = {name: _redacted(getattr(example, name), hook, name) for name in _TEXT_FIELDS}
        update["messages"] = _redacted(example.messages, hook, "messages")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"the redaction hook raised on example {example.id}: {type(exc).__name__}: {exc}") from exc
    return example.model_copy(update=update)


# -- the split ----------------------------------------------------------------------------

_SPLIT_SALT = "atlas-export-split-v1"


def split_key(record: LedgerRecord) -> str:
    """What decides the split: the task family, else the prompt's hash."""
    return record.task_family or f"p:{record.prompt_sha256}"


def split_of(key: str, validation_share: float) -> Split:
    """``validation`` when the SHA-256 of the key, read as a number in [0, 1), falls below
    the share: every example of one key goes to one side, on every machine."""
    if not 0.0 <= validation_share <= 1.0:
        raise ConfigError(f"the validation share is in [0, 1], got {validation_share}")
    digest = hashlib.sha256(f"{_SPLIT_SALT}\0{key}".encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2.0**64 < validation_share else "train"


# -- records to examples ------------------------------------------------------------------


@dataclass
class ExportOptions:
    policy: str | None = None
    decision: str | None = None
    unchanged_as: UnchangedAs = "skip"
    efficiency_weight: float = EFFICIENCY_WEIGHT
    validation_share: float = 0.1
    include_untaught: bool = False
    """Also export calls that got no teaching (their reward is null)."""
    min_reward: float | None = None
    """Keep only examples with a reward of at least this."""
    context_chars: int = 12000
    """How much of a long request the question keeps (the middleware's ``context_chars``)."""


@dataclass
class ExportSummary:
    records: int = 0
    written: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    bases: Counter[str] = field(default_factory=Counter)

    def text(self) -> str:
        total = sum(self.written.values())
        splits = ", ".join(f"{s} {self.written[s]}" for s in SPLITS)
        line = f"{total} example(s) ({splits}) from {self.records} ledger record(s)"
        if self.bases:
            line += "; reward " + ", ".join(f"{b} {n}" for b, n in sorted(self.bases.items()))
        if self.skipped:
            line += "; skipped: " + ", ".join(
                f"{n} {SKIP_LABELS.get(why, why)}" for why, n in sorted(self.skipped.items()))
        return line


@dataclass(frozen=True)
class _Scored:
    reward: float | None
    basis: RewardBasis
    note: str
    outcome: Outcome | None


_READ_AS: dict[Outcome, tuple[bool, bool]] = {"improved": (True, False), "degraded": (False, True)}


def score(report: CallReport, grades: Grades | None, teaching_tokens: int | None,
          options: ExportOptions) -> _Scored:
    """The reward of one call and what it rests on (module docstring)."""
    if teaching_tokens is None:
        return _Scored(None, "none", "never taught", outcome_of(report))
    if grades is not None:
        g, b = grades.guided_correct, grades.baseline_correct
        reward = adaptive_teaching_reward(g, b, teaching_tokens, options.efficiency_weight)
        return _Scored(reward, "graded", f"graded: guided {_rw(g)}, baseline {_rw(b)}", from_grades(g, b))
    outcome = outcome_of(report)
    if outcome is None:
        return _Scored(None, "none", f"the answers were not compared ({report.reason.value})", None)
    if outcome == "unchanged":
        if options.unchanged_as == "skip":
            return _Scored(None, "none", "unchanged: whether both answers were right is unknown "
                           "(--unchanged-as correct|wrong scores it)", outcome)
        g = b = options.unchanged_as == "correct"
    else:
        g, b = _READ_AS[outcome]
    reward = adaptive_teaching_reward(g, b, teaching_tokens, options.efficiency_weight)
    return _Scored(reward, "compared", f"{outcome}: read as guided {_rw(g)}, baseline {_rw(b)}", outcome)


def _rw(correct: bool) -> str:
    return "right" if correct else "wrong"


def _skip_reason(record: LedgerRecord, report: CallReport, options: ExportOptions) -> str | None:
    if record.prompt_text is None:
        return "no_texts"
    if (options.policy and record.policy != options.policy) or (options.decision and record.decision != options.decision):
        return "filtered"
    if report.failed:
        return "failed"
    if report.guidance_reused:
        return "guidance_reused"  # written for an earlier call: not this question's teaching
    if not report.guidance and not options.include_untaught:
        return "not_taught"
    return None


def _messages(prompt_text: str) -> list[dict[str, Any]]:
    try:
        messages = json.loads(prompt_text)
    except json.JSONDecodeError:
        return [{"role": "user", "content": prompt_text}]
    return messages if isinstance(messages, list) else [{"role": "user", "content": prompt_text}]


def build_example(record: LedgerRecord, report: CallReport, counter: TokenCounter,
                  options: ExportOptions, grades: Grades | None = None) -> Example:
    """One example from one record that stored texts (``_skip_reason`` passed)."""
    assert record.prompt_text is not None
    messages = _messages(record.prompt_text)
    teaching = report.guidance or None
    tokens = counter.count(teaching) if teaching is not None else None
    scored = score(report, grades, tokens, options)
    answers = report.answers or {}
    guided, baseline = answers.get("guided"), answers.get("baseline")
    judge, audit = report.judge, report.audit
    return Example(
        id=record.call_id, created_at=record.created_at.astimezone(UTC).isoformat(),
        split=split_of(split_key(record), options.validation_share),
        family=record.task_family, student_model=record.student_model, teacher_model=record.teacher_model,
        policy=record.policy, protocol=report.protocol, session_id=record.session_id,
        question=question_text(messages, {}, options.context_chars), messages=messages,
        probe=report.probe, diagnosis=(report.diagnosis.text or None) if report.diagnosis else None,
        level=report.diagnosis.level if report.diagnosis else None,
        teaching=teaching, guidance_leak=report.guidance_leak,
        guided_answer=guided.content if guided else None,
        guided_finish_reason=guided.finish_reason if guided else None,
        baseline_answer=baseline.content if baseline else None,
        baseline_finish_reason=baseline.finish_reason if baseline else None,
        decision=record.decision, reason=record.reason, delivered_answer=record.answer_text,
        judge=judge.name if judge else None, judge_winner=judge.winner if judge else None,
        judge_scores=dict(judge.scores) if judge else {},
        audit_sampled=bool(audit and audit.sampled), audit_winner=audit.winner if audit else None,
        guided_correct=grades.guided_correct if grades else None,
        baseline_correct=grades.baseline_correct if grades else None,
        outcome=scored.outcome, teaching_tokens=tokens, teaching_tokens_counted_by=counter.name,
        teacher_completion_tokens=report.usage.teacher.completion_tokens,
        teacher_reasoning_tokens=report.usage.teacher.reasoning_tokens,
        reward=scored.reward, reward_basis=scored.basis, reward_note=scored.note,
    )


def build_examples(
    records: Iterable[LedgerRecord], counter: TokenCounter, options: ExportOptions | None = None, *,
    redact: Redactor | None = None, grades: Mapping[str, Grades] | None = None,
) -> tuple[list[Example], ExportSummary]:
    """Every exportable record as an example, in ledger order, and what was skipped and why.

    Raises ``ConfigError`` when there were records and none stored its texts: the ledger
    was written without ``store_texts``.
    """
    options = options or ExportOptions()
    grades = grades or {}
    summary = ExportSummary()
    examples: list[Example] = []
    for record in records:
        summary.records += 1
        report = record.report()
        why = _skip_reason(record, report, options)
        if why is not None:
            summary.skipped[why] += 1
            continue
        example = build_example(record, report, counter, options, grades.get(record.call_id))
        if options.min_reward is not None and (example.reward is None or example.reward < options.min_reward):
            summary.skipped["below_min_reward"] += 1
            continue
        if redact is not None:
            example = redact_example(example, redact)
        examples.append(example)
        summary.written[example.split] += 1
        summary.bases[example.reward_basis] += 1
    if summary.records and summary.skipped["no_texts"] == summary.records:
        raise ConfigError(
            f"none of the {summary.records} ledger record(s) stored its texts, so there is nothing "
            f"to train a teacher on: {STORE_TEXTS_HINT}"
        )
    return examples, summary


def _grades_of(line: str) -> Grades:
    """A grades line, or an evaluation's sample record (``results.jsonl``) with its call id."""
    try:
        return Grades.model_validate_json(line)
    except ValidationError as first:
        from .eval.records import SampleRecord

        try:
            sample = SampleRecord.model_validate_json(line)
        except ValidationError:
            raise first from None  # the grades line's error says more than the sample record's
        if sample.call_id is None:
            raise first from None
        return Grades(call_id=sample.call_id, guided_correct=sample.guided.correct,
                      baseline_correct=sample.alone.correct)


def read_grades(path: Path) -> dict[str, Grades]:
    """A JSONL file of ``{"call_id", "guided_correct", "baseline_correct"}`` lines, or an
    evaluation's ``results.jsonl`` (each sample's graded answers, by its call id)."""
    out: dict[str, Grades] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--grades {str(path)!r}: {exc}") from exc
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            g = _grades_of(line)
        except ValidationError as exc:
            raise ConfigError(f"{path}, line {n}: not a grades line "
                              f'({{"call_id", "guided_correct", "baseline_correct"}}): {exc}') from None
        out[g.call_id] = g
    return out


# -- formats ------------------------------------------------------------------------------


def rcl_row(example: Example) -> dict[str, Any]:
    """One row for the published training code (``Arc-Computer/RCL``; read, not run).

    ``prompt`` / ``completion``: what ``custom_data/sft_data.py`` reads from the
    Arc-ATLAS-Teach ``training/sft.jsonl`` (it puts ``prompt`` as the user message and
    ``completion`` as the assistant's under its adaptive-teaching system prompt). ``prompt``
    is the teacher template of ``configs/trainer/reward/adaptive_teaching.yaml`` filled with
    the question and the student's approach, as the ATLAS teachers saw it here
    (``protocols/atlas.py``); ``completion`` is the teaching in ``<teaching>`` tags, the block
    ``trainers/teacher_rewards.py`` measures. ``problem_text``, ``student_approach``,
    ``teacher_diagnosis`` and ``teacher_teaching`` are the field names the RCL docs give for
    that file (``docs/guides/data-requirements.md``).
    """
    approach = defuse((example.probe or "").strip())
    return {
        "prompt": TEACHER_TEMPLATE.format(question=example.question, approach=approach),
        "completion": f"<teaching>{example.teaching or ''}</teaching>",
        "problem_text": example.question,
        "student_approach": example.probe or "",
        "teacher_diagnosis": example.diagnosis or "",
        "teacher_teaching": example.teaching or "",
        "reward": example.reward,
        "reward_basis": example.reward_basis,
        "id": example.id,
        "family": example.family,
    }


_JSON_COLUMNS = frozenset({"messages", "judge_scores"})
_ARROW = {str: "string", int: "int64", float: "float64", bool: "bool"}


def hf_row(example: Example) -> dict[str, Any]:
    """The example with its two free-form fields as JSON text (``messages`` may mix string
    and multi-part contents, ``judge_scores`` has keys per judge: Arrow wants one type)."""
    row = example.model_dump()
    for name in _JSON_COLUMNS:
        row[name] = json.dumps(row[name], ensure_ascii=False, sort_keys=True)
    return row


def hf_features() -> Any:
    """The ``datasets.Features`` of ``hf_row``, from ``Example``'s annotations."""
    from datasets import Features, Value

    columns: dict[str, Any] = {}
    for name, info in Example.model_fields.items():
        if name in _JSON_COLUMNS:
            columns[name] = Value("string")
            continue
        annotation: Any = info.annotation
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        if typing.get_origin(annotation) is Literal:
            annotation = str
        columns[name] = Value(_ARROW[annotation])
    return Features(columns)


def _write_jsonl_files(rows_by_split: Mapping[Split, list[dict[str, Any]]], out: Path) -> list[Path]:
    """``train.jsonl`` and ``validation.jsonl``, each written to a temporary file first and
    renamed into place only when both are complete: a failed export leaves no half file."""
    out.mkdir(parents=True, exist_ok=True)
    temps: list[tuple[Path, Path]] = []
    try:
        for split in SPLITS:
            final = out / f"{split}.jsonl"
            tmp = out / f".{split}.jsonl.{os.getpid()}.tmp"
            temps.append((tmp, final))
            with tmp.open("w", encoding="utf-8") as fh:
                for row in rows_by_split[split]:
                    fh.write(json.dumps(row, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        for tmp, final in temps:
            tmp.replace(final)
    finally:
        for tmp, _ in temps:
            tmp.unlink(missing_ok=True)
    return [final for _, final in temps]


def write_export(examples: list[Example], fmt: Format, out: Path,
                 manifest: Mapping[str, Any] | None = None) -> list[Path]:
    """Write the examples in ``fmt`` into the folder ``out``; returns the paths written.

    ``jsonl`` and ``rcl``: ``train.jsonl`` and ``validation.jsonl``; ``hf``: a
    ``DatasetDict`` with ``train`` and ``validation`` (``save_to_disk``). Every format also
    gets ``export.json``: the settings and counts of the export.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; the export writes a folder")
    by_split: dict[Split, list[Example]] = {s: [e for e in examples if e.split == s] for s in SPLITS}
    if fmt == "hf":
        try:
            from datasets import Dataset, DatasetDict
        except ImportError as exc:
            raise MissingExtraError("--format hf", "export", "datasets") from exc
        features = hf_features()
        columns = list(features)  # by column, so that an empty split keeps its columns too

        def table(rows: list[Example]) -> Any:
            flat = [hf_row(e) for e in rows]
            return Dataset.from_dict({c: [r[c] for r in flat] for c in columns}, features=features)

        dataset = DatasetDict({s: table(rows) for s, rows in by_split.items()})
        out.mkdir(parents=True, exist_ok=True)
        # One shard for an empty split: with none, ``load_from_disk`` fails on it (datasets 5.2).
        dataset.save_to_disk(str(out), num_shards={s: 1 for s, rows in by_split.items() if not rows})
        paths = [out / "dataset_dict.json"]
    else:
        make_row = rcl_row if fmt == "rcl" else (lambda e: e.model_dump(mode="json"))
        paths = _write_jsonl_files({s: [make_row(e) for e in rows] for s, rows in by_split.items()}, out)
    if manifest is not None:
        path = out / "export.json"
        tmp = out / f".export.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"format": fmt, **manifest,
                                   "written_at": datetime.now(UTC).isoformat()}, indent=2, sort_keys=True) + "\n",
                       encoding="utf-8")
        tmp.replace(path)
        paths.append(path)
    return paths
