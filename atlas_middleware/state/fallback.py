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

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

from .._redact import redact, secret_logger
from ..pricing import BaselineStats
from ..usage import Usage
from .base import FamilyEvidence, FamilyStore, SharedState, StateStatus

log = secret_logger("atlas_middleware.state")
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
        self.baselines = _Baselines(self)
        self.budgets = _Budgets(self)

    def run(self, op: str, call: Callable[[SharedState], T]) -> T:
        """``call`` on the shared backend if it is up (or due for a retry), else on memory."""
        shared, out = self.attempt(op, call)
        return cast(T, out) if shared else call(self.fallback)

    def attempt(self, op: str, call: Callable[[SharedState], T]) -> tuple[bool, T | None]:
        """``call`` on the shared backend only: ``(True, its value)``, or ``(False, None)``
        when the backend is down (counted as served from memory: the caller does that)."""
        if self._shared_turn(op):
            try:
                out = call(self.primary)
            except Exception as exc:  # whatever the shared store raises, the caller's call goes on
                self._lost(op, exc)
            else:
                if self._degraded:
                    self._back()
                return True, out
        return False, None

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


class _Baselines:
    """Baseline means: the shared store's, or this process's while it is away. Every new
    baseline goes to both, so memory has the recent ones when it must stand in."""

    def __init__(self, owner: FallbackState) -> None:
        self._owner = owner
        self._memory = owner.fallback.baselines

    def get(self, key: str) -> BaselineStats | None:
        return self._owner.run("baseline_get", lambda s: s.baselines.get(key))

    def add(self, key: str, usage: Usage) -> None:
        self._owner.attempt("baseline_add", lambda s: s.baselines.add(key, usage))
        self._memory.add(key, usage)


class _Budgets:
    """Teaching spend: the shared store's, or unknown while it is away. Memory does not stand
    in: one replica's own spend is not the fleet's, and a budget read low would let the
    fleet spend past its cap (``budgets.py`` fails safe on None). A charge made during an
    outage is lost to the shared count (few: the outage's calls run untaught)."""

    def __init__(self, owner: FallbackState) -> None:
        self._owner = owner

    def spent(self, day: str, keys: Sequence[str]) -> list[float] | None:
        _, out = self._owner.attempt("budget_spent", lambda s: s.budgets.spent(day, keys))
        return out

    def charge(self, day: str, keys: Sequence[str], amount: float) -> None:
        self._owner.attempt("budget_charge", lambda s: s.budgets.charge(day, keys, amount))


class _Families:
    """Family evidence: the shared store, mirrored in process memory.

    Unlike sessions, the gate's evidence is worth keeping through an outage: a closed family
    must stay closed while Redis is away. So every answer the shared store gives is copied
    into memory, every change is made in both, and during an outage the gate goes on from
    the last evidence it saw (its outcomes then stay in memory: not reconciled, as above).
    """

    def __init__(self, owner: FallbackState) -> None:
        self._owner = owner
        self._memory = owner.fallback.families
        self._claimed_shared = False
        self._loaded_shared = False

    def _mirrored(self, op: str, family: str, call: Callable[[SharedState], FamilyEvidence | None],
                  local: Callable[[], FamilyEvidence | None]) -> FamilyEvidence | None:
        shared, evidence = self._owner.attempt(op, call)
        if not shared:
            return local()
        if evidence is not None:
            self._memory.load({family: evidence})
        return evidence

    def get(self, family: str) -> FamilyEvidence | None:
        return self._mirrored("family_get", family, lambda s: s.families.get(family),
                              lambda: self._memory.get(family))

    def observe(self, family: str, outcome: str | None, net_tokens: float | None, discount: float, *,
                judge: str | None = None, cost: tuple[float, float] | None = None,
                graded: bool = False) -> FamilyEvidence:
        evidence = self._mirrored(
            "family_observe", family,
            lambda s: s.families.observe(family, outcome, net_tokens, discount, judge=judge, cost=cost, graded=graded),
            lambda: self._memory.observe(family, outcome, net_tokens, discount, judge=judge, cost=cost, graded=graded))
        assert evidence is not None
        return evidence

    def _both(self, op: str, call: Callable[[FamilyStore], None]) -> None:
        self._owner.attempt(op, lambda s: call(s.families))
        call(self._memory)

    def set_closed(self, family: str, closed: bool) -> None:
        self._both("family_set_closed", lambda f: f.set_closed(family, closed))

    def set_mode(self, family: str, mode: str) -> None:
        self._both("family_set_mode", lambda f: f.set_mode(family, mode))

    def keep_guidance(self, family: str, guidance: str, call_id: str) -> None:
        self._both("family_keep_guidance", lambda f: f.keep_guidance(family, guidance, call_id))

    def drop_guidance(self, family: str, call_id: str) -> None:
        self._both("family_drop_guidance", lambda f: f.drop_guidance(family, call_id))

    def load(self, families: dict[str, FamilyEvidence]) -> None:
        self._loaded_shared, _ = self._owner.attempt("family_load", lambda s: s.families.load(families))
        self._memory.load(families)

    def claim_rebuild(self) -> bool:
        shared, claimed = self._owner.attempt("family_claim_rebuild", lambda s: s.families.claim_rebuild())
        self._claimed_shared = shared
        return bool(claimed) if shared else self._memory.claim_rebuild()

    def finish_rebuild(self, done: bool) -> None:
        """A claim on the shared store becomes for good only if the evidence reached it."""
        if self._claimed_shared:
            kept = done and self._loaded_shared
            self._owner.attempt("family_finish_rebuild", lambda s: s.families.finish_rebuild(kept))
        self._memory.finish_rebuild(done)
