"""The spool: where a record waits while the ledger cannot take it.

A ledger write that fails (database down, disk full, file locked) or does not finish in
time (a frozen database, a lock held too long) must never fail or stall the user's call,
and must not lose the record either. ``SpooledWriter.write`` runs the write on a writer
thread (``bounded.py``) and waits for it at most ``timeout`` seconds, and never past the
call's deadline; a write that failed or did not finish by then leaves its record in a
local JSONL file. The file is emptied into the ledger on the next successful write, when a
write given up on finishes after all, or by ``flush()``.

No duplicates: ledgers store a ``call_id`` once (``INSERT ... ON CONFLICT DO NOTHING``), so
replaying a record that did reach the ledger (a write given up on that finished later, a
crash between the insert and the rewrite of the spool) is harmless; ``pending()`` counts
distinct call ids.

Whole or absent: ``put`` appends a record with one unbuffered write and ``fsync``; when the
disk fills mid-record the file is truncated back to where the record began. A tail without
its newline (a process killed mid-write) is cut off before the next record is appended and
when the file is read, never merged into the next record. Every record that cannot be kept
is logged at ERROR and counted by reason (``SpooledWriter.status()``, exported as
``atlas_ledger_records_lost_total``): ``spool_failed`` (the ledger did not take it and the
spool could not be written), ``no_spool`` (the ledger did not take it, ``spool: none``),
``torn`` (a partial record cut off the spool's end), ``unreadable`` (a spool line that is
no record), ``queue_full`` (too many writes waiting for a ledger that does not answer).

Several processes may share one spool file (proxy workers): every read-modify-write holds
an exclusive ``flock`` on a sibling ``.lock`` file, and the file is replaced atomically.
Replays do not hold that lock while they talk to the ledger (a frozen database would then
stall every ``put``); one replay runs at a time per file (a ``.replay`` lock).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .._redact import redact, secret_logger
from ..errors import LedgerError
from .base import Ledger, NullLedger
from .bounded import WriterThreads
from .record import LedgerRecord

log = secret_logger("atlas_middleware.ledger")

WRITE_TIMEOUT_S = 2.0
"""How long a write may keep a call waiting when the call sets no earlier deadline
(``ledger_timeout``). A healthy ledger takes milliseconds."""

# Why a record went to the spool instead of the ledger (``atlas_ledger_records_spooled_total``).
_BYPASS = {
    "backoff": "the ledger failed moments ago",
    "stuck": "an earlier ledger write has not finished",
    "deadline": "the call's deadline has passed",
}
_CHUNK = 1 << 16


class SpoolFile(Protocol):
    """What ``put`` needs of the file it appends to (an unbuffered ``FileIO`` in ``a+b``)."""

    def write(self, data: bytes | memoryview, /) -> int | None: ...
    def seek(self, offset: int, whence: int = ..., /) -> int: ...
    def read(self, size: int = ..., /) -> bytes: ...
    def truncate(self, size: int, /) -> int: ...
    def fileno(self) -> int: ...
    def __enter__(self) -> Any: ...
    def __exit__(self, *exc: Any) -> Any: ...


def _open_append(path: Path) -> SpoolFile:
    # Unbuffered: after a failed write no buffered remainder may reach the file later.
    return open(path, "a+b", buffering=0)


def default_spool_path(ledger_url: str) -> Path:
    """Next to the user's data, one file per ledger URL so records never reach another ledger."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    tag = hashlib.sha256(ledger_url.encode("utf-8")).hexdigest()[:16]
    return Path(base) / "atlas-middleware" / "spool" / f"{tag}.jsonl"


