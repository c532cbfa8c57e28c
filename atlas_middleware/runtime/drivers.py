"""Thin drivers that run the teaching flow: one with threads, one with asyncio tasks.

Both do the same five things and nothing else: start calls, wait for them (with the call's
deadline), run blocking user code off the caller's path, hand the delivered answer back
the moment the flow says ``Deliver``, and hand the user a live stream when it says
``Stream``. Work the flow does after delivery (an audit) finishes in the background and
then reaches ``on_done`` (the ledger).

A ``Stream`` is opened on the caller's path: the driver asks the backend for the stream and
waits for its first chunk, so that a failure before it still reaches the flow (which may
deliver another answer, or the student's error, from ``completion`` itself, as a provider
raises it). The caller then gets a ``LiveStream`` (``AsyncLiveStream``): iterating it
passes the chunks on as they come and, when the stream ends, hands the flow the whole
answer, takes its ``Deliver`` (the completed report) and finishes the call as ``run``
does: ``on_done`` at once, or after the audit, in the background.

Giving up on a call tells its backend: the async driver cancels the call's task (the
backend sees ``CancelledError``); the sync driver, whose worker thread cannot be
interrupted, cancels the call's ``CancelToken``. A backend that can stop early (the local
batcher) then drops the request instead of decoding an answer nobody reads.
"""

from __future__ import annotations

import contextvars
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._redact import redact, secret_logger
from ..backends.base import CancelToken, ChatBackend, astream_of, cancellation, stream_of, timeout_error_of
from ..errors import AtlasError, TeacherTimeout
from ..report import CallReport
from ..teaching.commands import (
    BlockingResult,
    CallResult,
    Command,
    Deliver,
    ModelCall,
    RunBlocking,
    Start,
    Stream,
    Wait,
)
from ..teaching.flow import Flow
from .chunks import Assembler, ChatChunk

# asyncio (about 40 ms to import, ssl included) is imported inside AsyncDriver's coroutines:
# they run on an event loop, so it is loaded by then, and sync users never pay for it.
if TYPE_CHECKING:
    import asyncio

OnDone = Callable[[CallReport, "Delivered"], None]
log = secret_logger("atlas_middleware")


@dataclass
class Delivered:
    """What the user gets: the answer (or the student's error) and a snapshot of the report."""

    response: Any
    error: BaseException | None
    report: CallReport


class StreamClosed(AtlasError):
    """The caller stopped reading a live stream before its end (recorded on the report)."""


@dataclass
class _Opened:
    """A stream whose first chunk has come: what the caller's live stream reads from."""

    call: ModelCall
    started: float
    first: ChatChunk
    rest: Any  # the backend's iterator (sync) or async iterator, after the first chunk
    report: CallReport


def _elapsed_ms(t0: float) -> float:
    return (time.perf_counter() - t0) * 1000


def _call_result(call: ModelCall, t0: float, response: Any = None, error: BaseException | None = None) -> CallResult:
    """A call's answer or error; its latency counts from ``t0``, when the flow started it (a
    wait for a free worker or for its task's first turn included, as the caller and the
    call's trace span see it)."""
    return CallResult(call, response=response, error=error, latency_ms=_elapsed_ms(t0))


def _opened(cmd: Stream, started: float, t0: float, first: ChatChunk, rest: Any) -> _Opened:
    """The stream's first chunk has come: the report says how long the user waited for it,
    and the caller's live stream reads from here."""
    cmd.report.latency_ms["first_token"] = round(_elapsed_ms(started), 3)
    return _Opened(cmd.call, t0, first, rest, _snapshot(cmd.report))


def _no_first_chunk(call: ModelCall, t0: float, error: BaseException | None) -> CallResult:
    """A stream that failed before its first chunk (or ended without one: an empty answer)."""
    if error is not None:
        return _call_result(call, t0, error=error)
    return _call_result(call, t0, Assembler().response())


def _timeout_error(call: ModelCall, backends: Mapping[str, ChatBackend]) -> Exception:
    message = f"{call.role} call gave no answer within {call.timeout:g} s"
    if call.role in ("guided", "baseline"):
        # Only the caller's own ``timeout`` limits the student's answers: when it runs out the
        # caller gets what the student's model raises on a timeout, as from a plain call
        # (``teaching/deadline.py``): LiteLLM's ``Timeout`` for a LiteLLM model.
        return timeout_error_of(backends[call.target], call.request, message)
    return TeacherTimeout(message)


