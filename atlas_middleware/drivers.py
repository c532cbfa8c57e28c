"""Thin drivers that run the teaching flow: one with threads, one with asyncio tasks.

Both do the same four things and nothing else: start calls, wait for them (with the call's
deadline), run blocking user code off the caller's path, and hand the delivered answer
back the moment the flow says ``Deliver``. Work the flow does after delivery (an audit)
finishes in the background and then reaches ``on_done`` (the ledger).

Giving up on a call tells its backend: the async driver cancels the call's task (the
backend sees ``CancelledError``); the sync driver, whose worker thread cannot be
interrupted, cancels the call's ``CancelToken``. A backend that can stop early (the local
batcher) then drops the request instead of decoding an answer nobody reads.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .backends.base import CancelToken, ChatBackend, cancellation
from .errors import TeacherTimeout
from .report import CallReport
from .teaching.commands import (
    BlockingResult,
    CallResult,
    Cancel,
    Command,
    Deliver,
    ModelCall,
    RunBlocking,
    Start,
    Wait,
)
from .teaching.flow import Flow

# asyncio (about 40 ms to import, ssl included) is imported inside AsyncDriver's coroutines:
# they run on an event loop, so it is loaded by then, and sync users never pay for it.
if TYPE_CHECKING:
    import asyncio

OnDone = Callable[[CallReport, "Delivered"], None]


@dataclass
class Delivered:
    """What the user gets: the answer (or the student's error) and a snapshot of the report."""

    response: Any
    error: BaseException | None
    report: CallReport


def _timeout_error(call: ModelCall) -> TeacherTimeout:
    return TeacherTimeout(f"{call.role} call gave no answer within {call.timeout:g} s")


def _snapshot(cmd: Deliver, started: float) -> Delivered:
    report: CallReport = cmd.report
    report.latency_ms["total"] = round((time.perf_counter() - started) * 1000, 3)
    # The user's copy must not change while an audit goes on in the background. The flow
    # only reassigns fields (usage values are immutable), so copying the containers is
    # enough, and far cheaper than a deep copy on every call.
    snapshot = report.model_copy(update={
        "usage": report.usage.model_copy(),
        "latency_ms": dict(report.latency_ms),
        "errors": list(report.errors),
    })
    return Delivered(cmd.response, cmd.error, snapshot)


_Pending = tuple[ModelCall, float, Future[CallResult], CancelToken]
"""A started call: the call, when it started, its worker's future, its cancel token."""


def _give_up(future: Future[CallResult], token: CancelToken) -> None:
    """Nobody waits for this call any more: never start it, or tell its backend to stop."""
    future.cancel()
    token.cancel()


class SyncDriver:
    """Runs calls on a shared thread pool; the caller's thread runs the flow itself."""

    def __init__(self, backends: Mapping[str, ChatBackend], max_workers: int = 32) -> None:
        self.backends = backends
        # One pool per target: a hung teacher whose abandoned calls still occupy threads
        # (a thread cannot be killed) must not starve the student's calls of workers.
        self._pools = {
            target: ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"atlas-{target}")
            for target in ("student", "teacher")
        }
        self._background: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._handles = itertools.count(1)

    def _call(self, call: ModelCall, token: CancelToken) -> CallResult:
        t0 = time.perf_counter()
        try:
            with cancellation(token):
                response = self.backends[call.target].complete(call.request)
            return CallResult(call, response=response, latency_ms=(time.perf_counter() - t0) * 1000)
        except Exception as exc:  # the flow decides what an error means
            return CallResult(call, error=exc, latency_ms=(time.perf_counter() - t0) * 1000)

    def _wait(self, pending: dict[int, _Pending], handles: tuple[int, ...]) -> list[CallResult]:
        results = []
        for h in handles:
            call, started, future, token = pending.pop(h)
            if call.timeout is None:
                results.append(future.result())
                continue
            remaining = started + call.timeout - time.perf_counter()
            try:
                results.append(future.result(timeout=max(0.0, remaining)))
            except FutureTimeout:
                # The thread cannot be killed: its backend is told to stop (if it can), and
                # its late answer is ignored.
                _give_up(future, token)
                results.append(CallResult(call, error=_timeout_error(call), latency_ms=call.timeout * 1000))
        return results

    def _pump(self, flow: Flow, send: Any, pending: dict[int, Any], started: float) -> Delivered | CallReport:
        """Advance the flow until it delivers (returns ``Delivered``) or ends (the report)."""
        while True:
            try:
                cmd: Command = flow.send(send)
            except StopIteration as stop:
                for _, _, future, token in pending.values():
                    _give_up(future, token)
                return stop.value  # type: ignore[no-any-return]
            send = None
            if isinstance(cmd, Start):
                send = next(self._handles)
                pool = self._pools[cmd.call.target]
                token = CancelToken()
                pending[send] = (cmd.call, time.perf_counter(), pool.submit(self._call, cmd.call, token), token)
            elif isinstance(cmd, Wait):
                send = self._wait(pending, cmd.handles)
            elif isinstance(cmd, Cancel):
                entry = pending.pop(cmd.handle, None)
                if entry:
                    _give_up(entry[2], entry[3])
            elif isinstance(cmd, RunBlocking):
                try:
                    send = BlockingResult(value=cmd.fn(*cmd.args))
                except Exception as exc:
                    send = BlockingResult(error=exc)
            elif isinstance(cmd, Deliver):
                return _snapshot(cmd, started)

    def run(self, flow: Flow, on_done: OnDone) -> Delivered:
        pending: dict[int, Any] = {}
        started = time.perf_counter()
        out = self._pump(flow, None, pending, started)
        if not isinstance(out, Delivered):
            raise RuntimeError("the teaching flow ended without delivering an answer")
        # Most calls end right after delivery; only an audit keeps working, in a thread.
        try:
            cmd = flow.send(None)
        except StopIteration as stop:
            on_done(stop.value, out)
            return out
        thread = threading.Thread(target=self._finish, args=(flow, cmd, pending, on_done, out), daemon=True)
        with self._lock:
            self._background.add(thread)
        thread.start()
        return out

    def _finish(self, flow: Flow, first: Command, pending: dict[int, Any], on_done: OnDone, out: Delivered) -> None:
        try:
            # Re-inject the command already taken from the flow.
            def replay() -> Flow:
                send = yield first
                return (yield from _resume(flow, send))

            result = self._pump(replay(), None, pending, time.perf_counter())
            if isinstance(result, CallReport):
                on_done(result, out)
        finally:
            with self._lock:
                self._background.discard(threading.current_thread())

    def join(self, timeout: float | None = None) -> None:
        """Wait for background work (audits) to finish."""
        with self._lock:
            threads = list(self._background)
        for t in threads:
            t.join(timeout)

    def close(self) -> None:
        self.join()
        # Calls abandoned after their deadline may still be running (a hung teacher):
        # closing must not wait for them.
        for pool in self._pools.values():
            pool.shutdown(wait=False, cancel_futures=True)


