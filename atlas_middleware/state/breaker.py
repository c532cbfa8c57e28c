"""A circuit breaker for the teacher: a dead teacher should cost no latency.

After ``failures`` consecutive teacher failures the circuit opens: calls skip the teacher
(the student answers alone, reason ``circuit_open``) for ``cooldown`` seconds. Then one
call is let through (half-open); its success closes the circuit, its failure re-opens it.

This is one process's breaker (``state/memory.py``); ``state/redis.py`` keeps the same
state machine in Redis, so that a fleet of replicas opens together and sends one trial.

Opening and closing are logged at WARNING (``opened``, ``closed``): every call skips the
teacher while the circuit is open, and nothing else would say so. A failed trial that
re-opens it is not logged again (once per cool-down would be noise).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .._redact import secret_logger

log = secret_logger("atlas_middleware.state.breaker")


def opened(failures: int, cooldown: float) -> None:
    log.warning("teacher circuit opened after %d consecutive teacher failures: calls skip the teacher "
                "(the student answers alone, circuit_open) and one trial call goes after %g s", failures, cooldown)


def closed() -> None:
    log.warning("teacher circuit closed: the teacher answered again, calls are taught again")


class CircuitBreaker:
    def __init__(self, failures: int = 5, cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        self._count = 0
        self._opened_at: float | None = None
        self._trial = False

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            if self._clock() - self._opened_at >= self.cooldown:
                return "half-open"
            return "open"

    def allow(self) -> bool:
        """May this call use the teacher? In half-open state only one call may."""
        with self._lock:
            if self._opened_at is None:
                return True
            if self._clock() - self._opened_at < self.cooldown or self._trial:
                return False
            self._trial = True
            return True

    def release(self) -> None:
        """The call let through never reached the teacher (probe failed, opted out, ...):
        no verdict, but the next call may try."""
        with self._lock:
            self._trial = False

    def success(self) -> None:
        with self._lock:
            was_open = self._opened_at is not None
            self._count = 0
            self._opened_at = None
            self._trial = False
        if was_open:
            closed()

    def failure(self) -> None:
        with self._lock:
            self._count += 1
            newly = self._opened_at is None and self._count >= self.failures
            if self._trial or self._count >= self.failures:
                self._opened_at = self._clock()
            self._trial = False
        if newly:
            opened(self.failures, self.cooldown)