def _must_deliver(out: Delivered | _Opened | CallReport) -> Delivered:
    """What ``_pump`` returned where only a delivered answer may come."""
    if isinstance(out, _Opened):
        raise RuntimeError("the teaching flow streamed again after a live stream")
    if not isinstance(out, Delivered):
        raise RuntimeError("the teaching flow ended without delivering an answer")
    return out


def _delivered(cmd: Deliver, started: float) -> Delivered:
    cmd.report.latency_ms["total"] = round(_elapsed_ms(started), 3)
    return Delivered(cmd.response, cmd.error, _snapshot(cmd.report))


def _snapshot(report: CallReport) -> CallReport:
    # The user's copy must not change while an audit goes on in the background. The flow
    # only reassigns fields (usage values are immutable), so copying the containers is
    # enough, and far cheaper than a deep copy on every call.
    return report.model_copy(update={
        "usage": report.usage.model_copy(),
        "latency_ms": dict(report.latency_ms),
        "errors": list(report.errors),
    })


_Pending = tuple[ModelCall, float, "Future[CallResult] | None", CancelToken]
"""A started call: the call, when it started, its worker's future (None: deferred, see
``SyncDriver._pump``), its cancel token."""


def _give_up(future: Future[CallResult] | None, token: CancelToken) -> None:
    """Nobody waits for this call any more: never start it, or tell its backend to stop."""
    if future is not None:
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

    def _call(self, call: ModelCall, token: CancelToken, t0: float) -> CallResult:
        """Make the call, started by the flow at ``t0``."""
        try:
            with cancellation(token):
                response = self.backends[call.target].complete(call.request)
        except Exception as exc:  # the flow decides what an error means
            return _call_result(call, t0, error=exc)
        return _call_result(call, t0, response)

    def _submit(self, call: ModelCall, token: CancelToken, started: float) -> Future[CallResult]:
        # The call runs in a copy of the caller's context, as an async task would: the
        # caller's tracing (a LangChain run, an OpenTelemetry span) reaches its worker.
        return self._pools[call.target].submit(contextvars.copy_context().run, self._call, call, token, started)

    def _wait(self, pending: dict[int, _Pending], handles: tuple[int, ...]) -> list[CallResult]:
        entries = [pending.pop(h) for h in handles]
        # A deferred call runs here, in the caller's thread, while the others run in theirs.
        here = {i: contextvars.copy_context().run(self._call, e[0], e[3], e[1])
                for i, e in enumerate(entries) if e[2] is None}
        return [here[i] if i in here else self._result(*e) for i, e in enumerate(entries)]

    def _result(self, call: ModelCall, started: float, future: Future[CallResult] | None,
                token: CancelToken) -> CallResult:
        """A call's result from its worker, within its deadline."""
        assert future is not None
        if call.timeout is None:
            return future.result()
        remaining = started + call.timeout - time.perf_counter()
        try:
            return future.result(timeout=max(0.0, remaining))
        except FutureTimeout:
            # The thread cannot be killed: its backend is told to stop (if it can), and
            # its late answer is ignored.
            _give_up(future, token)
            return CallResult(call, error=_timeout_error(call, self.backends), latency_ms=call.timeout * 1000)

    def _undefer(self, pending: dict[int, _Pending], handle: int | None, cmd: Command) -> int | None:
        """Start the deferred call ``handle`` in its worker unless ``cmd`` waits for it (then
        ``_wait`` runs it in the caller's thread); the handle still deferred."""
        if handle is None or (isinstance(cmd, Wait) and handle in cmd.handles):
            return handle
        call, started, _, token = pending[handle]
        pending[handle] = (call, started, self._submit(call, token, started), token)
        return None

    def _open(self, cmd: Stream, started: float) -> _Opened | CallResult:
        """Open the stream and wait for its first chunk (the result, if none comes)."""
        call, t0 = cmd.call, time.perf_counter()
        try:
            chunks = stream_of(self.backends[call.target], call.request)
            first = next(chunks)
        except StopIteration:
            return _no_first_chunk(call, t0, None)
        except Exception as exc:  # the flow decides what an error means
            return _no_first_chunk(call, t0, exc)
        return _opened(cmd, started, t0, first, chunks)

    def _pump(self, flow: Flow, send: Any, pending: dict[int, Any],
              started: float) -> Delivered | _Opened | CallReport:
        """Advance the flow until it delivers (returns ``Delivered``), streams (``_Opened``)
        or ends (the report).

        A call without a deadline is deferred: when the flow's next command waits for it, it
        runs in the caller's thread, which would only wait for it (a worker's hand-off costs
        about 16 µs of CPU; bench/overhead.py); any other command starts it in its worker
        first. A call with a deadline always runs in a worker, which the caller can stop
        waiting for."""
        deferred: int | None = None
        while True:
            try:
                cmd: Command = flow.send(send)
            except StopIteration as stop:
                for _, _, future, token in pending.values():
                    _give_up(future, token)
                return stop.value  # type: ignore[no-any-return]
            deferred = self._undefer(pending, deferred, cmd)
            send = None
            if isinstance(cmd, Start):
                send = next(self._handles)
                token, call, now = CancelToken(), cmd.call, time.perf_counter()
                future = None if call.timeout is None else self._submit(call, token, now)
                pending[send] = (call, now, future, token)
                deferred = send if future is None else None
            elif isinstance(cmd, Wait):
                send, deferred = self._wait(pending, cmd.handles), None
            elif isinstance(cmd, RunBlocking):
                try:
                    send = BlockingResult(value=cmd.fn(*cmd.args))
                except Exception as exc:
                    send = BlockingResult(error=exc)
            elif isinstance(cmd, Stream):
                opened = self._open(cmd, started)
                if isinstance(opened, _Opened):
                    return opened
                send = opened
            elif isinstance(cmd, Deliver):
                return _delivered(cmd, started)

    def run(self, flow: Flow, on_done: OnDone) -> Delivered | LiveStream:
        """The delivered answer, or a live stream of it (when the flow says ``Stream``)."""
        pending: dict[int, Any] = {}
        started = time.perf_counter()
        out = self._pump(flow, None, pending, started)
        if isinstance(out, _Opened):
            return LiveStream(self, flow, out, pending, started, on_done)
        return self._after_delivery(flow, out, pending, on_done)

    def _after_delivery(self, flow: Flow, pumped: Delivered | _Opened | CallReport, pending: dict[int, Any],
                        on_done: OnDone) -> Delivered:
        out = _must_deliver(pumped)
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
            try:
                result = self._pump(_replay(flow, first), None, pending, time.perf_counter())
            except Exception as exc:
                _background_failed(exc)
                result = out.report  # the delivered call is still recorded
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


