"""The state replicas share: agent-session guidance, the teacher's circuit breaker and the
evidence per task family (the learned gate, family guidance reuse).

``open_state`` builds it from the ``state`` setting:

* ``memory`` (the default): this process's memory (``memory.py``), one replica's view;
* ``redis://...`` / ``rediss://...``: one Redis for the whole fleet (``redis.py``), wrapped
  in ``FallbackState`` (``fallback.py``) so that a Redis outage degrades to process memory
  instead of failing or slowing calls.

``base.py`` holds the protocols; ``families.py`` the memory store of family evidence; a
backend is storage, features are wrappers.
"""

from __future__ import annotations

from .base import (
    BREAKER_STATES,
    BreakerStore,
    FamilyEvidence,
    FamilyStore,
    SessionStore,
    SharedState,
    StateStatus,
)
from .fallback import FallbackState
from .memory import MemoryState

__all__ = [
    "BREAKER_STATES",
    "BreakerStore",
    "FallbackState",
    "FamilyEvidence",
    "FamilyStore",
    "MemoryState",
    "SessionStore",
    "SharedState",
    "StateStatus",
    "open_state",
]


def open_state(url: str = "memory", *, session_ttl: float = 3600.0, failures: int = 5, cooldown: float = 30.0,
               timeout: float = 0.1, prefix: str = "atlas:", backoff: float = 1.0) -> SharedState:
    """The state for ``url``: ``memory``, or a Redis URL with process memory as its fallback.

    Nothing is sent to Redis here: a replica whose Redis is down at start still starts, and
    serves from memory until Redis answers.
    """
    memory = MemoryState(session_ttl=session_ttl, failures=failures, cooldown=cooldown)
    if url == "memory":
        return memory
    from .redis import RedisState, connect

    shared = RedisState(connect(url, timeout), prefix=prefix, session_ttl=session_ttl, failures=failures,
                        cooldown=cooldown)
    return FallbackState(shared, memory, backoff=backoff)
