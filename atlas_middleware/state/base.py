"""What a replica shares with the rest of the fleet: the protocol every state backend meets.

Two pieces of ``Atlas``'s memory decide whether a call pays for the teacher, and both are
wrong when each replica keeps its own: the session guidance (an agent's next step may land
on another replica, which would pay for a second diagnosis) and the circuit breaker (a dead
teacher would cost every replica its own ``circuit_failures`` slow calls, and each would send
its own half-open trial). The protocols are as small as ``Atlas`` uses them, so that a
backend is a few lines of storage and a feature (the Redis fallback) is a wrapper.

Audit sampling is not here on purpose: it is a hash of the call id (``teaching/flow.py``),
which every replica computes alike with no round trip, and which gives ``audit_rate`` as
the expected share of audited calls. A fleet counter would make the share exact at the cost
of a network call on every audit call; the estimate does not need it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

BREAKER_STATES = ("closed", "open", "half-open")


@runtime_checkable
class SessionStore(Protocol):
    """Guidance per agent session, forgotten ``session_ttl`` seconds after it was stored."""

    def lookup(self, session_id: str) -> str | None:
        """The session's guidance; ``""`` if the teacher judged the student strong; None if unknown."""
        ...

    def put(self, session_id: str, guidance: str) -> None: ...

    def drop(self, session_id: str) -> None: ...


@runtime_checkable
class BreakerStore(Protocol):
    """The teacher's circuit breaker (``breaker.py`` has the semantics).

    In half-open state exactly one ``allow()`` returns True until that call's verdict
    (``success``/``failure``) or ``release`` (it never reached the teacher).
    """

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        ...

    def allow(self) -> bool: ...

    def success(self) -> None: ...

    def failure(self) -> None: ...

    def release(self) -> None: ...


@dataclass
class StateStatus:
    """What the metrics export: which backend serves, and how often memory stood in for it."""

    backend: str
    """``memory`` or ``redis``."""
    degraded: bool = False
    """True while the shared backend is unreachable and process memory serves instead."""
    fallbacks: dict[str, int] = field(default_factory=dict)
    """Operations served from process memory because the shared backend failed, by operation."""


@runtime_checkable
class SharedState(Protocol):
    """Sessions and breaker of one ``Atlas``, and how to reach them."""

    @property
    def sessions(self) -> SessionStore: ...

    @property
    def breaker(self) -> BreakerStore: ...

    @property
    def blocking(self) -> bool:
        """Whether an operation may wait on the network (async callers run them in a thread)."""
        ...

    def status(self) -> StateStatus: ...

    def close(self) -> None: ...