def _background_failed(exc: BaseException) -> None:
    """Work after delivery (an audit, a shadow's teaching) failed where the flow catches
    nothing: the caller has its answer; the call is recorded as delivered, and it is said."""
    log.warning("work after delivery failed; the call is recorded as it was delivered: %s",
                redact(f"{type(exc).__name__}: {exc}"))


def _replay(flow: Flow, first: Command) -> Flow:
    """``flow`` again from the command already taken from it (the first after delivery)."""
    send = yield first
    while True:
        try:
            cmd = flow.send(send)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        send = yield cmd


@dataclass
class _Ended:
    """The flow returned ``value`` (a ``StopIteration`` cannot cross a thread's future)."""

    value: Any


def _advance(flow: Flow, send: Any) -> Command | _Ended:
    try:
        return flow.send(send)
    except StopIteration as stop:
        return _Ended(stop.value)


async def _next(flow: Flow, send: Any, offload: bool) -> Command | _Ended:
    """The flow's next command. With ``offload`` (a large request: ``Atlas.acompletion``) the
    flow's own work, building prompts from the request's text and reading the answers, runs
    in a worker thread: the Python work on a prompt of megabytes leaves the event loop free
    (``messages.LARGE_REQUEST_CHARS`` says what a thread cannot free)."""
    if not offload:
        return _advance(flow, send)
    import asyncio

    return await asyncio.to_thread(_advance, flow, send)


