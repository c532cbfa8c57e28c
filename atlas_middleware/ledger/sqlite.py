"""SQLite ledger: one file, WAL mode, safe for many threads and several processes."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import LedgerError
from .base import LedgerQuery
from .record import LedgerRecord

SCHEMA_VERSION = 3
_COLUMNS = (
    "call_id", "created_at", "student_model", "teacher_model", "policy", "session_id", "task_family",
    "decision", "reason", "failed", "tokens", "tokens_saved", "net_tokens", "cost_usd",
    "student_alone_cost_usd", "cost_saved_usd", "counterfactual_basis", "counterfactual_samples", "mode",
    "latency_ms", "teacher_latency_ms", "errors", "prompt_sha256", "prompt_chars",
    "answer_sha256", "answer_chars", "prompt_text", "answer_text", "report_json",
)
_ADDED_BY_MIGRATIONS = (  # not in version 1's CREATE TABLE: see MIGRATIONS
    "task_family", "student_alone_cost_usd", "cost_saved_usd", "counterfactual_basis", "counterfactual_samples",
    "mode",
)
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS atlas_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS atlas_calls (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    {", ".join(c + (" TEXT UNIQUE NOT NULL" if c == "call_id" else "") for c in _COLUMNS if c not in _ADDED_BY_MIGRATIONS)}
);
CREATE INDEX IF NOT EXISTS atlas_calls_created ON atlas_calls (created_at);
CREATE INDEX IF NOT EXISTS atlas_calls_session ON atlas_calls (session_id);
"""
# version -> statements that bring a ledger from version-1 to version, applied in one
# transaction when the ledger is opened. A new ledger is created at version 1 by ``_SCHEMA``
# (without the columns added since) and migrated like any other.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (),
    2: ("ALTER TABLE atlas_calls ADD COLUMN task_family TEXT",
        "CREATE INDEX IF NOT EXISTS atlas_calls_family ON atlas_calls (task_family)"),
    3: ("ALTER TABLE atlas_calls ADD COLUMN student_alone_cost_usd REAL",
        "ALTER TABLE atlas_calls ADD COLUMN cost_saved_usd REAL",
        "ALTER TABLE atlas_calls ADD COLUMN counterfactual_basis TEXT",
        "ALTER TABLE atlas_calls ADD COLUMN counterfactual_samples INTEGER",
        "ALTER TABLE atlas_calls ADD COLUMN mode TEXT"),  # policy: adaptive's mode (CallReport.mode)
}


# How long a write waits for another writer's lock. Writes run on the user's call path (the
# record is written before the call returns), and in WAL mode a writer holds the lock for
# the milliseconds of one commit: a lock held for longer is someone else's long
# transaction or a stuck process, and the record goes to the spool instead (SpooledWriter).
WRITE_TIMEOUT_S = 2.0
# Reads (reports) are off the call path and may wait out a long writer.
READ_TIMEOUT_S = 30.0


