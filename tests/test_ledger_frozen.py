"""A frozen PostgreSQL server (SIGSTOP) costs no call more than its deadline; every record
lands exactly once when it thaws (SIGCONT).

A SIGSTOPped server still accepts TCP connections (the kernel answers for it) but never
replies: no socket or statement timeout of the client fires. The test freezes a throwaway
server of its own (``testing/postgres.py``), never the shared CI one, which other tests use
at the same time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import QUESTION

from atlas_middleware import Atlas
from atlas_middleware.testing import ScriptedBackend, teacher_reply
from atlas_middleware.testing.postgres import ThrowawayPostgres

pytest.importorskip("sqlalchemy", reason="the Postgres ledger needs the 'postgres' extra")
pytest.importorskip("psycopg", reason="the Postgres ledger needs the 'postgres' extra")
_WHY = ThrowawayPostgres.unavailable()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_WHY is not None, reason=_WHY or "")]

TIMEOUT = 2.0


@pytest.fixture(scope="module")
def server() -> Iterator[ThrowawayPostgres]:
    with ThrowawayPostgres() as pg:
        yield pg


@pytest.fixture
def atlas(server: ThrowawayPostgres, tmp_path: Path) -> Iterator[Atlas]:
    made = Atlas(student_backend=ScriptedBackend({"probe": "add", "baseline": "The answer is 42",
                                                  "guided": "The answer is 42"}),
                 teacher_backend=ScriptedBackend({"teacher": teacher_reply()}), teacher="t",
                 ledger=server.url, spool=str(tmp_path / "spool.jsonl"))
    yield made
    server.resume()
    made.close()


def _timed(atlas: Atlas, driver: str) -> tuple[str, float]:
    t0 = time.monotonic()
    if driver == "sync":
        out = atlas.completion("m", QUESTION, timeout=TIMEOUT)
    else:
        out = asyncio.run(atlas.acompletion("m", QUESTION, timeout=TIMEOUT))
    return out.atlas.call_id, time.monotonic() - t0


@pytest.mark.parametrize("driver", ["sync", "async"])
def test_a_frozen_server_costs_no_call_more_than_its_deadline(
    server: ThrowawayPostgres, atlas: Atlas, driver: str
) -> None:
    ids = [_timed(atlas, driver)[0] for _ in range(2)]  # the pool holds live connections
    server.pause()
    # Should a call hang on the frozen server (as it did), thaw it later so the test fails
    # instead of hanging.
    watchdog = threading.Timer(20 * TIMEOUT, server.resume)
    watchdog.start()
    try:
        during = [_timed(atlas, driver) for _ in range(6)]
    finally:
        watchdog.cancel()
        server.resume()
    waits = [round(w, 2) for _, w in during]
    assert max(waits) < TIMEOUT + 0.3, f"calls took {waits} s with the server frozen"
    ids += [call_id for call_id, _ in during]
    assert atlas.ledger_writer.pending() >= 5  # the first write may still land when it thaws
    deadline = time.monotonic() + 60
    while atlas.ledger_writer.pending() and time.monotonic() < deadline:
        atlas.flush()
        time.sleep(0.1)
    assert atlas.ledger_writer.pending() == 0
    stored = [r.call_id for r in atlas.ledger.records()]
    mine = [c for c in stored if c in set(ids)]
    assert sorted(mine) == sorted(ids), "a record was lost or stored twice"
