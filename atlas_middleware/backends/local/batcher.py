"""Gather concurrent requests into batches for one worker thread, with a bounded queue.

A teacher shared by many users must not serve them one at a time: decoding one sequence
or sixty-four costs nearly the same per step on a GPU. Callers ``submit`` a job from any
thread or event loop and get a ``concurrent.futures.Future``; one worker thread takes
everything waiting (up to ``max_batch_size``), after waiting at most ``max_wait_s`` for
company when it would otherwise start a batch of one, and runs it in one call.

Back-pressure: at most ``max_queue`` jobs wait (jobs being decoded do not count). One more
raises ``QueueFullError`` at once, so overload is an immediate, clear error and memory
stays bounded, never a queue that grows until the process dies.

Failure isolation: when the runner raises for a batch of several jobs, the batch is split
in halves and each half runs again, down to single jobs. A job that fails alone (a request
the model cannot take) fails alone, with its own exception; its batch-mates still get their
answers, at the cost of a few more runs (about two per halving). A failure of every job
(the model itself is broken) still reaches every caller.

Abandonment: a caller that stops waiting calls ``abandon(future)``. A job still waiting
leaves the queue at once (its slot is free again) and never starts; a job already running
fails its caller at once with ``RequestAbandonedError``, and stopping its work is the
runner's business (``local_generation`` drops the row at its next decode step). Cancelling
a waiting job's future directly also frees its slot.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Generic, TypeVar

from ...errors import AtlasError, QueueFullError

J = TypeVar("J")
R = TypeVar("R")
V = TypeVar("V")


class BatcherClosedError(AtlasError):
    """The batcher was closed; no more jobs are accepted."""


class RequestAbandonedError(AtlasError):
    """The caller stopped waiting for this job (a deadline passed, or it was cancelled)."""


class Batcher(Generic[J, R]):
    def __init__(
        self,
        run: Callable[[list[J]], Sequence[R]],
        *,
        max_batch_size: int = 16,
        max_wait_s: float = 0.01,
        max_queue: int = 256,
        name: str = "atlas-batcher",
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_wait_s >= 0")
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._queue: deque[tuple[J, Future[R]]] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._started = False
        self.batch_sizes: list[int] = []
        """Size of every batch run so far (for tests and benchmarks; bounded below)."""

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._queue)

    def submit(self, job: J) -> Future[R]:
        future: Future[R] = Future()
        with self._cond:
            if self._closed:
                raise BatcherClosedError("this local backend was closed")
            if len(self._queue) >= self.max_queue:
                raise QueueFullError(
                    f"local model queue is full ({self.max_queue} requests waiting); "
                    "retry later, raise max_queue, or add replicas"
                )
            self._queue.append((job, future))
            # A waiting job whose future is cancelled leaves the queue at once.
            future.add_done_callback(self._forget)
            if not self._started:
                self._started = True
                self._thread.start()
            self._cond.notify_all()
        return future

    def abandon(self, future: Future[R], error: BaseException | None = None) -> bool:
        """The caller of ``future`` stops waiting. A waiting job is dropped from the queue
        and never starts (True); a running one fails its future now with ``error`` (default
        ``RequestAbandonedError``) and its result, when it comes, is thrown away (False).
        Stopping the running job's work is up to the runner."""
        if future.cancel():  # still waiting (or just taken, not yet started)
            return True
        try:
            future.set_exception(error or RequestAbandonedError("the caller stopped waiting"))
        except InvalidStateError:
            pass  # it finished first
        return False

    def _forget(self, future: Future[R]) -> None:
        if not future.cancelled():
            return
        with self._cond:
            for i, (_, queued) in enumerate(self._queue):
                if queued is future:
                    del self._queue[i]
                    self._cond.notify_all()
                    return

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting jobs; jobs still waiting fail with ``BatcherClosedError``."""
        with self._cond:
            self._closed = True
            dropped = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for _, future in dropped:
            if future.set_running_or_notify_cancel():
                future.set_exception(BatcherClosedError("this local backend was closed"))
        if self._started and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _take(self) -> list[tuple[J, Future[R]]] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            # Alone in the queue: wait briefly for the calls that usually come together
            # (guided and baseline start at the same moment) rather than run a batch of one.
            deadline = time.monotonic() + self.max_wait_s
            while self._queue and len(self._queue) < self.max_batch_size and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            count = min(self.max_batch_size, len(self._queue))  # 0: all were abandoned
            return [self._queue.popleft() for _ in range(count)]

    def _work(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            # A caller that gave up just after the job was taken has cancelled it: skip it.
            batch = [(job, fut) for job, fut in taken if fut.set_running_or_notify_cancel()]
            if not batch:
                continue
            self._serve(batch)

    def _serve(self, batch: list[tuple[J, Future[R]]]) -> None:
        """Run ``batch``. When the runner raises for several jobs, run each half again, down
        to single jobs: only the job that fails alone hears of its failure."""
        self.batch_sizes.append(len(batch))
        del self.batch_sizes[:-1000]
        try:
            results = self._run([job for job, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch runner returned {len(results)} results for {len(batch)} jobs")
        except Exception as exc:
            if len(batch) == 1:
                _resolve(batch[0][1].set_exception, exc)
                return
            middle = len(batch) // 2
            for half in (batch[:middle], batch[middle:]):
                waiting = [(job, fut) for job, fut in half if not fut.done()]  # abandoned ones are done
                if waiting:
                    self._serve(waiting)
            return
        except BaseException as exc:  # not the jobs' doing (KeyboardInterrupt, ...): every caller hears of it
            for _, fut in batch:
                _resolve(fut.set_exception, exc)
            return
        for (_, fut), result in zip(batch, results, strict=True):
            _resolve(fut.set_result, result)


def _resolve(setter: Callable[[V], None], value: V) -> None:
    """Set a future's outcome unless an abandoning caller already failed it."""
    try:
        setter(value)
    except InvalidStateError:
        pass