class Spool:
    """A JSONL file of ``LedgerRecord``s, safe across threads and processes.

    ``opener``: how the file is opened for appending (a fault double in tests,
    ``testing/faults.py``). ``on_lost(reason, n)``: told of every record the spool drops.
    """

    def __init__(self, path: str | Path, *, opener: Callable[[Path], SpoolFile] | None = None,
                 on_lost: Callable[[str, int], None] | None = None) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._replay_path = self.path.with_name(self.path.name + ".replay")
        self._thread_lock = threading.Lock()
        self._replay_thread_lock = threading.Lock()
        self._open = opener or _open_append
        self.on_lost = on_lost

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

    @contextlib.contextmanager
    def _replaying(self, wait: bool) -> Iterator[bool]:
        """One replay at a time (True: this one may run). Two would send the same records
        twice: harmless, since appends are idempotent, but twice the work."""
        if not self._replay_thread_lock.acquire(blocking=wait):
            yield False
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self._replay_path, "a") as lock:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                except BlockingIOError:
                    yield False
                    return
                try:
                    yield True
                finally:
                    fcntl.flock(lock, fcntl.LOCK_UN)
        finally:
            self._replay_thread_lock.release()

    def _lost(self, reason: str, message: str, *args: Any) -> None:
        log.error(message, *args)
        if self.on_lost is not None:
            self.on_lost(reason, 1)

    def put(self, record: LedgerRecord) -> None:
        """Append one record, whole or not at all; raises ``LedgerError`` if even the local
        file cannot be written."""
        data = record.model_dump_json().encode("utf-8") + b"\n"
        try:
            with self._locked(), self._open(self.path) as f:
                start = self._cut_torn_tail(f)
                try:
                    _write_all(f, data)
                    os.fsync(f.fileno())
                except OSError:
                    with contextlib.suppress(OSError):  # truncating frees space: it works on a full disk
                        f.truncate(start)
                    raise
        except OSError as exc:
            raise LedgerError(f"cannot spool record {record.call_id} to {self.path}: {exc}") from exc

    def _cut_torn_tail(self, f: SpoolFile) -> int:
        """Where the next record starts: the end of the last whole line. A torn tail (a
        process killed mid-write) is cut off, so that it never becomes the start of a line."""
        end = f.seek(0, os.SEEK_END)
        whole = _end_of_last_line(f, end)
        if whole < end:
            f.truncate(whole)
            self._lost("torn", "atlas spool %s: cut off a torn record at its end (%d bytes of a write that "
                       "never finished); that record is lost", self.path, end - whole)
        return whole

    def has_pending(self) -> bool:
        """Cheap check (one ``stat``) made after every successful ledger write."""
        try:
            return self.path.stat().st_size > 0
        except OSError:
            return False

    def pending(self) -> int:
        """How many distinct records wait for the ledger."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return 0
        return len({record.call_id for _, record in self._parse(data, report=False)[0]})

    def _parse(self, data: bytes, report: bool) -> tuple[list[tuple[bytes, LedgerRecord]], bool]:
        """The whole records in ``data``, oldest first, and whether it holds anything else
        (a torn tail, unreadable lines), which ``report`` logs and counts as lost."""
        body, _, tail = data.rpartition(b"\n")
        dirty = bool(tail)
        if tail and report:
            self._lost("torn", "atlas spool %s: cut off a torn record at its end (%d bytes of a write that "
                       "never finished); that record is lost", self.path, len(tail))
        entries = []
        for line in body.split(b"\n"):
            if not line.strip():
                continue
            try:
                entries.append((line, LedgerRecord.model_validate_json(line)))
            except ValueError:
                dirty = True
                if report:
                    self._lost("unreadable", "atlas spool %s: dropping an unreadable line (%d bytes); its record "
                               "is lost", self.path, len(line))
        return entries, dirty

    def _load(self) -> list[tuple[bytes, LedgerRecord]]:
        """The whole records, the file rewritten without anything else. Call under the lock."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        entries, dirty = self._parse(data, report=True)
        if dirty:
            self._rewrite([line for line, _ in entries])
        return entries

    def flush(self, ledger: Ledger, append: Callable[[LedgerRecord], None] | None = None, *,
              wait: bool = True) -> int:
        """Write pending records to the ledger (through ``append``, ``ledger.append`` by
        default), oldest first; returns how many were written.

        Stops at the first failure and keeps that record and the rest for later; raises
        nothing for a ledger failure (the records stay spooled). ``wait=False``: return 0 at
        once when another replay of this file is running.
        """
        append = append or ledger.append
        with self._replaying(wait) as mine:
            if not mine:
                return 0
            with self._locked():
                entries = self._load()
            written: set[str] = set()
            for _, record in entries:
                if record.call_id in written:
                    continue
                try:
                    append(record)
                except Exception as exc:  # the ledger is still away: keep the rest
                    log.info("atlas spool %s: ledger still unavailable: %s", self.path, redact(str(exc)))
                    break
                written.add(record.call_id)
            if written:  # records spooled meanwhile are kept: the file is read again
                with self._locked():
                    self._rewrite([line for line, r in self._load() if r.call_id not in written])
            return len(written)

    def _rewrite(self, lines: list[bytes]) -> None:
        if not lines:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(b"".join(line + b"\n" for line in lines))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise


