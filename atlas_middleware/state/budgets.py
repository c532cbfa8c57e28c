"""Teaching spend per UTC day: the counters the budgets (``budgets.py``) read and charge.

``BudgetStore`` is the protocol: ``spent`` reads some counters of one day, ``charge`` adds one
call's teaching spend to them. ``MemoryBudgets`` keeps them in this process (the default);
``state/redis.py`` keeps one Redis counter per UTC day and key, which expires after
``BUDGET_TTL`` seconds, so that a fleet shares one count and no day's key outlives it.

A counter's key is the cap it counts against: ``TOTAL`` for ``budget.daily_usd``, the
family's evidence key (``learning.gate.gate_key``: tenant, student model, family) for
``budget.family_daily_usd``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

TOTAL = "total"
"""The counter of every call's teaching spend (``budget.daily_usd``)."""
BUDGET_TTL = 2 * 86400
"""Seconds a day's counter is kept: past the day, and a clock skew between replicas, and no more."""


@runtime_checkable
class BudgetStore(Protocol):
    def spent(self, day: str, keys: Sequence[str]) -> list[float] | None:
        """Each key's teaching spend on ``day`` (0 when none); None when the store cannot tell
        (the shared state is down: ``state/fallback.py``)."""
        ...

    def charge(self, day: str, keys: Sequence[str], amount: float) -> None:
        """Add ``amount`` US dollars to each key's spend on ``day`` (atomically per key)."""
        ...


class MemoryBudgets:
    """This process's counters. Only the latest day charged and the one before are kept:
    a day's counters are dropped once two newer days have been charged."""

    def __init__(self) -> None:
        self._days: dict[str, dict[str, float]] = {}
        self._lock = threading.Lock()

    def spent(self, day: str, keys: Sequence[str]) -> list[float]:
        with self._lock:
            counters = self._days.get(day, {})
            return [counters.get(key, 0.0) for key in keys]

    def charge(self, day: str, keys: Sequence[str], amount: float) -> None:
        with self._lock:
            counters = self._days.setdefault(day, {})
            for key in keys:
                counters[key] = counters.get(key, 0.0) + amount
            for old in sorted(self._days)[:-2]:  # ISO dates sort by time
                del self._days[old]
