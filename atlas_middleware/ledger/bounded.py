"""Threads that run ledger writes, so that a caller can stop waiting for one.

A write to a database that stopped answering (a frozen VM, a SIGSTOPped server, a host
gone without a reset) blocks inside the driver's C-level socket read, where no Python
timeout reaches it: the server's kernel still acknowledges every packet, so TCP
keepalives and ``tcp_user_timeout`` do not fire either. The only bound a caller can keep
is not to run the write on its own thread: ``WriterThreads.submit`` runs it here and the
caller waits on the future for as long as it may (``SpooledWriter``), then moves on.

The threads are daemons: a write stuck on a frozen server must not keep the process from
exiting (``ThreadPoolExecutor`` joins its workers at exit). The pool is small and grows on
demand; jobs beyond ``max_queued`` are refused (None) rather than held in memory. A
thread idle for ``linger`` seconds ends: an ``Atlas`` built and dropped leaves none behind.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class WriterThreads:
    def __init__(self, size: int = 16, max_queued: int = 1024, linger: float = 5.0,
                 name: str = "atlas-ledger-write") -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._size, self._max_queued, self._linger, self._name = size, max_queued, linger, name
        # Every job waiting (queued) has an idle thread to take it: submit starts one otherwise,
        # and a thread leaves only while more threads are idle than jobs wait.
        self._threads = self._idle = self._queued = 0

    def submit(self, fn: Callable[[], Any]) -> Future[Any] | None:
        """Run ``fn`` on a writer thread; None when ``max_queued`` jobs already wait."""
        future: Future[Any] = Future()
        with self._lock:
            if self._queued >= self._max_queued:
                return None
            self._queued += 1
            grow = self._queued > self._idle and self._threads < self._size
            if grow:
                self._threads += 1
                self._idle += 1
        if grow:
            threading.Thread(target=self._work, name=f"{self._name}-{self._threads}", daemon=True).start()
        self._jobs.put((future, fn))
        return future

    def _work(self) -> None:
        while True:
            try:
                future, fn = self._jobs.get(timeout=self._linger)
            except queue.Empty:
                with self._lock:
                    if self._queued < self._idle:
                        self._idle -= 1
                        self._threads -= 1
                        return
                continue
            with self._lock:
                self._idle -= 1
                self._queued -= 1
            _run(future, fn)
            with self._lock:
                self._idle += 1


def _run(future: Future[Any], fn: Callable[[], Any]) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        result = fn()
    except BaseException as exc:  # handed to the waiter, as ThreadPoolExecutor does
        future.set_exception(exc)
    else:
        future.set_result(result)
