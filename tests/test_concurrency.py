"""Independent calls run at once: a taught strict call costs about its longest branch."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
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


def _watch_threads(backend: Any, where: dict[str, int], baseline_started: threading.Event) -> None:
    """Record the thread each role's call runs in; the probe waits (bounded) for the baseline
    to have started, so a baseline that did not run beside it fails the probe."""
    from atlas_middleware.testing.scripted import classify

    complete = backend.complete

    def watched(request: Any) -> Any:
        role = classify(request)
        where[role] = threading.get_ident()
        if role == "baseline":
            baseline_started.set()
        if role == "probe":
            assert baseline_started.wait(5), "the baseline did not run beside the probe"
        return complete(request)

    backend.complete = watched


@pytest.mark.parametrize("timeout", [None, 30.0])
def test_sync_driver_hands_a_worker_only_the_calls_that_need_one(make_atlas, timeout) -> None:  # type: ignore[no-untyped-def]
    # The guided answer, without a deadline, is the one call the caller would only wait for:
    # it runs in the caller's thread (no worker hand-off). Probe and teacher have a deadline
    # the caller can give up on, and the baseline runs beside them: workers. With the
    # caller's own timeout every call has a deadline, so every call runs in a worker.
    atlas, student, teacher = make_atlas(student={"guided": "The answer is 41"})
    where: dict[str, int] = {}
    started = threading.Event()
    _watch_threads(student, where, started)
    _watch_threads(teacher, where, started)
    r = atlas.completion(model="m", messages=QUESTION, timeout=timeout).atlas
    assert r.reason == "agreement"
    caller = threading.get_ident()
    assert caller not in {where["probe"], where["teacher"], where["baseline"]}
    assert (where["guided"] == caller) is (timeout is None)


@pytest.mark.parametrize("ledger", ["none", "sqlite"])
def test_async_call_ends_off_the_event_loop_only_when_its_ending_can_wait(make_atlas, tmp_path, ledger) -> None:  # type: ignore[no-untyped-def]
    # The end of a call (the ledger write, the gate's and the baselines' state; then the
    # breaker and the session, ``_observe``) runs in one worker thread when it may wait on
    # I/O, both in the same hop; with no ledger and the state in memory it runs on the loop,
    # where a thread hop would cost more than the work.
    atlas, *_ = make_atlas(ledger="none" if ledger == "none" else f"sqlite:///{tmp_path}/ledger.db")
    seen = _watch_ending(atlas)

    async def go() -> int:
        await atlas.acompletion(model="m", messages=QUESTION)
        await atlas.aflush()
        return threading.get_ident()

    loop_thread = asyncio.run(go())
    assert [name for name, _ in seen] == ["done", "observe"]
    assert seen[0][1] == seen[1][1] and (seen[0][1] == loop_thread) is (ledger == "none")


def test_async_live_stream_is_observed_once_before_it_is_read(make_atlas, tmp_path) -> None:  # type: ignore[no-untyped-def]
    atlas, *_ = make_atlas(policy="off", ledger=f"sqlite:///{tmp_path}/ledger.db")
    seen = _watch_ending(atlas)

    async def go() -> list[str]:
        stream = await atlas.acompletion(model="m", messages=QUESTION, stream=True)
        before = [name for name, _ in seen]
        async for _ in stream:
            pass
        await atlas.aflush()
        return before

    assert asyncio.run(go()) == ["observe"]  # the breaker's verdict does not wait for the reader
    assert [name for name, _ in seen] == ["observe", "done"]


def _watch_ending(atlas: Any) -> list[tuple[str, int]]:
    """Record, in order, the threads ``_done`` and ``_observe`` run in."""
    seen: list[tuple[str, int]] = []

    def watch(name: str, fn: Any) -> Any:
        def watched(*args: Any, **kwargs: Any) -> None:
            seen.append((name, threading.get_ident()))
            fn(*args, **kwargs)
        return watched

    atlas._done, atlas._observe = watch("done", atlas._done), watch("observe", atlas._observe)
    return seen
