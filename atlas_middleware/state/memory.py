"""Process memory: one replica's state, exactly as ``Atlas`` kept it before shared state.

The default, and what the Redis backend falls back to while Redis is unreachable. The
stores are the historical ``SessionCache`` and ``CircuitBreaker`` themselves and
``MemoryFamilies``, so their semantics (and their tests) are the reference the shared
backends are held to.
"""

from __future__ import annotations

from .base import StateStatus
from .baselines import MemoryBaselines
from .breaker import CircuitBreaker
from .budgets import MemoryBudgets
from .families import MemoryFamilies
from .sessions import SessionCache


class MemoryState:
    blocking = False

    def __init__(self, *, session_ttl: float = 3600.0, failures: int = 5, cooldown: float = 30.0) -> None:
        self.sessions = SessionCache(ttl=session_ttl)
        self.breaker = CircuitBreaker(failures, cooldown)
        self.families = MemoryFamilies()
        self.baselines = MemoryBaselines()
        self.budgets = MemoryBudgets()

    def status(self) -> StateStatus:
        return StateStatus(backend="memory")

    def close(self) -> None:
        pass