def _write_all(f: SpoolFile, data: bytes) -> None:
    """One record, all of it: an unbuffered write may be short (a disk filling up)."""
    view = memoryview(data)
    while view:
        n = f.write(view)
        if not n:
            raise OSError(errno.EIO, "the spool file took no bytes")
        view = view[n:]


def _end_of_last_line(f: SpoolFile, end: int) -> int:
    """The offset just past the last newline before ``end`` (0 if there is none)."""
    pos = end
    while pos > 0:
        step = 1 if pos == end else min(_CHUNK, pos)  # almost always the last byte is a newline
        f.seek(pos - step)
        i = f.read(step).rfind(b"\n")
        if i >= 0:
            return pos - step + i + 1
        pos -= step
    return 0


@dataclass
class LedgerStatus:
    """What the metrics export (``proxy/metrics.py``) about one ``SpooledWriter``."""

    lost: dict[str, int] = field(default_factory=dict)
    """Records that reached neither the ledger nor the spool, by reason (module docstring)."""
    spooled: dict[str, int] = field(default_factory=dict)
    """Records sent to the spool, by why: ``error`` (the ledger failed), ``timeout`` (it did
    not answer in time), ``stuck`` (an earlier write has not finished), ``backoff`` (it
    failed moments ago), ``deadline`` (the call's deadline had passed)."""
    overdue: int = 0
    """Writes given up on that are still running: a ledger that does not answer."""


