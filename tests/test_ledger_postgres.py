"""The Postgres ledger against a real server (``scripts/ci-services.sh`` starts one).

Skipped only when ``TEST_POSTGRES_URL`` is unset; CI always sets it. Each test gets a
fresh database, dropped afterwards.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from test_report_support import QUESTION, check_group_json, make_calls
from typer.testing import CliRunner

from atlas_middleware.cli.app import app
from atlas_middleware.cli.commands import report as _registered  # noqa: F401
from atlas_middleware.errors import LedgerError
from atlas_middleware.ledger import LedgerQuery, LedgerRecord, open_ledger
from atlas_middleware.ledger.spool import Spool

BASE_URL = os.environ.get("TEST_POSTGRES_URL")
RESTART = os.environ.get("TEST_POSTGRES_RESTART")
pytestmark = pytest.mark.skipif(
    not BASE_URL, reason="TEST_POSTGRES_URL is unset: run scripts/ci-services.sh (CI always does)"
)


@pytest.fixture
def pg_url() -> Iterator[str]:
    import psycopg

    assert BASE_URL
    name = f"atlas_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(BASE_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = BASE_URL.rsplit("/", 1)[0] + "/" + name
    yield url
    with psycopg.connect(BASE_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_round_trip_filters_and_idempotent_append(pg_url: str) -> None:
    make_calls(pg_url, rounds=2, spool="none")
    ledger = open_ledger(pg_url)
    try:
        rows = ledger.records()
        assert len(rows) == 10
        assert [r.created_at for r in rows] == sorted(r.created_at for r in rows)
        rows[0].report()  # the JSON report survives the trip
        ledger.append(rows[0])  # same call_id: stored once
        assert len(ledger.records()) == 10
        moved = rows[1].model_copy(update={"call_id": "old", "created_at": rows[1].created_at - timedelta(days=2)})
        ledger.append(moved)
        assert [r.call_id for r in ledger.records(LedgerQuery(until=rows[0].created_at))] == ["old"]
        assert len(ledger.records(LedgerQuery(since=rows[0].created_at))) == 10
        assert {r.student_model for r in ledger.records(LedgerQuery(student_model="llama-local"))} == {"llama-local"}
        assert {r.session_id for r in ledger.records(LedgerQuery(session_id="alpha"))} == {"alpha"}
        graded = ledger.records(LedgerQuery(task_family="t:graded sums"))
        assert len(graded) == 2 and {r.task_family for r in graded} == {"t:graded sums"}
        assert len(ledger.records(LedgerQuery(limit=3))) == 3
        # Every flat column reads back as written.
        same = {r.call_id: r for r in ledger.records()}
        assert all(same[r.call_id].model_dump() == r.model_dump() for r in rows)
    finally:
        ledger.close()


def test_schema_is_versioned(pg_url: str) -> None:
    import psycopg

    from atlas_middleware.ledger.postgres import SCHEMA_VERSION, PostgresLedger

    ledger = PostgresLedger(pg_url)
    assert ledger.schema_version() == SCHEMA_VERSION
    ledger.close()
    PostgresLedger(pg_url).close()  # reopening an existing schema is a no-op
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE atlas_meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(LedgerError, match="newer"):
        PostgresLedger(pg_url)


def test_a_ledger_refused_at_construction_leaves_no_connection_open(pg_url: str) -> None:
    # The connection that read a newer schema goes back to the pool; refusing the ledger must
    # close that pool, not leave the connection to the collector (psycopg then warns).
    import psycopg

    from atlas_middleware.ledger.postgres import PostgresLedger

    PostgresLedger(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE atlas_meta SET value = '999' WHERE key = 'schema_version'")
    # Earlier tests' garbage (LiteLLM's dropped clients, filtered in pyproject.toml) is collected
    # first, so that only what the refused ledger leaves behind is seen below.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(LedgerError, match="newer"):
            PostgresLedger(pg_url)
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_a_version_1_database_is_migrated(pg_url: str) -> None:
    import psycopg

    from atlas_middleware.ledger.postgres import SCHEMA_VERSION, PostgresLedger

    PostgresLedger(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as conn:  # back to version 1, with one old row
        conn.execute("ALTER TABLE atlas_calls DROP COLUMN task_family")
        conn.execute("UPDATE atlas_meta SET value = '1' WHERE key = 'schema_version'")
    old = make_record()
    row = old.model_dump(exclude={"task_family"})
    row["tokens"] = json.dumps(row["tokens"])
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f"INSERT INTO atlas_calls ({', '.join(row)}) VALUES ({', '.join(['%s'] * len(row))})",
                     list(row.values()))
    ledger = PostgresLedger(pg_url)
    try:
        assert ledger.schema_version() == SCHEMA_VERSION
        (back,) = ledger.records()
        assert back.call_id == old.call_id and back.task_family is None
        ledger.append(make_record().model_copy(update={"call_id": "new", "task_family": "t:after"}))
        assert [r.task_family for r in ledger.records()] == [None, "t:after"]
        assert [r.call_id for r in ledger.records(LedgerQuery(task_family="t:after"))] == ["new"]
    finally:
        ledger.close()
    with psycopg.connect(pg_url, autocommit=True) as conn:
        indexes = conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'atlas_calls'").fetchall()
    assert any("(task_family)" in d for (d,) in indexes)


def test_the_family_reaches_the_postgres_ledger(pg_url: str, make_atlas, call) -> None:  # type: ignore[no-untyped-def]
    from atlas_middleware.teaching.families import family_of

    atlas, *_ = make_atlas(ledger=pg_url, spool="none")
    tagged = call(atlas, atlas={"task": "sums"}).atlas
    derived = call(atlas).atlas
    assert tagged.task_family == "t:sums" and derived.task_family == family_of(QUESTION, {})
    rows = {r.call_id: r for r in atlas.ledger.records()}
    assert rows[tagged.call_id].task_family == "t:sums" and rows[derived.call_id].task_family == derived.task_family


def test_password_never_shows_in_the_url(pg_url: str) -> None:
    from atlas_middleware.ledger.postgres import sqlalchemy_url

    assert sqlalchemy_url("postgres://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    with pytest.raises(LedgerError):
        open_ledger(pg_url.replace("postgresql://postgres@", "postgresql://nobody:s3cret@"))
    ledger = open_ledger(pg_url.replace("postgresql://", "postgresql+psycopg://"))
    assert "s3cret" not in ledger.url
    ledger.close()


def test_a_server_that_is_away_does_not_stop_start_up() -> None:
    # A replica must start while the database restarts; writes fail (and are spooled).
    ledger = open_ledger("postgresql://postgres@127.0.0.1:1/nothing")
    with pytest.raises(LedgerError):
        ledger.append(make_record())
    with pytest.raises(LedgerError):
        ledger.records()
    ledger.close()


def test_a_missing_database_is_refused_at_once(pg_url: str) -> None:
    with pytest.raises(LedgerError, match="does not exist"):
        open_ledger(pg_url + "_missing")


def make_record() -> LedgerRecord:
    from atlas_middleware.report import CallReport

    return LedgerRecord.from_report(CallReport(student_model="m", policy="strict"), "p", "a", False)


def test_report_reads_postgres(pg_url: str) -> None:
    make_calls(pg_url, rounds=1, spool="none")
    result = CliRunner().invoke(app, ["report", "--ledger", pg_url, "--json", "--group-by", "model"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    ledger = open_ledger(pg_url)
    rows = ledger.records()
    ledger.close()
    check_group_json(data["overall"], rows)
    for g in data["groups"]:
        check_group_json(g, [r for r in rows if r.student_model == g["key"]])


WRITER = textwrap.dedent("""
    import json, logging, sys, time
    sys.path.insert(0, {tests!r})
    from test_report_support import QUESTION
    from atlas_middleware import Atlas
    from atlas_middleware.testing import ScriptedBackend, teacher_reply

    class Count(logging.Handler):
        spooled = 0
        def emit(self, record):
            if "spooled to" in record.getMessage():
                Count.spooled += 1
    logging.getLogger("atlas_middleware.ledger").addHandler(Count())
    url, spool, out, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    atlas = Atlas(student_backend=ScriptedBackend({{"probe": "add", "baseline": "The answer is 42",
                  "guided": "The answer is 42"}}), teacher_backend=ScriptedBackend({{"teacher": teacher_reply()}}),
                  teacher="t", ledger=url, spool=spool)
    ids = []
    for i in range(n):
        ids.append(atlas.completion("m", QUESTION).atlas.call_id)
        time.sleep(0.01)
    for _ in range(100):  # the ledger is back by now; leave nothing behind
        atlas.flush()
        if atlas.ledger_writer.pending() == 0:
            break
        time.sleep(0.2)
    atlas.close()
    json.dump({{"ids": ids, "spooled": Count.spooled}}, open(out, "w"))