class AsyncDriver:
    """Runs calls as tasks on the running event loop; a large request's flow steps in a thread."""

    def __init__(self, backends: Mapping[str, ChatBackend]) -> None:
        self.backends = backends
        self._background: set[asyncio.Task[None]] = set()
        self._handles = itertools.count(1)

    async def _call(self, call: ModelCall, t0: float) -> CallResult:
        """Make the call, started by the flow at ``t0``, within its deadline."""
        import asyncio

        try:
            coro = self.backends[call.target].acomplete(call.request)
            if call.timeout is not None:
                # asyncio.timeout, not wait_for: this is the call's own task already, and
                # wait_for (Python 3.11) wraps the call in a second one.
                try:
                    async with asyncio.timeout(call.timeout):
                        response = await coro
                except TimeoutError:
                    return _call_result(call, t0, error=_timeout_error(call, self.backends))
            else:
                response = await coro
        except Exception as exc:
            return _call_result(call, t0, error=exc)
        return _call_result(call, t0, response)

    async def _open(self, cmd: Stream, started: float) -> _Opened | CallResult:
        """Open the stream and wait for its first chunk (the result, if none comes)."""
        call, t0 = cmd.call, time.perf_counter()
        chunks = astream_of(self.backends[call.target], call.request)
        try:
            first = await anext(chunks)
        except StopAsyncIteration:
            return _no_first_chunk(call, t0, None)
        except Exception as exc:
            return _no_first_chunk(call, t0, exc)
        except BaseException:  # the user's call was cancelled: so is the stream
            await _aclose(chunks)
            raise
        return _opened(cmd, started, t0, first, chunks)

    async def _pump(self, flow: Flow, send: Any, tasks: dict[int, asyncio.Task[CallResult]],
                    started: float, offload: bool = False) -> Delivered | _Opened | CallReport:
        import asyncio

        while True:
            cmd = await _next(flow, send, offload)
            if isinstance(cmd, _Ended):
                for task in tasks.values():
                    task.cancel()
                return cmd.value  # type: ignore[no-any-return]
            send = None
            if isinstance(cmd, Start):
                send = next(self._handles)
                tasks[send] = asyncio.ensure_future(self._call(cmd.call, time.perf_counter()))
            elif isinstance(cmd, Wait):
                send = [await tasks.pop(h) for h in cmd.handles]
            elif isinstance(cmd, RunBlocking):
                try:
                    send = BlockingResult(value=await asyncio.to_thread(cmd.fn, *cmd.args))
                except Exception as exc:
                    send = BlockingResult(error=exc)
            elif isinstance(cmd, Stream):
                opened = await self._open(cmd, started)
                if isinstance(opened, _Opened):
                    return opened
                send = opened
            elif isinstance(cmd, Deliver):
                return _delivered(cmd, started)

    async def run(self, flow: Flow, on_done: Callable[[CallReport, Delivered], Any],
                  offload: bool = False) -> Delivered | AsyncLiveStream:
        """The delivered answer, or a live stream of it (when the flow says ``Stream``);
        ``offload``: the flow steps in a worker thread (``_next``)."""
        tasks: dict[int, asyncio.Task[CallResult]] = {}
        started = time.perf_counter()
        try:
            out = await self._pump(flow, None, tasks, started, offload)
        except BaseException:
            for task in tasks.values():  # the user's call was cancelled: so are its calls
                task.cancel()
            raise
        if isinstance(out, _Opened):
            return AsyncLiveStream(self, flow, out, tasks, started, on_done, offload)
        return await self._after_delivery(flow, out, tasks, on_done, offload)

    async def _after_delivery(self, flow: Flow, pumped: Delivered | _Opened | CallReport, tasks: dict[int, Any],
                              on_done: Callable[[CallReport, Delivered], Any], offload: bool = False) -> Delivered:
        import asyncio

        out = _must_deliver(pumped)
        cmd = await _next(flow, None, offload)
        if isinstance(cmd, _Ended):
            await on_done(cmd.value, out)
            return out
        background = asyncio.ensure_future(self._finish(flow, cmd, tasks, on_done, out, offload))
        self._background.add(background)
        background.add_done_callback(self._background.discard)
        return out

    async def _finish(self, flow: Flow, first: Command, tasks: dict[int, Any], on_done: Callable[[CallReport, Delivered], Any], out: Delivered,
                      offload: bool = False) -> None:
        import asyncio

        try:
            result = await self._pump(_replay(flow, first), None, tasks, time.perf_counter(), offload)
        except asyncio.CancelledError:
            # The caller's event loop is ending (``asyncio.run`` per call) before the audit
            # finished: the delivered call is still recorded, without the audit's verdict.
            await on_done(out.report, out)
            raise
        except Exception as exc:
            _background_failed(exc)
            result = out.report
        if isinstance(result, CallReport):
            await on_done(result, out)

    async def join(self) -> None:
        import asyncio

        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)


