"""The batcher alone (no model): batching, bounded queue, failures, cancellation."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from atlas_middleware.backends.local.batcher import Batcher, BatcherClosedError, RequestAbandonedError
from atlas_middleware.errors import QueueFullError


class Gate:
    """A runner that records each batch and blocks until released."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = threading.Event()
        self.entered = threading.Event()

    def __call__(self, jobs: list[int]) -> list[int]:
        self.batches.append(list(jobs))
        self.entered.set()
        assert self.release.wait(10)
        return [j * 10 for j in jobs]


def test_concurrent_submissions_share_one_batch() -> None:
    gate = Gate()
    gate.release.set()
    batcher: Batcher[int, int] = Batcher(gate, max_batch_size=8, max_wait_s=0.5)
    barrier = threading.Barrier(5)

    def call(i: int) -> int:
        barrier.wait()
        return batcher.submit(i).result(timeout=10)

    with ThreadPoolExecutor(5) as pool:
        results = list(pool.map(call, range(5)))
    assert results == [0, 10, 20, 30, 40]
    assert sorted(sum(gate.batches, [])) == [0, 1, 2, 3, 4]
    assert len(gate.batches) < 5, "concurrent calls were run one at a time"
    batcher.close()


def test_arrivals_during_a_batch_form_the_next_one_up_to_max_batch_size() -> None:
    gate = Gate()
    batcher: Batcher[int, int] = Batcher(gate, max_batch_size=3, max_wait_s=0.0)
    first = batcher.submit(0)
    assert gate.entered.wait(5)
    later = [batcher.submit(i) for i in range(1, 6)]
    gate.release.set()
    assert [f.result(timeout=10) for f in [first, *later]] == [0, 10, 20, 30, 40, 50]
    assert gate.batches == [[0], [1, 2, 3], [4, 5]]
    batcher.close()


def test_full_queue_raises_at_once_and_memory_stays_bounded() -> None:
    gate = Gate()
    batcher: Batcher[int, int] = Batcher(gate, max_batch_size=1, max_wait_s=0.0, max_queue=2)
    running = batcher.submit(0)
    assert gate.entered.wait(5)  # job 0 is decoding: it no longer counts as waiting
    waiting = [batcher.submit(1), batcher.submit(2)]
    started = time.perf_counter()
    with pytest.raises(QueueFullError, match="2 requests waiting"):
        batcher.submit(3)
    assert time.perf_counter() - started < 1.0
    assert batcher.waiting == 2
    gate.release.set()
    assert [f.result(timeout=10) for f in [running, *waiting]] == [0, 10, 20]
    batcher.submit(4).result(timeout=10)  # room again once the queue drained
    batcher.close()


def test_a_job_that_fails_its_batch_fails_alone_and_its_batch_mates_are_answered() -> None:
    calls: list[list[int]] = []

    def run(jobs: list[int]) -> list[int]:
        calls.append(list(jobs))
        if 2 in jobs:
            raise ValueError("job 2 cannot run")
        return [j * 10 for j in jobs]

    batcher: Batcher[int, int] = Batcher(run, max_batch_size=4, max_wait_s=0.5)
    futures = [batcher.submit(i) for i in range(4)]
    assert [f.result(timeout=10) for i, f in enumerate(futures) if i != 2] == [0, 10, 30]
    with pytest.raises(ValueError, match="job 2 cannot run"):
        futures[2].result(timeout=10)
    # the batch, then its halves, then the failing half's halves
    assert calls == [[0, 1, 2, 3], [0, 1], [2, 3], [2], [3]]
    assert batcher.batch_sizes == [4, 2, 2, 1, 1]
    batcher.close()


def test_a_failure_of_every_job_reaches_every_caller_and_the_next_batch_still_runs() -> None:
    calls = []

    def run(jobs: list[int]) -> list[int]:
        calls.append(jobs)
        if len(calls) <= 5:  # the batch of 3, then every part of it
            raise RuntimeError("CUDA out of memory")
        return jobs

    batcher: Batcher[int, int] = Batcher(run, max_batch_size=4, max_wait_s=0.2)
    futures = [batcher.submit(i) for i in range(3)]
    for f in futures:
        with pytest.raises(RuntimeError, match="out of memory"):
            f.result(timeout=10)
    assert calls == [[0, 1, 2], [0], [1, 2], [1], [2]]
    assert batcher.submit(7).result(timeout=10) == 7
    batcher.close()


