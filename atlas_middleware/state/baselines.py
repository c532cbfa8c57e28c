"""The measured baselines per student model and task family: the counterfactual's estimate.

A call that runs no baseline (``verify`` that passed, ``audit`` not sampled, ``off``) still
reports what the student alone would have spent, estimated from the baselines its family's
other calls measured (``pricing.BaselineStats``: discounted running means of their tokens
and price). This is the store of those means: ``BaselineStore`` is the protocol, and
``MemoryBaselines`` keeps them in this process (the default, and the Redis store's fallback);
``state/redis.py`` keeps them for the fleet.

It is a store of its own, beside the gate's ``FamilyStore``: the gate's evidence is about
what teaching does, this is about what the student alone costs, and a family's mean is
worth having whether or not the gate is on. Keys are ``learning.gate.gate_key`` (student
model and family). Like family keys they are unbounded, so memory keeps the
``max_families`` most recently used.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ..pricing import BaselineStats
from ..usage import Usage

if TYPE_CHECKING:
    from ..report import CallReport


def fair_baseline(report: CallReport) -> Usage | None:
    """The call's measured baseline when it is a fair sample of what the student alone spends
    on its family; None otherwise. Not one ``verify`` ran because the guided answer failed its
    grade: a harder call than most, so a longer answer than most."""
    if report.counterfactual_basis != "measured" or not report.task_family or report.usage.baseline.calls != 1:
        return None
    if report.policy == "verify" and report.usage.guided.calls:
        return None
    return report.usage.baseline


@runtime_checkable
class BaselineStore(Protocol):
    def get(self, key: str) -> BaselineStats | None:
        """The means of ``key``'s measured baselines; None when it has none."""
        ...

    def add(self, key: str, usage: Usage) -> None:
        """One more measured baseline (``BaselineStats.added``, atomically)."""
        ...


class MemoryBaselines:
    def __init__(self, max_families: int = 10000) -> None:
        self.max_families = max_families
        self._data: OrderedDict[str, BaselineStats] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> BaselineStats | None:
        with self._lock:
            stats = self._data.get(key)
            if stats is not None:
                self._data.move_to_end(key)
            return stats

    def add(self, key: str, usage: Usage) -> None:
        with self._lock:
            self._data[key] = self._data.get(key, BaselineStats()).added(usage)
            self._data.move_to_end(key)
            while len(self._data) > self.max_families:
                self._data.popitem(last=False)