class SQLiteLedger:
    def __init__(self, path: str | Path, url: str | None = None, write_timeout: float = WRITE_TIMEOUT_S) -> None:
        self.path = str(path)
        self.url = url or f"sqlite:///{self.path}"
        self._write_ms = int(write_timeout * 1000)
        # One connection per ledger, serialised by a lock: SQLite takes one writer at a time
        # anyway, and a connection per thread leaks one connection for every short-lived
        # thread that ever wrote (each ``asyncio.run`` brings a new executor's threads).
        # Other processes are kept safe by WAL mode and the busy timeout.
        self._conn_: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        if self.path != ":memory:":
            try:
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise LedgerError(f"cannot create the ledger folder for {self.path}: {exc}") from exc
        try:
            conn = self._conn()
            with self._lock, self._waiting(READ_TIMEOUT_S):
                self._check(conn)
                conn.executescript(_SCHEMA)
                self._migrate(conn)
        except sqlite3.Error as exc:
            raise LedgerError(f"cannot open the SQLite ledger at {self.path}: {exc}") from exc

    def _check(self, conn: sqlite3.Connection) -> None:
        """Refuse a damaged file when it is opened (``PRAGMA quick_check``, one pass over the
        file): SQLite notices a corrupted page only when it reads it, mid-report or
        mid-write, long after the start where a person would see the error."""
        if self.path == ":memory:":
            return
        try:
            problems = [str(row[0]) for row in conn.execute("PRAGMA quick_check(5)")]
        except sqlite3.DatabaseError as exc:
            problems = [str(exc)]
        if problems != ["ok"]:
            raise LedgerError(
                f"the SQLite ledger at {self.path} is corrupted ({'; '.join(problems)}): move it aside to "
                f"start a new one; `sqlite3 {self.path} .recover | sqlite3 recovered.db` saves what it can"
            )

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Bring the file to ``SCHEMA_VERSION`` in one write transaction (another process
        opening the same file waits, then finds it done); refuse a newer file."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("INSERT OR IGNORE INTO atlas_meta VALUES ('schema_version', '1')")
            version = int(conn.execute("SELECT value FROM atlas_meta WHERE key = 'schema_version'").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"the ledger at {self.path} has schema version {version}, newer than this "
                    f"atlas-middleware knows ({SCHEMA_VERSION}); upgrade atlas-middleware"
                )
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[v]:
                    conn.execute(statement)
            if version < SCHEMA_VERSION:
                conn.execute("UPDATE atlas_meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def schema_version(self) -> int:
        with self._lock:
            row = self._conn().execute("SELECT value FROM atlas_meta WHERE key = 'schema_version'").fetchone()
        return int(row[0])

    def _conn(self) -> sqlite3.Connection:
        if self._conn_ is None:
            conn = sqlite3.connect(self.path, timeout=READ_TIMEOUT_S, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={self._write_ms}")
            self._conn_ = conn
        return self._conn_

    @contextlib.contextmanager
    def _waiting(self, seconds: float) -> Iterator[None]:
        """Wait up to ``seconds`` for locks inside the block (the connection's default is the
        write timeout). Call with ``self._lock`` held."""
        conn = self._conn()
        conn.execute(f"PRAGMA busy_timeout={int(seconds * 1000)}")
        try:
            yield
        finally:
            conn.execute(f"PRAGMA busy_timeout={self._write_ms}")

    def append(self, record: LedgerRecord) -> None:
        row = record.row()
        sql = (
            f"INSERT OR IGNORE INTO atlas_calls ({', '.join(_COLUMNS)}) "
            f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
        )
        # The write timeout bounds the whole write, this process's own queue included:
        # writers of one process wait for each other on ``self._lock``, and each must not
        # then wait a full timeout more for SQLite's lock.
        deadline = time.monotonic() + self._write_ms / 1000
        if not self._lock.acquire(timeout=self._write_ms / 1000):
            raise LedgerError(f"ledger write failed: waited {self._write_ms} ms behind other writes of this process")
        try:
            remaining = deadline - time.monotonic()
            waited = remaining < self._write_ms / 1000 - 0.01
            with self._waiting(max(remaining, 0.001)) if waited else contextlib.nullcontext():
                self._conn().execute(sql, [row[c] for c in _COLUMNS])
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger write failed: {exc}") from exc
        finally:
            self._lock.release()

    def records(self, query: LedgerQuery | None = None) -> list[LedgerRecord]:
        q = query or LedgerQuery()
        where, args = [], []
        if q.since:
            where.append("created_at >= ?")
            args.append(q.since.isoformat())
        if q.until:
            where.append("created_at < ?")
            args.append(q.until.isoformat())
        if q.student_model:
            where.append("student_model = ?")
            args.append(q.student_model)
        if q.session_id:
            where.append("session_id = ?")
            args.append(q.session_id)
        if q.task_family:
            where.append("task_family = ?")
            args.append(q.task_family)
        sql = f"SELECT seq, {', '.join(_COLUMNS)} FROM atlas_calls"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if q.last:  # the newest ``last``, then oldest first again
            sql = f"SELECT * FROM ({sql} ORDER BY seq DESC LIMIT {int(q.last)})"
        sql += " ORDER BY seq"
        if q.limit:
            sql += f" LIMIT {int(q.limit)}"
        try:
            with self._lock, self._waiting(READ_TIMEOUT_S):
                rows = self._conn().execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger read failed: {exc}") from exc
        return [_record(dict(zip(_COLUMNS, r[1:], strict=True))) for r in rows]

    def close(self) -> None:
        with self._lock:
            if self._conn_ is not None:
                self._conn_.close()
                self._conn_ = None


def _record(row: dict[str, Any]) -> LedgerRecord:
    row["tokens"] = json.loads(row["tokens"])
    row["failed"] = bool(row["failed"])
    return LedgerRecord.model_validate(row)
