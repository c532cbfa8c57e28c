"""What a replica shares with the rest of the fleet: the protocol every state backend meets.

Three pieces of ``Atlas``'s memory decide whether a call pays for the teacher, and all three
are wrong when each replica keeps its own: the session guidance (an agent's next step may
land on another replica, which would pay for a second diagnosis), the circuit breaker (a
dead teacher would cost every replica its own ``circuit_failures`` slow calls, and each
would send its own half-open trial), and the evidence per task family that the learned gate
and family guidance reuse decide on (``learning/gate.py``: one replica's evidence would be a
fraction of the fleet's, and every replica would explore a closed family on its own). The
protocols are as small as ``Atlas`` uses them, so that a backend is a few lines of storage
and a feature (the Redis fallback) is a wrapper.

Audit sampling is not here on purpose: it is a hash of the call id (``teaching/flow.py``),
which every replica computes alike with no round trip, and which gives ``audit_rate`` as
the expected share of audited calls. A fleet counter would make the share exact at the cost
of a network call on every audit call; the estimate does not need it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from .baselines import BaselineStore
    from .budgets import BudgetStore

BREAKER_STATES = ("closed", "open", "half-open")
OUTCOME_FIELDS = ("improved", "degraded", "unchanged")


@runtime_checkable
class SessionStore(Protocol):
    """Guidance per agent session, forgotten ``session_ttl`` seconds after it was stored.

    ``Atlas`` passes the session id scoped by the call's tenant (``tenants.scoped``), as it
    passes family keys (``learning.gate.gate_key``): a store keeps opaque keys, and two
    callers that chose the same session id never meet in it.
    """

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


@dataclass(frozen=True)
class FamilyEvidence:
    """What a task family's calls have shown about teaching it (``learning/gate.py``).

    Counts are discounted, so recent calls weigh more: each new outcome first multiplies
    the three outcome counts by ``discount`` (``1 - 1/gate_horizon``), each new net-token
    figure does the same to the two net sums. A store applies ``observed`` atomically.
    """

    improved: float = 0.0
    degraded: float = 0.0
    unchanged: float = 0.0
    net_tokens: float = 0.0
    """Discounted sum of the net tokens of the family's taught calls that measured a baseline."""
    net_calls: float = 0.0
    """Discounted count of those calls: ``net_tokens / net_calls`` is the mean."""
    closed: bool = False
    """The gate's state: True while teaching the family does not pay (only exploration teaches)."""
    guidance: str | None = None
    """Guidance that won a comparison for this family (``reuse: family``); None: none kept."""
    guidance_from: str | None = None
    """The call id whose teacher wrote ``guidance``."""
    judged: float = 0.0
    """Discounted count of the counted comparisons a pairwise judge read (two different
    answers), whether it decided or not: the adaptive policy measures the judge on them."""
    undecided: float = 0.0
    """Of ``judged``, those whose verdict changed with the order of the answers (``no_evidence``):
    ``undecided / judged`` is a lower bound on how often the judge errs (``learning/adaptive.py``)."""
    cost_teach: float = 0.0
    """Discounted sum, over counted calls that measured the student alone, of what probe,
    teacher and guided answer cost as a share of the student alone (dollars when priced, else
    tokens): the adaptive policy's cost of teaching."""
    cost_check: float = 0.0
    """The same sum for the judge's calls: the cost of checking one comparison."""
    cost_calls: float = 0.0
    """Discounted count of those calls: ``cost_teach / cost_calls`` is the mean share."""
    mode: str | None = None
    """The adaptive policy's mode for the family (``learning/adaptive.py``); None: none chosen yet."""
    mode_outcomes: float = 0.0
    """Outcomes counted since the family entered ``mode`` (not discounted)."""
    graded: float = 0.0
    """Of the outcomes, those graded against a gold answer (``Atlas.learn``) rather than read
    from a judge's verdict, discounted alike: the adaptive policy does not inflate them for
    the judge's misses."""
    graded_degraded: float = 0.0
    """Of ``degraded``, the graded ones."""

    @property
    def outcomes(self) -> float:
        return self.improved + self.degraded + self.unchanged

    def observed(self, outcome: str | None, net_tokens: float | None, discount: float, *,
                 judge: str | None = None, cost: tuple[float, float] | None = None,
                 graded: bool = False) -> FamilyEvidence:
        """This evidence after one more call: its outcome and net tokens, either may be None;
        ``judge``: ``decided`` or ``undecided`` when a pairwise judge read two different
        answers; ``cost``: its (teaching, checking) cost as shares of the student alone;
        ``graded``: the outcome came from gold answers, not from a judge."""
        changes: dict[str, Any] = {}
        if outcome is not None:
            for name in OUTCOME_FIELDS:
                changes[name] = getattr(self, name) * discount + (outcome == name)
            changes["mode_outcomes"] = self.mode_outcomes + 1.0
            changes["graded"] = self.graded * discount + graded
            changes["graded_degraded"] = self.graded_degraded * discount + (graded and outcome == "degraded")
        if net_tokens is not None:
            changes.update(net_tokens=self.net_tokens * discount + net_tokens, net_calls=self.net_calls * discount + 1.0)
        if judge is not None:
            changes.update(judged=self.judged * discount + 1.0,
                           undecided=self.undecided * discount + (judge == "undecided"))
        if cost is not None:
            changes.update(cost_teach=self.cost_teach * discount + cost[0],
                           cost_check=self.cost_check * discount + cost[1], cost_calls=self.cost_calls * discount + 1.0)
        return replace(self, **changes)