class _Live:
    """What both live streams share: the user's report, the one reading, the chunks
    gathered into the answer the flow gets when the stream ends."""

    def __init__(self, flow: Flow, opened: _Opened, calls: dict[int, Any], started: float) -> None:
        self._flow, self._opened, self._calls, self._started = flow, opened, calls, started
        self._assembler = Assembler()
        self.report: CallReport = opened.report
        self.delivered: Delivered | None = None
        self._iterated = False

    def _read(self) -> _Opened:
        if self._iterated:
            raise RuntimeError("a live stream can be read once")
        self._iterated = True
        return self._opened

    def _take(self, chunk: ChatChunk) -> ChatChunk:
        self._assembler.add(chunk)
        return chunk

    def _streamed(self, error: BaseException | None) -> CallResult:
        """The streamed call's result: its latency up to the stream's end (or failure)."""
        opened, latency = self._opened, _elapsed_ms(self._opened.started)
        if error is not None:
            return CallResult(opened.call, error=error, latency_ms=latency, streamed=True)
        return CallResult(opened.call, response=self._assembler.response(), latency_ms=latency, streamed=True)

    def _ended(self, delivered: Delivered) -> Delivered:
        """The flow took the stream's result and delivered: the user's report is complete."""
        self.delivered, self.report = delivered, delivered.report
        return delivered


def _raise_error(delivered: Delivered) -> None:
    """A failure in the middle of the stream reaches the caller once it is recorded."""
    if delivered.error is not None:
        raise delivered.error


class LiveStream(_Live):
    """A delivered answer still being written (sync): iterate it once for its ``ChatChunk``
    objects, as the student writes them.

    ``report`` is the user's copy of the report: the decision at once, the completed report
    when the stream ends (``delivered`` is then set). A failure in the middle of the stream
    is raised by the iteration; a caller that stops early is recorded as ``StreamClosed``.
    """

    def __init__(self, driver: SyncDriver, flow: Flow, opened: _Opened, pending: dict[int, Any],
                 started: float, on_done: OnDone) -> None:
        super().__init__(flow, opened, pending, started)
        self._driver, self._on_done = driver, on_done

    def __iter__(self) -> Iterator[ChatChunk]:
        opened = self._read()
        error: BaseException | None = None
        try:
            try:
                yield self._take(opened.first)
                for chunk in opened.rest:
                    yield self._take(chunk)
            except Exception as exc:  # mid-stream: the flow reports it, then it is raised
                error = exc
        except GeneratorExit:  # the caller stopped reading: the call is still recorded
            _close(opened.rest)
            self._end(StreamClosed("the caller closed the stream"))
            raise
        _raise_error(self._end(error))

    def _end(self, error: BaseException | None) -> Delivered:
        out = self._driver._pump(self._flow, self._streamed(error), self._calls, self._started)
        return self._ended(self._driver._after_delivery(self._flow, out, self._calls, self._on_done))


class AsyncLiveStream(_Live):
    """``LiveStream`` for the async driver: iterate it once with ``async for``."""

    def __init__(self, driver: AsyncDriver, flow: Flow, opened: _Opened, tasks: dict[int, Any],
                 started: float, on_done: Callable[[CallReport, Delivered], Any], offload: bool = False) -> None:
        super().__init__(flow, opened, tasks, started)
        self._driver, self._on_done, self._offload = driver, on_done, offload

    async def __aiter__(self) -> AsyncIterator[ChatChunk]:
        opened = self._read()
        error: BaseException | None = None
        try:
            try:
                yield self._take(opened.first)
                async for chunk in opened.rest:
                    yield self._take(chunk)
            except Exception as exc:
                error = exc
        except (GeneratorExit, BaseException) as stop:  # closed early, or the task cancelled
            await _aclose(opened.rest)
            await self._end(StreamClosed(
                "the caller closed the stream" if isinstance(stop, GeneratorExit) else "the caller was cancelled"))
            raise
        _raise_error(await self._end(error))

    async def _end(self, error: BaseException | None) -> Delivered:
        driver, flow = self._driver, self._flow
        out = await driver._pump(flow, self._streamed(error), self._calls, self._started, self._offload)
        return self._ended(await driver._after_delivery(flow, out, self._calls, self._on_done, self._offload))


def _close(chunks: Any) -> None:
    close = getattr(chunks, "close", None)
    if callable(close):
        close()


async def _aclose(chunks: Any) -> None:
    aclose = getattr(chunks, "aclose", None)
    if callable(aclose):
        await aclose()
