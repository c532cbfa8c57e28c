"""Retries for the teacher path: transient errors only, ``Retry-After`` honoured.

The teaching flow gives each guidance-path call a deadline (``teacher_timeout``); the
retries live inside that budget, so a rate-limited teacher costs at most the budget and
the user's call then falls back to the student.

A stream is retried only until its first chunk: after that, part of the answer may have
reached someone, and a second attempt would repeat it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, cast

from ..errors import is_transient
from ..messages import ChatRequest, ChatResponse
from ..runtime.chunks import ChatChunk
from .base import ChatBackend, WrapperBackend, astream_of, current_cancel_token, stream_of

# tenacity is imported when a RetryingBackend is built, not with the package (importing
# atlas_middleware must stay cheap: tests/test_public_api.py).
if TYPE_CHECKING:
    from tenacity import RetryCallState


def retry_after_seconds(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait, from ``Retry-After`` (seconds or HTTP date)."""
    explicit = getattr(exc, "retry_after", None)
    if isinstance(explicit, (int, float)):
        return float(explicit)
    response: Any = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or getattr(exc, "headers", None) or {}
    try:
        value = headers.get("retry-after") or headers.get("Retry-After")
    except AttributeError:
        return None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from email.utils import parsedate_to_datetime  # only for the rare HTTP-date form

    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class _Wait:
    def __init__(self, base: float, cap: float) -> None:
        from tenacity import wait_exponential_jitter

        self._backoff = wait_exponential_jitter(multiplier=base, max=cap, jitter=base)

    def __call__(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hinted = retry_after_seconds(exc) if exc is not None else None
        return hinted if hinted is not None else float(self._backoff(state))


def _caller_left(state: RetryCallState) -> bool:
    """A stop condition: the sync driver gave up on this call (its cancel token). Async
    callers cancel the task instead, which ends the retry loop by itself."""
    token = current_cancel_token()
    return token is not None and token.cancelled


def _sleep_unless_cancelled(seconds: float) -> None:
    """The back-off sleep, cut short when the caller gives up (the thread is then free)."""
    token = current_cancel_token()
    if token is None:
        time.sleep(seconds)
        return
    woken = threading.Event()
    forget = token.on_cancel(woken.set)
    try:
        woken.wait(seconds)
    finally:
        forget()


class RetryingBackend(WrapperBackend):
    """Retry transient failures of the inner backend within ``budget`` seconds."""

    def __init__(
        self, inner: ChatBackend, attempts: int = 3, budget: float | None = 10.0,
        base_delay: float = 0.2, max_delay: float = 5.0,
    ) -> None:
        from tenacity import retry_if_exception, stop_after_attempt, stop_any, stop_before_delay

        super().__init__(inner)
        self._budget = budget
        self._stop: Any = stop_any(stop_after_attempt(attempts), cast(Any, _caller_left))  # any callable stops
        self._stop_before_delay = stop_before_delay
        self._settings: dict[str, Any] = dict(
            stop=self._stop_within(budget),
            wait=_Wait(base_delay, max_delay),
            retry=retry_if_exception(is_transient),
            reraise=True,
        )

    def _stop_within(self, budget: float | None) -> Any:
        # Give up *before* a wait that would end past the budget (a long Retry-After
        # included): the caller has stopped listening by then.
        return self._stop if budget is None else self._stop | self._stop_before_delay(budget)

    def _settings_for(self, request: ChatRequest) -> dict[str, Any]:
        """The retry settings for one call: its own ``timeout`` (the flow gives every
        call its deadline there, see ``teaching/deadline.py``) bounds the retries too when
        it is shorter than the backend's budget. Without that, a transport timeout that
        fires together with the driver's deadline can absorb the driver's cancellation
        (aiohttp turns it into its own timeout) and the loop would start another attempt."""
        timeout = request.params.get("timeout")
        if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and (
                self._budget is None or timeout < self._budget):
            return {**self._settings, "stop": self._stop_within(float(timeout))}
        return self._settings

    def complete(self, request: ChatRequest) -> ChatResponse:
        from tenacity import Retrying  # loaded by __init__: a dictionary look-up here

        token = current_cancel_token()
        for attempt in Retrying(**self._settings_for(request), sleep=_sleep_unless_cancelled):
            with attempt:
                if token is not None and token.cancelled:
                    # The caller gave up during the back-off: no further attempt.
                    raise TimeoutError("the caller stopped waiting for this call")
                return self.inner.complete(request)
        raise AssertionError("unreachable")  # pragma: no cover

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        from tenacity import AsyncRetrying

        async for attempt in AsyncRetrying(**self._settings_for(request)):
            with attempt:
                return await self.inner.acomplete(request)
        raise AssertionError("unreachable")  # pragma: no cover

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        from tenacity import Retrying

        token = current_cancel_token()
        for attempt in Retrying(**self._settings_for(request), sleep=_sleep_unless_cancelled):
            with attempt:
                if token is not None and token.cancelled:
                    raise TimeoutError("the caller stopped waiting for this call")
                chunks = stream_of(self.inner, request)
                first = next(chunks, None)
        if first is None:
            return
        yield first
        yield from chunks

    async def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        from tenacity import AsyncRetrying

        async for attempt in AsyncRetrying(**self._settings_for(request)):
            with attempt:
                chunks = astream_of(self.inner, request)
                first = await anext(chunks, None)
        if first is None:
            return
        yield first
        async for chunk in chunks:
            yield chunk
