"""The spool: where a record waits while the ledger cannot take it.

A ledger write that fails (database down, disk full, file locked) must never fail the
user's call, and must not lose the record either. ``SpooledWriter.write`` tries the ledger;
on failure it appends the record to a local JSONL file. The file is emptied into the ledger
on the next successful write, or by ``flush()``.

No duplicates: ledgers store a ``call_id`` once (``INSERT ... ON CONFLICT DO NOTHING``), so
replaying a record that did reach the ledger (a crash between the insert and the rewrite
of the spool) is harmless; ``pending()`` counts distinct call ids.

Several processes may share one spool file (proxy workers): every read-modify-write holds
an exclusive ``flock`` on a sibling ``.lock`` file, and the file is replaced atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import LedgerError
from ..redact import redact
from .base import Ledger, NullLedger
from .record import LedgerRecord

log = logging.getLogger("atlas_middleware.ledger")


def default_spool_path(ledger_url: str) -> Path:
    """Next to the user's data, one file per ledger URL so records never reach another ledger."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    tag = hashlib.sha256(ledger_url.encode("utf-8")).hexdigest()[:16]
    return Path(base) / "atlas-middleware" / "spool" / f"{tag}.jsonl"


class Spool:
    """A JSONL file of ``LedgerRecord``s, safe across threads and processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._thread_lock = threading.Lock()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._lock_path, "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)

    def _lines(self) -> list[str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if line.strip()]

    def put(self, record: LedgerRecord) -> None:
        """Append one record; raises ``LedgerError`` if even the local file cannot be written."""
        line = record.model_dump_json() + "\n"
        try:
            with self._locked(), open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            raise LedgerError(f"cannot spool record {record.call_id} to {self.path}: {exc}") from exc

    def has_pending(self) -> bool:
        """Cheap check (one ``stat``) made after every successful ledger write."""
        try:
            return self.path.stat().st_size > 0
        except OSError:
            return False

    def pending(self) -> int:
        """How many distinct records wait for the ledger."""
        ids = set()
        for line in self._lines():
            try:
                ids.add(LedgerRecord.model_validate_json(line).call_id)
            except ValueError:
                continue  # a torn last line (crash mid-write) holds no complete record
        return len(ids)

    def flush(self, ledger: Ledger) -> int:
        """Write pending records to ``ledger``, oldest first; returns how many were written.

        Stops at the first failure and keeps that record and the rest for later; raises
        nothing for a ledger failure (the records stay spooled).
        """
        with self._locked():
            lines = self._lines()
            if not lines:
                return 0
            written, seen = 0, set()
            kept: list[str] = []
            for i, line in enumerate(lines):
                try:
                    record = LedgerRecord.model_validate_json(line)
                except ValueError:
                    log.warning("atlas spool %s: dropping an unreadable line", self.path)
                    continue
                if record.call_id in seen:
                    continue
                try:
                    ledger.append(record)
                except Exception as exc:  # the ledger is still away: keep the rest
                    log.info("atlas spool %s: ledger still unavailable: %s", self.path, redact(str(exc)))
                    kept = lines[i:]
                    break
                seen.add(record.call_id)
                written += 1
            self._rewrite(kept)
            return written

    def _rewrite(self, lines: list[str]) -> None:
        if not lines:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(tmp, self.path)


class SpooledWriter:
    """Writes records to a ledger, spooling them when it fails. ``write`` never raises.

    After a failure the ledger is left alone for ``retry_after`` seconds and records go
    straight to the spool: a database that is down (or slow to refuse, up to its connect
    timeout) then costs the user's calls one failed attempt, not one per call.
    """

    def __init__(self, ledger: Ledger, spool: Spool | None, retry_after: float = 2.0) -> None:
        self.ledger = ledger
        self.spool = spool
        self.retry_after = retry_after
        self._down_until = 0.0
        self._replaying = threading.Lock()

    @classmethod
    def for_ledger(cls, ledger: Ledger, spool_path: str | None = None) -> SpooledWriter:
        """``spool_path``: ``None`` for the default path, ``"none"`` to keep no spool."""
        if isinstance(ledger, NullLedger) or (spool_path or "").strip().lower() in ("none", "off"):
            return cls(ledger, None)
        return cls(ledger, Spool(spool_path or default_spool_path(ledger.url)))

    def write(self, record: LedgerRecord) -> bool:
        """True when the record reached the ledger, False when it was spooled (or lost)."""
        if self.spool is not None and time.monotonic() < self._down_until:
            self._spool(record, "the ledger failed moments ago")
            return False
        try:
            self.ledger.append(record)
        except Exception as exc:
            if self.spool is None:
                log.warning("atlas ledger write failed for %s (no spool): %s", record.call_id, redact(str(exc)))
                return False
            self._down_until = time.monotonic() + self.retry_after
            self._spool(record, redact(str(exc)))
            return False
        if self.spool is not None and self.spool.has_pending():
            self._replay_soon()
        return True

    def _replay_soon(self) -> None:
        """Replay the spool on a thread of its own: after an outage it may hold thousands of
        records, and the user whose write found the ledger back must not wait for them."""
        if self._replaying.acquire(blocking=False):
            threading.Thread(target=self._replay, name="atlas-spool-replay", daemon=True).start()

    def _replay(self) -> None:
        try:
            self.flush()
        finally:
            self._replaying.release()

    def _spool(self, record: LedgerRecord, why: str) -> None:
        assert self.spool is not None
        try:
            self.spool.put(record)
            log.warning("atlas ledger write failed for %s; spooled to %s: %s", record.call_id, self.spool.path, why)
        except LedgerError as spool_exc:
            log.error("atlas ledger write failed and the spool too; record %s lost: %s; %s",
                      record.call_id, why, spool_exc)

    def flush(self) -> int:
        """Write spooled records now; returns how many reached the ledger."""
        if self.spool is None:
            return 0
        try:
            return self.spool.flush(self.ledger)
        except (OSError, LedgerError) as exc:
            log.warning("atlas spool flush failed: %s", redact(str(exc)))
            return 0

    def pending(self) -> int:
        return 0 if self.spool is None else self.spool.pending()
