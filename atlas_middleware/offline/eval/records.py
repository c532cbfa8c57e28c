"""What one evaluated sample records, and the append-only results file that makes runs resumable.

Every finished sample is one JSON line, written and ``fsync``-ed before the next is counted,
so a crash loses at most the samples that were still running. On reopening, a torn last
line (the process died mid-write) is cut off, and a sample that appears twice (two runs on
the same folder) counts once: the first record wins. The key of a sample is
``(problem_id, sample)``.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from ..._redact import secret_logger
from ...errors import ConfigError

log = secret_logger("atlas_middleware.offline.eval")

Key = tuple[str, int]


class Arm(BaseModel):
    """One student answer (alone, guided or delivered), graded, with its cost."""

    text: str | None = None
    answer: str | None = None
    finish_reason: str | None = None
    completed: bool = False
    correct: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0
    error: str | None = None


class SampleRecord(BaseModel):
    """One (problem, sample) pair through the real middleware."""

    problem_id: str
    sample: int
    seed: int
    call_id: str | None = None
    """The middleware call's id (its ledger row); None when the call failed outright, and in
    records written before it was kept. ``atlas-middleware export --grades`` joins on it."""
    difficulty: str | None = None
    gold: str
    alone: Arm
    """The student alone (the policy's baseline call, or a separate opted-out call)."""
    guided: Arm
    """Teacher + student: the raw guided answer; the student's own when no guidance was given."""
    delivered: Arm
    """What the middleware returned after its policy's fallback."""
    taught: bool = False
    """True when a guided call was made (False: teacher skipped, failed or saw a strong student)."""
    guidance_leak: str | None = None
    """The teacher's guidance stated an answer: ``stripped``, ``withheld`` or ``allowed``
    (``leak_action``). A gain from ``allowed`` guidance is copying, not teaching."""
    decision: str = "student_only"
    reason: str = ""
    usage: dict[str, dict[str, int]] = Field(default_factory=dict)
    """Per role of the middleware call: prompt, completion and calls."""
    alone_separate: bool = False
    """True when the student-alone answer came from an extra call (policies without a baseline)."""
    spent_tokens: int = 0
    """Every token of the middleware call (all roles, prompt + completion)."""
    alone_tokens: int = 0
    """Prompt + completion tokens of the student alone: the counterfactual."""
    teaching_tokens: int = 0
    """Completion tokens of the probe and the teacher: what producing the guidance generated."""
    latency_ms: dict[str, float] = Field(default_factory=dict)
    errors: list[str] = Field(default_factory=list)

    @property
    def key(self) -> Key:
        return (self.problem_id, self.sample)

    @property
    def net_tokens(self) -> int:
        """Tokens the middleware spent beyond the student alone (negative: it saved)."""
        return self.spent_tokens - self.alone_tokens


class ResultsFile:
    """``results.jsonl`` in the output folder: read what exists, append what finishes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.records: dict[Key, SampleRecord] = {}
        self.duplicates = 0
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            # The last write was cut short: drop the torn line so appends start clean.
            keep = data.rfind(b"\n") + 1
            log.warning("%s: dropping a torn last line (%d bytes)", self.path, len(data) - keep)
            with self.path.open("r+b") as fh:
                fh.truncate(keep)
            data = data[:keep]
        for n, line in enumerate(data.decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = SampleRecord.model_validate_json(line)
            except ValidationError as exc:
                raise ConfigError(f"{self.path}, line {n} is not a sample record: {exc}") from None
            if record.key in self.records:
                self.duplicates += 1
                continue
            self.records[record.key] = record

    def __contains__(self, key: Key) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def append(self, record: SampleRecord) -> bool:
        """Write a finished sample; False (and nothing written) when it was already there."""
        line = record.model_dump_json() + "\n"
        with self._lock:
            if record.key in self.records:
                return False
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(line)
                fh.flush()
                os.fsync(fh.fileno())
            self.records[record.key] = record
        return True


def check_manifest(path: Path, settings: dict[str, object], must_match: tuple[str, ...]) -> None:
    """Refuse to mix two different runs in one folder; record the settings of a new one."""
    if path.exists():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not JSON: {exc.msg}") from None
        changed = [k for k in must_match if old.get(k) != settings.get(k)]
        if changed:
            details = ", ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in changed)
            raise ConfigError(
                f"{path.parent} holds a run with other settings ({details}); use another --out"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True), encoding="utf-8")
    tmp.replace(path)