class SpooledWriter:
    """Writes records to a ledger, spooling them when it fails or is slow. ``write`` never raises.

    After a failure the ledger is left alone for ``retry_after`` seconds, and while a write
    given up on is still running it is left alone too: records go straight to the spool. A
    database that is down or frozen then costs the user's calls one bounded attempt, not
    one per call. When the write given up on finishes, the spool is replayed.
    """

    def __init__(self, ledger: Ledger, spool: Spool | None, retry_after: float = 2.0,
                 timeout: float = WRITE_TIMEOUT_S) -> None:
        self.ledger = ledger
        self.spool = spool
        self.retry_after = retry_after
        self.timeout = timeout
        self._down_until = 0.0
        self._replaying = threading.Lock()
        self._threads = WriterThreads()
        self._lock = threading.Lock()
        self._overdue = 0
        self._lost: Counter[str] = Counter()
        self._spooled: Counter[str] = Counter()
        if spool is not None and spool.on_lost is None:
            spool.on_lost = self._count_lost

    @classmethod
    def for_ledger(cls, ledger: Ledger, spool_path: str | None = None,
                   timeout: float = WRITE_TIMEOUT_S) -> SpooledWriter:
        """``spool_path``: ``None`` for the default path, ``"none"`` to keep no spool."""
        if isinstance(ledger, NullLedger) or (spool_path or "").strip().lower() in ("none", "off"):
            return cls(ledger, None, timeout=timeout)
        return cls(ledger, Spool(spool_path or default_spool_path(ledger.url)), timeout=timeout)

    def write(self, record: LedgerRecord, deadline: float | None = None) -> bool:
        """True when the record reached the ledger, False when it was spooled (or lost).

        ``deadline``: the ``time.monotonic()`` by which the caller must have its answer; the
        write is waited for until then at most, and never longer than ``timeout``.
        """
        wait = self.timeout if deadline is None else min(self.timeout, deadline - time.monotonic())
        bypass = self._bypass(wait)
        if bypass is not None and self.spool is not None:
            self._spool_or_lose(record, bypass, _BYPASS[bypass])
            return False
        future = self._threads.submit(functools.partial(self.ledger.append, record))
        if future is None:
            self._not_queued(record)
            return False
        # Without a spool the write is still made, in the background, when the caller may not wait.
        if bypass is not None or not _settled(future, wait):
            self._give_up(future, record, wait)
            return False
        exc = future.exception()
        if exc is not None:
            self._failed(record, exc)
            return False
        if self.spool is not None and self.spool.has_pending():
            self._replay_soon()
        return True

    def _bypass(self, wait: float) -> str | None:
        """Why this write should not wait for the ledger at all, or None."""
        if time.monotonic() < self._down_until:
            return "backoff"
        if self._overdue:
            return "stuck"
        return "deadline" if wait <= 0 else None

    def _not_queued(self, record: LedgerRecord) -> None:
        why = "too many ledger writes are waiting for the ledger"
        if self.spool is None:
            self._lose(record, "queue_full", why)
        else:
            self._spool_or_lose(record, "stuck", why)

    def _failed(self, record: LedgerRecord, exc: BaseException) -> None:
        self._down_until = time.monotonic() + self.retry_after
        why = redact(str(exc))
        if self.spool is None:
            self._lose(record, "no_spool", why)
        else:
            self._spool_or_lose(record, "error", why)

    def _give_up(self, future: Future[Any], record: LedgerRecord, wait: float) -> None:
        """Stop waiting for a write that is still running; it may yet finish (stored once)."""
        why = f"no answer from the ledger within {max(wait, 0):.2f} s; the write is left running"
        failure = None if self.spool is None else self._spool(record, "timeout", why)
        spooled = self.spool is not None and failure is None
        if failure is not None:
            log.warning("atlas ledger write for %s not finished and the spool failed: %s; lost unless the "
                        "write lands", record.call_id, failure)
        with self._lock:
            self._overdue += 1
        future.add_done_callback(functools.partial(self._overdue_done, record, spooled))

    def _overdue_done(self, record: LedgerRecord, spooled: bool, future: Future[Any]) -> None:
        with self._lock:
            self._overdue -= 1
        exc = future.exception()
        if exc is None:
            log.info("atlas ledger write for %s finished late; stored (its spooled copy will be stored once)",
                     record.call_id)
            if self.spool is not None and self.spool.has_pending():
                self._replay_soon()
            return
        self._down_until = time.monotonic() + self.retry_after
        if not spooled:
            self._lose(record, "no_spool" if self.spool is None else "spool_failed", redact(str(exc)))

    def _spool(self, record: LedgerRecord, reason: str, why: str) -> LedgerError | None:
        """Spool ``record``; the spool's error when it could not."""
        assert self.spool is not None
        try:
            self.spool.put(record)
        except LedgerError as exc:
            return exc
        with self._lock:
            self._spooled[reason] += 1
        log.warning("atlas ledger write failed for %s; spooled to %s: %s", record.call_id, self.spool.path, why)
        return None

    def _spool_or_lose(self, record: LedgerRecord, reason: str, why: str) -> None:
        failure = self._spool(record, reason, why)
        if failure is not None:
            self._lose(record, "spool_failed", f"{why}; {failure}")

    def _lose(self, record: LedgerRecord, reason: str, why: str) -> None:
        log.error("atlas ledger record %s lost (%s): %s", record.call_id, reason, why)
        self._count_lost(reason, 1)

    def _count_lost(self, reason: str, n: int) -> None:
        with self._lock:
            self._lost[reason] += n

    def _replay_soon(self) -> None:
        """Replay the spool on a thread of its own: after an outage it may hold thousands of
        records, and the user whose write found the ledger back must not wait for them."""
        if self._replaying.acquire(blocking=False):
            threading.Thread(target=self._replay, name="atlas-spool-replay", daemon=True).start()

    def _replay(self) -> None:
        try:
            self._flush(wait=False)
        finally:
            self._replaying.release()

    def _append_in_time(self, record: LedgerRecord) -> None:
        """A replayed write, bounded like a call's: a ledger that stops answering mid-replay
        stops the replay (the records stay spooled), not the thread that asked for it."""
        future = self._threads.submit(functools.partial(self.ledger.append, record))
        if future is None:
            raise LedgerError("too many ledger writes are waiting for the ledger")
        if not _settled(future, self.timeout):
            with self._lock:
                self._overdue += 1
            future.add_done_callback(functools.partial(self._overdue_done, record, True))
            raise LedgerError(f"no answer from the ledger within {self.timeout:.2f} s")
        exc = future.exception()
        if exc is not None:
            raise exc

    def flush(self) -> int:
        """Write spooled records now; returns how many reached the ledger."""
        return self._flush(wait=True)

    def _flush(self, wait: bool) -> int:
        if self.spool is None:
            return 0
        try:
            return self.spool.flush(self.ledger, self._append_in_time, wait=wait)
        except (OSError, LedgerError) as exc:
            log.warning("atlas spool flush failed: %s", redact(str(exc)))
            return 0

    def pending(self) -> int:
        return 0 if self.spool is None else self.spool.pending()

    def status(self) -> LedgerStatus:
        with self._lock:
            return LedgerStatus(lost=dict(self._lost), spooled=dict(self._spooled), overdue=self._overdue)


def _settled(future: Future[Any], wait: float) -> bool:
    """Whether ``future`` finished (either way) within ``wait`` seconds."""
    try:
        future.exception(timeout=max(wait, 0.0))
    except TimeoutError:
        return False
    return True