@runtime_checkable
class FamilyStore(Protocol):
    """Evidence and reusable guidance per task family, shared like the sessions."""

    def get(self, family: str) -> FamilyEvidence | None: ...

    def observe(self, family: str, outcome: str | None, net_tokens: float | None, discount: float, *,
                judge: str | None = None, cost: tuple[float, float] | None = None,
                graded: bool = False) -> FamilyEvidence:
        """Add one call (``FamilyEvidence.observed``, atomically); the evidence after it."""
        ...

    def set_closed(self, family: str, closed: bool) -> None: ...

    def set_mode(self, family: str, mode: str) -> None:
        """The adaptive policy's new mode for the family; its ``mode_outcomes`` start again at 0."""
        ...

    def keep_guidance(self, family: str, guidance: str, call_id: str) -> None: ...

    def drop_guidance(self, family: str, call_id: str) -> None:
        """Forget the family's guidance if it is still the one ``call_id`` wrote (a newer
        winner stored meanwhile, by another replica, stays)."""
        ...

    def load(self, families: dict[str, FamilyEvidence]) -> None:
        """Replace these families' evidence (rebuilt from the ledger at start)."""
        ...

    def claim_rebuild(self) -> bool:
        """Whether this process should rebuild the evidence from the ledger: once for one
        process's memory; for a fleet, only the replica that takes the claim (a lease, so a
        replica that dies while rebuilding does not keep the others from it)."""
        ...

    def finish_rebuild(self, done: bool) -> None:
        """End a claimed rebuild: ``done``, the evidence was loaded and later starts skip the
        rebuild; else the claim is given back for the next start to try again."""
        ...


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
    """Sessions, breaker and family evidence of one ``Atlas``, and how to reach them."""

    @property
    def sessions(self) -> SessionStore: ...

    @property
    def breaker(self) -> BreakerStore: ...

    @property
    def families(self) -> FamilyStore: ...

    @property
    def baselines(self) -> BaselineStore:
        """The measured baselines per student model and family (``state/baselines.py``)."""
        ...

    @property
    def budgets(self) -> BudgetStore:
        """Teaching spend per UTC day, against the budgets' caps (``state/budgets.py``)."""
        ...

    @property
    def blocking(self) -> bool:
        """Whether an operation may wait on the network (async callers run them in a thread)."""
        ...

    def status(self) -> StateStatus: ...

    def close(self) -> None: ...


class OutageWarnings:
    """One WARNING when the shared state is lost and one when it is back, however many calls
    see the outage (the budget and the adaptive policy each keep one)."""

    def __init__(self, log: logging.Logger, lost: str, back: str,
                 on_back: Callable[[], None] | None = None) -> None:
        self._log, self._lost_text, self._back_text = log, lost, back
        self._on_back = on_back
        """Called once when the state is back: what a process kept of it may be stale."""
        self._lock = threading.Lock()
        self._lost = False

    def seen(self, available: bool) -> bool:
        """Record what one call saw; ``available`` back."""
        with self._lock:
            was_lost, self._lost = self._lost, not available
        if not available and not was_lost:
            self._log.warning(self._lost_text)
        elif available and was_lost:
            self._log.warning(self._back_text)
            if self._on_back is not None:
                self._on_back()
        return available
