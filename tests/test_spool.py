"""The spool: a failed ledger write never fails the call, nor loses or duplicates the record."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import threading
import time
from pathlib import Path

import pytest
from test_report_support import QUESTION, make_calls
from typer.testing import CliRunner

from atlas_middleware import Atlas
from atlas_middleware.cli.app import app
from atlas_middleware.cli.commands import report as _registered  # noqa: F401
from atlas_middleware.config import AtlasConfig
from atlas_middleware.errors import LedgerError
from atlas_middleware.ledger import LedgerQuery, LedgerRecord, NullLedger, SQLiteLedger
from atlas_middleware.ledger.spool import Spool, SpooledWriter, default_spool_path
from atlas_middleware.testing import ScriptedBackend, teacher_reply


class FlakyLedger:
    """A real SQLite ledger that can be switched off, like a database going away."""

    def __init__(self, path: Path, fail_after: int | None = None) -> None:
        self.inner = SQLiteLedger(path)
        self.url = self.inner.url
        self.down = False
        self.fail_after = fail_after  # succeed this many appends, then go down
        self.attempts = 0

    def append(self, record: LedgerRecord) -> None:
        self.attempts += 1
        if self.fail_after is not None:
            if self.fail_after <= 0:
                self.down = True
            self.fail_after -= 1
        if self.down:
            raise LedgerError("database is down")
        self.inner.append(record)

    def records(self, query: LedgerQuery | None = None) -> list[LedgerRecord]:
        return self.inner.records(query)

    def close(self) -> None:
        return None  # the test closes ``inner`` itself


@pytest.fixture
def flaky(tmp_path: Path) -> FlakyLedger:
    ledger = FlakyLedger(tmp_path / "ledger.db")
    yield ledger
    ledger.inner.close()


def ids_in(ledger: FlakyLedger) -> list[str]:
    return [r.call_id for r in ledger.inner.records()]


def test_down_ledger_spools_and_next_write_drains(flaky: FlakyLedger, tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    flaky.down = True
    down_ids = make_calls(flaky, spool=str(spool))  # every call still answers
    assert len(down_ids) == 5 and ids_in(flaky) == []
    assert Spool(spool).pending() == 5
    flaky.down = False
    up_ids = make_calls(flaky, spool=str(spool))
    stored = ids_in(flaky)
    assert sorted(stored) == sorted(down_ids + up_ids) and len(set(stored)) == len(stored)
    assert not spool.exists() and Spool(spool).pending() == 0


def test_explicit_flush_writes_pending_records(flaky: FlakyLedger, tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    with Atlas(student_backend=ScriptedBackend({"baseline": "42"}), teacher_backend=ScriptedBackend(
            {"teacher": teacher_reply()}), teacher="t", ledger=flaky, spool=str(spool)) as atlas:
        flaky.down = True
        ids = [atlas.completion("m", QUESTION).atlas.call_id for _ in range(3)]
        assert atlas.ledger_writer.pending() == 3
        atlas.flush()  # still down: nothing written, nothing lost
        assert atlas.ledger_writer.pending() == 3 and ids_in(flaky) == []
        flaky.down = False
        atlas.flush()
        assert sorted(ids_in(flaky)) == sorted(ids) and atlas.ledger_writer.pending() == 0


async def test_async_calls_spool_too(flaky: FlakyLedger, tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    atlas = Atlas(student_backend=ScriptedBackend({"baseline": "42"}), teacher_backend=ScriptedBackend(
        {"teacher": teacher_reply()}), teacher="t", ledger=flaky, spool=str(spool))
    atlas.ledger_writer.retry_after = 0.0  # try the ledger again at once (see the backoff test)
    flaky.down = True
    response = await atlas.acompletion("m", QUESTION)
    assert response.choices[0].message.content and Spool(spool).pending() == 1
    flaky.down = False
    await atlas.acompletion("m", QUESTION)
    await atlas.aclose()
    assert len(ids_in(flaky)) == 2 and Spool(spool).pending() == 0


def test_after_a_failure_the_ledger_is_left_alone_for_a_while(flaky: FlakyLedger, tmp_path: Path) -> None:
    make_calls(flaky, spool="none")
    records = flaky.inner.records()
    target = FlakyLedger(tmp_path / "target.db")
    writer = SpooledWriter(target, Spool(tmp_path / "spool.jsonl"), retry_after=60.0)
    target.down = True
    assert not writer.write(records[0]) and not writer.write(records[1])
    assert target.attempts == 1  # the second call did not wait on a dead ledger
    target.down = False
    assert not writer.write(records[2])  # still inside the window: spooled
    assert writer.pending() == 3 and writer.flush() == 3  # an explicit flush always tries
    writer.retry_after, writer._down_until = 0.0, 0.0
    assert writer.write(records[3]) and writer.pending() == 0
    assert sorted(ids_in(target)) == sorted(r.call_id for r in records[:4])
    target.inner.close()


def test_replay_is_idempotent_by_call_id(flaky: FlakyLedger, tmp_path: Path) -> None:
    make_calls(flaky, spool="none")
    records = flaky.inner.records()
    spool = Spool(tmp_path / "spool.jsonl")
    # A crash between the insert and the spool rewrite leaves records both in the ledger
    # and in the spool; a record may also be spooled twice.
    for r in [*records, records[0], records[1]]:
        spool.put(r)
    assert spool.pending() == len(records)
    assert spool.flush(flaky) == len(records)
    stored = ids_in(flaky)
    assert len(stored) == len(set(stored)) == len(records)


def test_flush_stops_at_the_first_failure_and_keeps_the_rest(flaky: FlakyLedger, tmp_path: Path) -> None:
    source = FlakyLedger(tmp_path / "source.db")
    make_calls(source, spool="none")
    records = source.inner.records()
    source.inner.close()
    spool = Spool(tmp_path / "spool.jsonl")
    for r in records:
        spool.put(r)
    flaky.fail_after = 2
    assert spool.flush(flaky) == 2
    assert spool.pending() == len(records) - 2
    flaky.down, flaky.fail_after = False, None
    assert spool.flush(flaky) == len(records) - 2
    assert sorted(ids_in(flaky)) == sorted(r.call_id for r in records)


def test_a_torn_line_is_skipped(flaky: FlakyLedger, tmp_path: Path) -> None:
    make_calls(flaky, spool="none")
    record = flaky.inner.records()[0]
    path = tmp_path / "spool.jsonl"
    Spool(path).put(record)
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"call_id": "half')  # the process died mid-write
    assert Spool(path).pending() == 1
    assert Spool(path).flush(flaky) == 1 and not path.exists()


def test_when_the_spool_fails_too_the_call_still_answers(
    flaky: FlakyLedger, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    flaky.down = True
    with caplog.at_level(logging.ERROR, logger="atlas_middleware.ledger"):
        ids = make_calls(flaky, spool=str(blocker / "spool.jsonl"))
    assert len(ids) == 5
    assert "lost" in caplog.text


def test_default_spool_path_is_per_ledger_in_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    a, b = default_spool_path("sqlite:///a.db"), default_spool_path("postgresql://h/db")
    assert a != b and a.parent == tmp_path / "atlas-middleware" / "spool"
    assert SpooledWriter.for_ledger(NullLedger()).spool is None
    assert SpooledWriter.for_ledger(SQLiteLedger(":memory:"), "none").spool is None
    assert AtlasConfig.load(env={"ATLAS_SPOOL": "/x/s.jsonl"}).spool == "/x/s.jsonl"


def test_report_says_how_many_records_are_pending(flaky: FlakyLedger, tmp_path: Path) -> None:
    spool = tmp_path / "spool.jsonl"
    flaky.down = True
    make_calls(flaky, spool=str(spool))
    runner = CliRunner()
    base = ["report", "--ledger", flaky.url, "--spool", str(spool)]
    data = json.loads(runner.invoke(app, [*base, "--json"]).stdout)
    assert data["pending_spooled"] == 5 and data["overall"]["calls"] == 0
    assert "pending spooled records: 5" in runner.invoke(app, base).stdout
    # The ledger is reachable from the CLI (the SQLite file is fine): --flush writes them.
    data = json.loads(runner.invoke(app, [*base, "--json", "--flush"]).stdout)
    assert data["pending_spooled"] == 0 and data["overall"]["calls"] == 5


def _spool_from_process(path: str, records_json: list[str]) -> None:
    spool = Spool(path)
    for line in records_json:
        spool.put(LedgerRecord.model_validate_json(line))


def test_processes_share_one_spool_file(flaky: FlakyLedger, tmp_path: Path) -> None:
    make_calls(flaky, rounds=2, spool="none")
    records = [r.model_dump_json() for r in flaky.inner.records()]
    path = str(tmp_path / "spool.jsonl")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_spool_from_process, args=(path, records[i::3])) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert Spool(path).pending() == len(records) == 10
    assert len(Path(path).read_text().splitlines()) == 10  # no interleaved, torn lines


# -- a spooled record is whole or absent (issue 23, item 4) ----------------------------------


def _records(n: int) -> list[LedgerRecord]:
    from atlas_middleware.report import CallReport

    return [LedgerRecord.from_report(CallReport(student_model="m", policy="strict"), "p" * 600, "a", True)
            for _ in range(n)]


def test_a_torn_tail_is_cut_off_and_never_swallows_the_next_record(
    flaky: FlakyLedger, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = _records(2)
    path = tmp_path / "spool.jsonl"
    lost: dict[str, int] = {}
    spool = Spool(path, on_lost=lambda reason, n: lost.update({reason: lost.get(reason, 0) + n}))
    spool.put(first)
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"call_id": "half')  # the process died mid-write
    with caplog.at_level(logging.ERROR, logger="atlas_middleware.ledger"):
        spool.put(second)  # starts on a line of its own: the torn bytes are cut off first
    assert "torn" in caplog.text and lost == {"torn": 1}
    assert spool.pending() == 2
    assert spool.flush(flaky) == 2 and sorted(ids_in(flaky)) == sorted([first.call_id, second.call_id])


def test_a_torn_tail_found_on_replay_is_logged_and_counted(
    flaky: FlakyLedger, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (record,) = _records(1)
    path = tmp_path / "spool.jsonl"
    lost: dict[str, int] = {}
    spool = Spool(path, on_lost=lambda reason, n: lost.update({reason: lost.get(reason, 0) + n}))
    spool.put(record)
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"call_id": "half')
    with caplog.at_level(logging.ERROR, logger="atlas_middleware.ledger"):
        assert spool.flush(flaky) == 1
    assert lost == {"torn": 1} and "torn" in caplog.text and not path.exists()


def _lost_ids(caplog: pytest.LogCaptureFixture, records: list[LedgerRecord]) -> set[str]:
    errors = " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    return {r.call_id for r in records if r.call_id in errors}


def test_a_full_disk_keeps_every_spooled_record_whole(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from atlas_middleware.testing.faults import FullDisk

    target = FlakyLedger(tmp_path / "target.db")
    target.down = True  # the ledger is locked: every record goes to the spool
    records = _records(12)
    sizes = [len(r.model_dump_json()) + 1 for r in records]
    disk = FullDisk(free=sum(sizes[:4]) + sizes[4] // 2)  # four fit, the fifth is cut mid-line
    writer = SpooledWriter(target, Spool(tmp_path / "spool.jsonl", opener=disk.open), retry_after=0.0)
    with caplog.at_level(logging.ERROR, logger="atlas_middleware.ledger"):
        for r in records[:8]:
            assert not writer.write(r)  # never raises, even with the disk full
        disk.make_room(sum(sizes))  # space returns
        for r in records[8:]:
            assert not writer.write(r)
    assert disk.refused >= 1
    lost = _lost_ids(caplog, records)
    assert lost == {r.call_id for r in records[4:8]}  # each loss logged at ERROR, by call id
    assert writer.status().lost == {"spool_failed": 4}
    target.down = False
    assert writer.flush() == 8
    assert sorted(ids_in(target)) == sorted(r.call_id for r in records if r.call_id not in lost)
    target.inner.close()


@pytest.fixture
def tiny_disk(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A real 64 KiB tmpfs (CI runs as root)."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_real_full_disk_loses_only_the_records_it_says_it_lost(
    tiny_disk: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    target = FlakyLedger(tmp_path / "target.db")
    target.down = True
    filler = tiny_disk / "filler"
    filler.write_bytes(b"x" * 40_000)
    writer = SpooledWriter(target, Spool(tiny_disk / "spool.jsonl"), retry_after=0.0)
    records = _records(30)
    with caplog.at_level(logging.ERROR, logger="atlas_middleware.ledger"):
        for r in records[:25]:
            writer.write(r)
        filler.unlink()  # space returns
        for r in records[25:]:
            writer.write(r)
    lost = _lost_ids(caplog, records)
    assert lost and records[-1].call_id not in lost
    target.down = False
    writer.flush()
    assert sorted(ids_in(target)) == sorted(r.call_id for r in records if r.call_id not in lost)
    assert writer.status().lost == {"spool_failed": len(lost)}
    target.inner.close()


def test_lost_and_spooled_records_are_exported_as_metrics(flaky: FlakyLedger, tmp_path: Path) -> None:
    from atlas_middleware.proxy.metrics import AtlasMetrics

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    flaky.down = True
    writer = SpooledWriter(flaky, Spool(tmp_path / "spool.jsonl"), retry_after=0.0)
    a, b = _records(2)
    writer.write(a)
    writer.spool = Spool(blocker / "spool.jsonl")
    writer.write(b)
    metrics = AtlasMetrics(replica="r1")
    metrics.watch_ledger(writer.status)
    text = metrics.render().decode()
    assert 'atlas_ledger_records_lost_total{reason="spool_failed",replica="r1"} 1.0' in text
    assert 'atlas_ledger_records_spooled_total{reason="error",replica="r1"} 1.0' in text


# -- a ledger that stops answering costs a call no more than its deadline (issue 23, item 2) --


class HungLedger(FlakyLedger):
    """A real SQLite ledger whose appends block while it is frozen, like a SIGSTOPped server:
    the write neither fails nor finishes until ``thaw()``."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._running = threading.Event()
        self._running.set()

    def freeze(self) -> None:
        self._running.clear()

    def thaw(self) -> None:
        self._running.set()

    def append(self, record: LedgerRecord) -> None:
        self.attempts += 1
        self._running.wait()
        self.inner.append(record)


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_hung_ledger_costs_a_call_no_more_than_its_deadline_and_stores_each_record_once(
    tmp_path: Path, driver: str
) -> None:
    ledger = HungLedger(tmp_path / "ledger.db")
    atlas = Atlas(student_backend=ScriptedBackend({"baseline": "42"}), teacher_backend=ScriptedBackend(
        {"teacher": teacher_reply()}), teacher="t", ledger=ledger, spool=str(tmp_path / "spool.jsonl"))

    def one_call() -> tuple[str, float]:
        t0 = time.monotonic()
        if driver == "sync":
            out = atlas.completion("m", QUESTION, timeout=0.5)
        else:
            out = asyncio.run(atlas.acompletion("m", QUESTION, timeout=0.5))
        return out.atlas.call_id, time.monotonic() - t0

    ids = [one_call()[0]]
    ledger.freeze()
    watchdog = threading.Timer(10, ledger.thaw)  # a call stuck on the ledger fails the test, not hangs it
    watchdog.start()
    try:
        during = [one_call() for _ in range(4)]
    finally:
        watchdog.cancel()
    ids += [call_id for call_id, _ in during]
    waits = [w for _, w in during]
    assert max(waits) < 0.5 + 0.2, f"calls took {[round(w, 2) for w in waits]} s"
    # Only the first call met the hung ledger; the next ones went to the spool at once.
    assert ledger.attempts == 2 and atlas.ledger_writer.pending() == 4
    ledger.thaw()  # the stuck write finishes, then the spool is replayed
    for _ in range(100):
        if atlas.ledger_writer.pending() == 0:
            break
        time.sleep(0.05)
    atlas.close()
    stored = ids_in(ledger)
    assert sorted(stored) == sorted(ids) and len(set(stored)) == len(stored)
    ledger.inner.close()


def test_writer_threads_end_when_idle() -> None:
    from atlas_middleware.ledger.bounded import WriterThreads

    threads = WriterThreads(size=4, linger=0.05, name="atlas-test-linger")
    futures = [threads.submit(lambda i=i: i * 2) for i in range(6)]
    assert [f.result(timeout=5) for f in futures if f is not None] == [0, 2, 4, 6, 8, 10]

    def alive() -> int:
        return sum(t.name.startswith("atlas-test-linger") for t in threading.enumerate())

    for _ in range(100):
        if alive() == 0:
            break
        time.sleep(0.02)
    assert alive() == 0
    assert threads.submit(lambda: "again").result(timeout=5) == "again"  # a new one starts
