"""``FallbackState``: a shared backend whose failures cost a call nothing.

Shared state is an optimisation (one diagnosis per session for the fleet, one breaker), never
a dependency: when Redis is down or slow, a call must be neither failed nor noticeably
slowed. So every operation on the shared backend is tried with the client's short timeout
(``state_timeout``); on any error or timeout, that operation and every one for the next
``backoff`` seconds is served from process memory (a ``MemoryState``, today's single-replica
behaviour), and then one operation tries the shared backend again while the others keep to
memory. An outage therefore costs one timed-out operation per back-off period (plus those
already in flight when it began), not one per call.

It is loud, not noisy: a warning when the shared backend is first lost, then at most one per
``warn_every`` seconds while it stays lost (with the count), one when it is back; every
operation served from memory is counted by name in ``status().fallbacks``, which
``AtlasMetrics.watch_state`` exports as ``atlas_state_fallbacks_total{op}`` beside
``atlas_state_degraded``.

Memory and the shared backend are not reconciled: during an outage each replica has its own
breaker and sessions, as a lone replica would; once the backend is back, its state (which
Redis kept, unless it restarted empty) applies again. A half-open trial slot taken in Redis
by a call whose verdict lands in memory is freed by its lease (``state/redis.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

from ..redact import redact
from .base import FamilyEvidence, SharedState, StateStatus

log = logging.getLogger("atlas_middleware.state")
T = TypeVar("T")


class FallbackState:
    def __init__(self, primary: SharedState, fallback: SharedState, *, backoff: float = 1.0,
                 warn_every: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.primary = primary
        self.fallback = fallback
        self.backoff = backoff
        self.warn_every = warn_every
        self.blocking = primary.blocking
        self._clock = clock
        self._lock = threading.Lock()
        self._retry_at = float("-inf")
        self._degraded = False
        self._fallbacks: Counter[str] = Counter()
        self._warned_at = float("-inf")
        self._unwarned = 0
        self.sessions = _Sessions(self)
        self.breaker = _Breaker(self)
        self.families = _Families(self)

    def run(self, op: str, call: Callable[[SharedState], T]) -> T:
        """``call`` on the shared backend if it is up (or due for a retry), else on memory."""
        if self._shared_turn(op):
            try:
                out = call(self.primary)
            except Exception as exc:  # whatever the shared store raises, the caller's call goes on
                self._lost(op, exc)
            else:
                if self._degraded:
                    self._back()
                return out
        return call(self.fallback)

    def _shared_turn(self, op: str) -> bool:
        """Whether this operation goes to the shared backend. While it is lost, one operation
        per back-off period probes it; concurrent ones keep to memory meanwhile, so a silent
        Redis costs one caller a timeout, not every caller at that moment."""
        now = self._clock()
        with self._lock:
            if now >= self._retry_at:
                if self._degraded:
                    self._retry_at = now + self.backoff
                return True
            self._fallbacks[op] += 1
            self._unwarned += 1
            return False

    def _lost(self, op: str, exc: Exception) -> None:
        now = self._clock()
        with self._lock:
            self._retry_at = now + self.backoff
            self._fallbacks[op] += 1
            self._unwarned += 1
            first, self._degraded = not self._degraded, True
            if not first and now - self._warned_at < self.warn_every:
                return
            self._warned_at, count, self._unwarned = now, self._unwarned, 0
        backend = self.primary.status().backend
        if first:
            log.warning("shared state (%s) unreachable, using this process's memory; retrying every %.3g s: %s",
                        backend, self.backoff, redact(f"{type(exc).__name__}: {exc}"))
        else:
            log.warning("shared state (%s) still unreachable: %d operations served from memory since the last "
                        "warning: %s", backend, count, redact(f"{type(exc).__name__}: {exc}"))

    def _back(self) -> None:
        with self._lock:
            if not self._degraded:
                return
            self._degraded, count, self._unwarned = False, self._unwarned, 0
            self._retry_at = float("-inf")  # the probe's claim on the back-off is void
        log.warning("shared state (%s) reachable again (%d operations served from memory since the last warning)",
                    self.primary.status().backend, count)

    def status(self) -> StateStatus:
        with self._lock:
            return StateStatus(backend=self.primary.status().backend, degraded=self._degraded,
                               fallbacks=dict(self._fallbacks))

    def close(self) -> None:
        try:
            self.primary.close()
        except Exception as exc:  # closing a dead connection is not worth an error at shutdown
            log.debug("closing the shared state: %s", redact(str(exc)))
        self.fallback.close()


class _Sessions:
    def __init__(self, owner: FallbackState) -> None:
        self._run = owner.run

    def lookup(self, session_id: str) -> str | None:
        return self._run("session_lookup", lambda s: s.sessions.lookup(session_id))

    def put(self, session_id: str, guidance: str) -> None:
        self._run("session_put", lambda s: s.sessions.put(session_id, guidance))

    def drop(self, session_id: str) -> None:
        self._run("session_drop", lambda s: s.sessions.drop(session_id))


class _Breaker:
    def __init__(self, owner: FallbackState) -> None:
        self._run = owner.run

    @property
    def state(self) -> str:
        return self._run("breaker_state", lambda s: s.breaker.state)

    def allow(self) -> bool:
        return self._run("breaker_allow", lambda s: s.breaker.allow())

    def success(self) -> None:
        self._run("breaker_success", lambda s: s.breaker.success())

    def failure(self) -> None:
        self._run("breaker_failure", lambda s: s.breaker.failure())

    def release(self) -> None:
        self._run("breaker_release", lambda s: s.breaker.release())


class _Families:
    def __init__(self, owner: FallbackState) -> None:
        self._run = owner.run

    def get(self, family: str) -> FamilyEvidence | None:
        return self._run("family_get", lambda s: s.families.get(family))

    def observe(self, family: str, outcome: str | None, net_tokens: float | None,
                discount: float) -> FamilyEvidence:
        return self._run("family_observe", lambda s: s.families.observe(family, outcome, net_tokens, discount))

    def set_closed(self, family: str, closed: bool) -> None:
        self._run("family_set_closed", lambda s: s.families.set_closed(family, closed))

    def keep_guidance(self, family: str, guidance: str, call_id: str) -> None:
        self._run("family_keep_guidance", lambda s: s.families.keep_guidance(family, guidance, call_id))

    def drop_guidance(self, family: str, call_id: str) -> None:
        self._run("family_drop_guidance", lambda s: s.families.drop_guidance(family, call_id))

    def load(self, families: dict[str, FamilyEvidence]) -> None:
        self._run("family_load", lambda s: s.families.load(families))

    def claim_rebuild(self) -> bool:
        return self._run("family_claim_rebuild", lambda s: s.families.claim_rebuild())