def _resume(flow: Flow, send: Any) -> Flow:
    """Continue ``flow`` from a value already due to it."""
    while True:
        try:
            cmd = flow.send(send)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        send = yield cmd


class AsyncDriver:
    """Runs calls as tasks on the running event loop."""

    def __init__(self, backends: Mapping[str, ChatBackend]) -> None:
        self.backends = backends
        self._background: set[asyncio.Task[None]] = set()
        self._handles = itertools.count(1)

    async def _call(self, call: ModelCall) -> CallResult:
        import asyncio

        t0 = time.perf_counter()
        try:
            coro = self.backends[call.target].acomplete(call.request)
            if call.timeout is not None:
                try:
                    response = await asyncio.wait_for(coro, call.timeout)
                except TimeoutError:
                    return CallResult(call, error=_timeout_error(call), latency_ms=(time.perf_counter() - t0) * 1000)
            else:
                response = await coro
            return CallResult(call, response=response, latency_ms=(time.perf_counter() - t0) * 1000)
        except Exception as exc:
            return CallResult(call, error=exc, latency_ms=(time.perf_counter() - t0) * 1000)

    async def _pump(self, flow: Flow, send: Any, tasks: dict[int, asyncio.Task[CallResult]], started: float) -> Delivered | CallReport:
        import asyncio

        while True:
            try:
                cmd: Command = flow.send(send)
            except StopIteration as stop:
                for task in tasks.values():
                    task.cancel()
                return stop.value  # type: ignore[no-any-return]
            send = None
            if isinstance(cmd, Start):
                send = next(self._handles)
                tasks[send] = asyncio.ensure_future(self._call(cmd.call))
            elif isinstance(cmd, Wait):
                send = [await tasks.pop(h) for h in cmd.handles]
            elif isinstance(cmd, Cancel):
                dropped = tasks.pop(cmd.handle, None)
                if dropped is not None:
                    dropped.cancel()
            elif isinstance(cmd, RunBlocking):
                try:
                    send = BlockingResult(value=await asyncio.to_thread(cmd.fn, *cmd.args))
                except Exception as exc:
                    send = BlockingResult(error=exc)
            elif isinstance(cmd, Deliver):
                return _snapshot(cmd, started)

    async def run(self, flow: Flow, on_done: Callable[[CallReport, Delivered], Any]) -> Delivered:
        import asyncio

        tasks: dict[int, asyncio.Task[CallResult]] = {}
        started = time.perf_counter()
        try:
            out = await self._pump(flow, None, tasks, started)
        except BaseException:
            for task in tasks.values():  # the user's call was cancelled: so are its calls
                task.cancel()
            raise
        if not isinstance(out, Delivered):
            raise RuntimeError("the teaching flow ended without delivering an answer")
        try:
            cmd = flow.send(None)
        except StopIteration as stop:
            await on_done(stop.value, out)
            return out
        background = asyncio.ensure_future(self._finish(flow, cmd, tasks, on_done, out))
        self._background.add(background)
        background.add_done_callback(self._background.discard)
        return out

    async def _finish(self, flow: Flow, first: Command, tasks: dict[int, Any], on_done: Callable[[CallReport, Delivered], Any], out: Delivered) -> None:
        import asyncio

        def replay() -> Flow:
            send = yield first
            return (yield from _resume(flow, send))

        try:
            result = await self._pump(replay(), None, tasks, time.perf_counter())
        except asyncio.CancelledError:
            # The caller's event loop is ending (``asyncio.run`` per call) before the audit
            # finished: the delivered call is still recorded, without the audit's verdict.
            await on_done(out.report, out)
            raise
        if isinstance(result, CallReport):
            await on_done(result, out)

    async def join(self) -> None:
        import asyncio

        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
