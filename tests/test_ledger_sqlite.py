"""The SQLite ledger: every call once, private by default, safe under concurrent writers."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading

import pytest
from conftest import QUESTION

from atlas_middleware.errors import LedgerError
from atlas_middleware.ledger import LedgerRecord, SQLiteLedger, open_ledger
from atlas_middleware.report import CallReport


def _record(i: int, tag: str) -> LedgerRecord:
    report = CallReport(call_id=f"{tag}-{i}", student_model="s", policy="strict")
    return LedgerRecord.from_report(report, f"prompt {i}", f"answer {i}", store_texts=False)


def _writer(path: str, tag: str, n: int) -> None:
    ledger = SQLiteLedger(path)
    for i in range(n):
        ledger.append(_record(i, tag))
    ledger.close()


def test_concurrent_threads_and_processes(tmp_path) -> None:
    path = str(tmp_path / "ledger.db")
    ledger = SQLiteLedger(path)
    threads = [threading.Thread(target=lambda t=t: [ledger.append(_record(i, f"t{t}")) for i in range(50)])
               for t in range(6)]
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, f"p{p}", 50)) for p in range(3)]
    for w in [*threads, *procs]:
        w.start()
    for w in [*threads, *procs]:
        w.join()
    assert all(p.exitcode == 0 for p in procs)
    rows = ledger.records()
    assert len(rows) == 450 and len({r.call_id for r in rows}) == 450
    assert ledger._conn().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_same_call_is_stored_once(tmp_path) -> None:
    ledger = open_ledger(f"sqlite:///{tmp_path / 'x.db'}")
    ledger.append(_record(1, "a"))
    ledger.append(_record(1, "a"))
    assert len(ledger.records()) == 1


def test_texts_are_private_unless_opted_in(make_atlas, tmp_path) -> None:
    atlas, *_ = make_atlas(ledger=f"sqlite:///{tmp_path / 'a.db'}")
    atlas.completion(model="m", messages=QUESTION)
    (row,) = atlas.ledger.records()
    assert row.prompt_text is None and row.answer_text is None and len(row.prompt_sha256) == 64
    assert "Carry the one" not in row.report_json and "20 + 22" not in row.report_json
    assert row.tokens["guided"]["completion"] > 0

    atlas2, *_ = make_atlas(ledger=f"sqlite:///{tmp_path / 'b.db'}", store_texts=True)
    atlas2.completion(model="m", messages=QUESTION)
    (row2,) = atlas2.ledger.records()
    assert "20 + 22" in (row2.prompt_text or "") and row2.report().guidance == "Carry the one."


def test_ledger_failure_never_fails_the_call_and_loses_nothing(make_atlas, tmp_path) -> None:
    class Flaky:
        """Disk full until ``healed``; then it keeps what it is given."""

        url = "flaky://"

        def __init__(self) -> None:
            self.healed = False
            self.rows: list[LedgerRecord] = []

        def append(self, record: LedgerRecord) -> None:
            if not self.healed:
                raise OSError("disk full")
            if record.call_id not in {r.call_id for r in self.rows}:
                self.rows.append(record)

        def records(self, query=None):  # type: ignore[no-untyped-def]
            return list(self.rows)

        def close(self) -> None:
            return None

    ledger = Flaky()
    atlas, *_ = make_atlas(ledger=ledger, spool=str(tmp_path / "spool.jsonl"))
    resp = atlas.completion(model="m", messages=QUESTION)
    assert resp.atlas.decision == "baseline" and resp.choices[0].message.content.endswith("41")
    # the record waits in the spool, whole
    assert atlas.ledger_writer.pending() == 1 and ledger.rows == []
    (spooled,) = [LedgerRecord.model_validate_json(x) for x in (tmp_path / "spool.jsonl").read_text().splitlines()]
    assert spooled.call_id == resp.atlas.call_id and spooled.reason == resp.atlas.reason.value
    ledger.healed = True
    atlas.flush()  # replayed into the ledger once it takes writes again
    assert [r.call_id for r in ledger.rows] == [resp.atlas.call_id] and atlas.ledger_writer.pending() == 0


def test_a_locked_ledger_file_delays_a_call_by_the_write_timeout_then_spools(make_atlas, tmp_path) -> None:
    # Another process (a backup, a stuck writer) holds the database's write lock: the call
    # waits at most the ledger's write timeout, answers, and its record waits in the spool
    # until the lock is gone (it used to wait out SQLite's 30 s busy timeout first).
    import sqlite3
    import time

    from atlas_middleware.ledger.spool import Spool
    from atlas_middleware.ledger.sqlite import WRITE_TIMEOUT_S

    db, spool = tmp_path / "locked.db", tmp_path / "spool.jsonl"
    atlas, *_ = make_atlas(ledger=f"sqlite:///{db}", spool=str(spool))
    atlas.ledger_writer.retry_after = 0.0  # every call tries the locked ledger itself
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.perf_counter()
        locked_id = atlas.completion(model="m", messages=QUESTION).atlas.call_id
        waited = time.perf_counter() - t0
        assert WRITE_TIMEOUT_S <= waited < WRITE_TIMEOUT_S + 3.0, f"the call waited {waited:.1f} s"
        assert Spool(spool).pending() == 1
        # Concurrent calls of this process queue for the ledger behind each other: the
        # timeout bounds each call's whole wait, not each wait in the queue (2, 4, 6, 8 s).
        from concurrent.futures import ThreadPoolExecutor

        def timed_call(_: int) -> float:
            t = time.perf_counter()
            atlas.completion(model="m", messages=QUESTION)
            return time.perf_counter() - t

        with ThreadPoolExecutor(4) as pool:
            waits = list(pool.map(timed_call, range(4)))
        assert max(waits) < WRITE_TIMEOUT_S + 3.0, f"calls waited {[round(w, 1) for w in waits]} s"
        assert Spool(spool).pending() == 5
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    atlas.flush()
    assert len(atlas.ledger.records()) == 5 and locked_id in {r.call_id for r in atlas.ledger.records()}
    assert Spool(spool).pending() == 0


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_locked_ledger_file_costs_a_call_no_more_than_its_deadline(make_atlas, tmp_path, driver) -> None:
    # Under ``timeout=0.5`` the write waits what is left of the call's deadline, not the
    # ledger's 2 s write timeout; the record waits in the spool and lands once, later.
    import sqlite3
    import time

    db, spool = tmp_path / "locked.db", tmp_path / "spool.jsonl"
    atlas, *_ = make_atlas(ledger=f"sqlite:///{db}", spool=str(spool))

    def timed_call() -> tuple[str, float]:
        t0 = time.monotonic()
        if driver == "sync":
            out = atlas.completion(model="m", messages=QUESTION, timeout=0.5)
        else:
            out = asyncio.run(atlas.acompletion(model="m", messages=QUESTION, timeout=0.5))
        return out.atlas.call_id, time.monotonic() - t0

    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        locked_id, waited = timed_call()
        assert waited < 0.5 + 0.2, f"the call took {waited:.2f} s under timeout=0.5"
        assert atlas.ledger_writer.pending() == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    for _ in range(100):  # the given-up write fails at SQLite's busy timeout; then it is retried
        atlas.flush()
        if atlas.ledger_writer.pending() == 0:
            break
        time.sleep(0.05)
    assert [r.call_id for r in atlas.ledger.records()] == [locked_id]


def test_a_file_with_corrupted_pages_is_refused_at_open(tmp_path) -> None:
    path = tmp_path / "ledger.db"
    ledger = SQLiteLedger(path)
    for i in range(300):  # enough rows for the table to span many pages
        ledger.append(_record(i, "c"))
    ledger.close()
    page = 4096
    with open(path, "r+b") as f:  # scribble over data pages, past the schema page
        size = f.seek(0, 2)
        assert size > 8 * page
        for n in range(3, size // page - 1, 2):
            f.seek(n * page + 100)
            f.write(b"\xa5" * 1500)
    with pytest.raises(LedgerError, match=str(path)) as err:
        SQLiteLedger(path)
    assert "corrupt" in str(err.value) or "malformed" in str(err.value)
