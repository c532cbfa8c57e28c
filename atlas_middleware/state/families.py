"""Family evidence in process memory: one replica's view, and the Redis store's fallback.

Family keys are unbounded (every new template is a family), so the store keeps the
``max_families`` most recently used and forgets the rest, as the session cache does.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import replace

from .base import FamilyEvidence


class MemoryFamilies:
    def __init__(self, max_families: int = 10000) -> None:
        self.max_families = max_families
        self._data: OrderedDict[str, FamilyEvidence] = OrderedDict()
        self._lock = threading.Lock()
        self._claimed = False

    def _put(self, family: str, evidence: FamilyEvidence) -> None:
        self._data[family] = evidence
        self._data.move_to_end(family)
        while len(self._data) > self.max_families:
            self._data.popitem(last=False)

    def get(self, family: str) -> FamilyEvidence | None:
        with self._lock:
            evidence = self._data.get(family)
            if evidence is not None:  # in use: not the first to forget
                self._data.move_to_end(family)
            return evidence

    def observe(self, family: str, outcome: str | None, net_tokens: float | None, discount: float, *,
                judge: str | None = None, cost: tuple[float, float] | None = None,
                graded: bool = False) -> FamilyEvidence:
        with self._lock:
            evidence = self._data.get(family, FamilyEvidence()).observed(outcome, net_tokens, discount,
                                                                         judge=judge, cost=cost, graded=graded)
            self._put(family, evidence)
            return evidence

    def set_closed(self, family: str, closed: bool) -> None:
        with self._lock:
            self._put(family, replace(self._data.get(family, FamilyEvidence()), closed=closed))

    def set_mode(self, family: str, mode: str) -> None:
        with self._lock:
            self._put(family, replace(self._data.get(family, FamilyEvidence()), mode=mode, mode_outcomes=0.0))

    def keep_guidance(self, family: str, guidance: str, call_id: str) -> None:
        with self._lock:
            self._put(family, replace(self._data.get(family, FamilyEvidence()), guidance=guidance,
                                      guidance_from=call_id))

    def drop_guidance(self, family: str, call_id: str) -> None:
        with self._lock:
            evidence = self._data.get(family)
            if evidence is not None and evidence.guidance_from == call_id:
                self._data[family] = replace(evidence, guidance=None, guidance_from=None)

    def load(self, families: dict[str, FamilyEvidence]) -> None:
        with self._lock:
            for family, evidence in families.items():
                self._put(family, evidence)

    def snapshot(self) -> dict[str, FamilyEvidence]:
        """Every family's evidence, least recently used first."""
        with self._lock:
            return dict(self._data)

    def claim_rebuild(self) -> bool:
        with self._lock:
            first, self._claimed = not self._claimed, True
            return first

    def finish_rebuild(self, done: bool) -> None:
        with self._lock:
            self._claimed = self._claimed and done
