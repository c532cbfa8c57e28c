"""Independent calls run at once: a taught strict call costs about its longest branch."""

from __future__ import annotations

import asyncio
import threading
import time

from conftest import QUESTION

DELAYS = {"probe": 0.1, "guided": 0.2, "baseline": 0.6}
TEACHER_DELAYS = {"teacher": 0.2}
# critical path: max(baseline 0.6, probe + teacher + guided 0.5) = 0.6; the sum would be 1.1


def test_strict_baseline_runs_beside_the_guidance_path_sync(make_atlas) -> None:
    atlas, *_ = make_atlas(student_delays=DELAYS, teacher_delays=TEACHER_DELAYS,
                           student={"guided": "The answer is 41"})
    t0 = time.perf_counter()
    r = atlas.completion(model="m", messages=QUESTION).atlas
    wall = time.perf_counter() - t0
    assert r.reason == "agreement"
    assert 0.6 <= wall < 0.95, wall


def test_strict_baseline_runs_beside_the_guidance_path_async(make_atlas) -> None:
    atlas, *_ = make_atlas(student_delays=DELAYS, teacher_delays=TEACHER_DELAYS,
                           student={"guided": "The answer is 41"})

    async def go() -> float:
        t0 = time.perf_counter()
        await atlas.acompletion(model="m", messages=QUESTION)
        return time.perf_counter() - t0

    wall = asyncio.run(go())
    assert 0.6 <= wall < 0.95, wall


def test_many_concurrent_async_calls_overlap(make_atlas) -> None:
    atlas, student, _ = make_atlas(student_delays=DELAYS, teacher_delays=TEACHER_DELAYS)

    async def go() -> float:
        t0 = time.perf_counter()
        reports = await asyncio.gather(*(atlas.acompletion(model="m", messages=QUESTION) for _ in range(50)))
        assert len({r.atlas.call_id for r in reports}) == 50
        return time.perf_counter() - t0

    wall = asyncio.run(go())
    assert wall < 3.0, wall  # 50 sequential calls would take 30 s
    assert student.roles().count("baseline") == 50


def test_many_threads_share_one_atlas(make_atlas, tmp_path) -> None:
    atlas, *_ = make_atlas(student_delays={"baseline": 0.05}, ledger=f"sqlite:///{tmp_path / 'l.db'}")
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                atlas.completion(model="m", messages=QUESTION)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = atlas.ledger.records()
    assert len(rows) == 40 and len({r.call_id for r in rows}) == 40