def test_an_abandoned_job_is_not_run_again_when_its_batch_is_split() -> None:
    calls: list[list[int]] = []
    batcher: Batcher[int, int]

    def run(jobs: list[int]) -> list[int]:
        calls.append(list(jobs))
        if len(calls) == 1:
            batcher.abandon(futures[0])  # its caller leaves while the batch runs, then it fails
            raise RuntimeError("boom")
        return jobs

    batcher = Batcher(run, max_batch_size=4, max_wait_s=0.5)
    futures = [batcher.submit(i) for i in range(4)]
    assert [f.result(timeout=10) for f in futures[1:]] == [1, 2, 3]
    with pytest.raises(RequestAbandonedError):
        futures[0].result(timeout=10)
    assert calls == [[0, 1, 2, 3], [1], [2, 3]]
    batcher.close()


def test_cancelled_waiting_jobs_are_skipped() -> None:
    gate = Gate()
    batcher: Batcher[int, int] = Batcher(gate, max_batch_size=4, max_wait_s=0.0)
    batcher.submit(0)
    assert gate.entered.wait(5)
    dropped = batcher.submit(1)
    kept = batcher.submit(2)
    assert dropped.cancel()
    assert batcher.waiting == 1, "a cancelled job kept its queue slot"
    gate.release.set()
    assert kept.result(timeout=10) == 20
    assert [1] not in gate.batches and all(1 not in b for b in gate.batches)
    batcher.close()


def test_close_fails_waiting_jobs_and_refuses_new_ones() -> None:
    gate = Gate()
    batcher: Batcher[int, int] = Batcher(gate, max_batch_size=1, max_wait_s=0.0)
    batcher.submit(0)
    assert gate.entered.wait(5)
    waiting = batcher.submit(1)
    batcher.close(timeout=0.05)  # job 0 is still decoding; job 1 never started
    gate.release.set()
    with pytest.raises(BatcherClosedError):
        waiting.result(timeout=5)
    with pytest.raises(BatcherClosedError):
        batcher.submit(2)


def test_an_abandoned_waiting_job_frees_its_slot_at_once_and_never_runs() -> None:
    gate = Gate()
    batcher: Batcher[int, int] = Batcher(gate, max_batch_size=1, max_wait_s=0.0, max_queue=2)
    running = batcher.submit(0)
    assert gate.entered.wait(5)
    gone, kept = batcher.submit(1), batcher.submit(2)
    with pytest.raises(QueueFullError):
        batcher.submit(3)
    assert batcher.abandon(gone) is True  # it had not started
    assert gone.cancelled() and batcher.waiting == 1
    late = batcher.submit(3)  # the freed slot is usable before the running batch ends
    gate.release.set()
    assert [f.result(timeout=10) for f in (running, kept, late)] == [0, 20, 30]
    assert all(1 not in b for b in gate.batches)
    batcher.close()


def test_an_abandoned_running_job_fails_its_caller_now_and_the_batch_goes_on() -> None:
    gate = Gate()
    batcher: Batcher[int, int] = Batcher(gate, max_batch_size=3, max_wait_s=0.5)
    timed_out, dropped, stayed = batcher.submit(1), batcher.submit(2), batcher.submit(3)
    assert gate.entered.wait(5) and gate.batches == [[1, 2, 3]]
    reason = TimeoutError("deadline")
    assert batcher.abandon(timed_out, reason) is False  # already running
    assert timed_out.exception(timeout=0) is reason, "the caller was kept waiting for the batch"
    assert batcher.abandon(dropped) is False
    with pytest.raises(RequestAbandonedError):  # the default reason
        dropped.result(timeout=0)
    gate.release.set()
    assert stayed.result(timeout=10) == 30
    # The batch's late results for the abandoned jobs were dropped without hurting the worker.
    assert batcher.submit(4).result(timeout=10) == 40
    batcher.close()


def test_a_lone_job_abandoned_while_waiting_for_company_never_runs() -> None:
    runs: list[list[int]] = []
    batcher: Batcher[int, int] = Batcher(lambda jobs: runs.append(jobs) or jobs, max_batch_size=4, max_wait_s=0.3)
    gone = batcher.submit(1)
    assert batcher.abandon(gone) is True
    assert batcher.waiting == 0
    time.sleep(0.4)  # past the wait for company
    assert batcher.submit(2).result(timeout=10) == 2
    assert runs == [[2]] and batcher.batch_sizes == [1]
    batcher.close()