""")


@pytest.mark.slow
@pytest.mark.skipif(not RESTART, reason="TEST_POSTGRES_RESTART is unset: run scripts/ci-services.sh")
def test_writers_in_several_processes_survive_a_server_restart(pg_url: str, tmp_path: Path) -> None:
    assert RESTART
    open_ledger(pg_url).close()  # create the schema before the writers race for it
    writers, per_writer = 4, 80
    spool = tmp_path / "shared-spool.jsonl"  # one spool file for all writers: flock keeps it sane
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(tests=str(Path(__file__).parent)))
    procs = [
        subprocess.Popen([sys.executable, str(script), pg_url, str(spool), str(tmp_path / f"w{i}.json"), str(per_writer)])
        for i in range(writers)
    ]
    ledger = open_ledger(pg_url)
    try:
        deadline = time.monotonic() + 120
        while ledger.count() < writers * per_writer // 4:  # type: ignore[attr-defined]
            assert time.monotonic() < deadline, "the writers never got going"
            time.sleep(0.1)
        before = ledger.count()  # type: ignore[attr-defined]
        restarted = threading.Event()

        def restart() -> None:
            subprocess.run([RESTART], check=True, timeout=120)
            restarted.set()

        t = threading.Thread(target=restart)
        t.start()
        t.join(150)
        assert restarted.is_set()
        for p in procs:
            assert p.wait(timeout=180) == 0
        results = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(writers)]
        written = [call_id for r in results for call_id in r["ids"]]
        stored = [r.call_id for r in ledger.records()]
        # Nothing lost, nothing duplicated.
        assert len(written) == writers * per_writer
        assert sorted(stored) == sorted(written)
        assert len(set(stored)) == len(stored)
        assert Spool(spool).pending() == 0
        assert before < writers * per_writer  # the restart happened mid-run
        spooled = sum(r["spooled"] for r in results)
        print(f"restart after {before} of {writers * per_writer} records; {spooled} spooled and replayed")
    finally:
        ledger.close()
        for p in procs:
            if p.poll() is None:
                p.kill()
