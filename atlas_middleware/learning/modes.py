"""The adaptive policy's state side: a family's evidence and its model's pooled evidence read
from the state backend before a call, the rule (``adaptive.py``) asked, and the evidence
and mode written back after it.

Keys are the gate's (``gate.gate_key``: tenant, student model, family), so the evidence is
shared by a fleet through Redis like the gate's and rebuilt from the ledger at start by the
same replay (``rebuild.py``); the pooled evidence of a tenant's student model is one more
key (family ``adaptive.POOLED``), and the evidence of its rare families as a class one more
(family ``adaptive.RARE``: the calls made while their family had fewer than ``min_evidence``
outcomes); each is read at most every ``POOLED_TTL`` seconds by a process (they move slowly,
and a call should not pay a second round trip for them).

A shared state that is down (``FallbackState`` serving from memory) serves every family
``strict``, never its cheapest mode: the evidence memory holds may be another replica's
stale view, and the mode is the one thing that lets guidance reach the user unchecked. A
warning says so once per outage; every such call's report says ``why: state_unavailable``
(and the proxy's metrics count them). A Redis that lost its keys gives every family the
``learning`` start again, under ``strict``.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from .._redact import secret_logger
from ..report import AdaptiveInfo, CallReport
from ..state.base import FamilyEvidence, FamilyStore, OutageWarnings
from ..teaching.flow import sampled
from .adaptive import AdaptiveRule, Choice, Mode, choose, cost_shares, explore_rate
from .outcomes import Outcome

log = secret_logger("atlas_middleware.learning")

POOLED_TTL = 5.0
"""Seconds a process keeps a model's pooled evidence before reading it again."""
_POOLED_KEPT = 1024
EXPLORE_SALT = "adaptive-explore:"
MEASURE_SALT = "adaptive-measure:"


def info_of(choice: Choice, *, explored: bool = False, measured: bool = False) -> AdaptiveInfo:
    f = choice.figures
    return AdaptiveInfo(why=choice.why, evidence=round(f.own, 2), borrowed=round(f.borrowed, 2),
                        degradation_bound=round(f.degradation, 5), judge_miss=round(f.judge_miss, 4),
                        gain=round(f.gain, 4), cost=round(f.cost(choice.mode), 4), explored=explored,
                        measured=measured)


def judge_read(report: CallReport) -> str | None:
    """``decided`` or ``undecided`` when a pairwise judge compared the call's two answers."""
    winner = report.judge.winner if report.judge is not None else None
    if winner is None:
        return None
    return "undecided" if winner == "undecided" else "decided"


class ModeSelector:
    """``admit`` before a call, ``observe`` its final report (``gate.TeachingGate`` calls both)."""

    def __init__(self, store: FamilyStore, rule: AdaptiveRule, available: Callable[[], bool] | None = None,
                 log_changes: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.rule = rule
        self.log_changes = log_changes
        self._available = available or (lambda: True)
        self._clock = clock
        self._pooled: OrderedDict[str, tuple[float, FamilyEvidence | None]] = OrderedDict()
        self._lock = threading.Lock()
        self._outage = OutageWarnings(
            log, "adaptive policy: the shared state is unreachable; every family is served under strict until "
            "it is back", "adaptive policy: the shared state is back; families return to their modes",
            on_back=self._forget_pooled)

    def admit(self, key: str, pooled_key: str, call_id: str,
              rare_key: str | None = None) -> tuple[Choice, FamilyEvidence | None, AdaptiveInfo]:
        """The family's mode for this call, its evidence, and what the report says of both."""
        evidence = self.store.get(key)
        available = self._state_available()
        rare = self._rare_evidence(evidence, rare_key)
        choice = choose(evidence, self._pooled_evidence(pooled_key), self.rule, state_available=available, rare=rare)
        explored = choice.mode == "skip" and sampled(call_id, explore_rate(choice, self.rule), EXPLORE_SALT)
        measured = choice.mode == "verify" and sampled(call_id, self.rule.audit_rate, MEASURE_SALT)
        return choice, evidence if available else None, info_of(choice, explored=explored, measured=measured)

    def observe(self, report: CallReport, key: str, pooled_key: str, outcome: Outcome | None,
                rare_key: str | None = None, graded: bool = False) -> None:
        """Add a call of the family's unbiased sample (``gate.in_sample``) to its evidence and
        its model's pooled evidence (and to its rare families' while the family is rare), then
        move the family if its evidence says so. ``graded``: ``outcome`` came from gold
        answers (``Atlas.learn``), which the rule does not inflate for the judge's misses."""
        judge, cost = judge_read(report), cost_shares(report.usage)
        if outcome is None and judge is None and cost is None:
            return
        discount = self.rule.discount
        evidence = self.store.observe(key, outcome, report.net_tokens, discount, judge=judge, cost=cost, graded=graded)
        pooled = self.store.observe(pooled_key, outcome, None, discount, judge=judge, cost=cost, graded=graded)
        self._remember(pooled_key, pooled)
        rare = None  # a family that is not rare is decided by its own evidence: the class is not read
        if rare_key is not None and evidence.outcomes - (outcome is not None) < self.rule.min_evidence:
            rare = self.store.observe(rare_key, outcome, None, discount, judge=judge, cost=cost, graded=graded)
            self._remember(rare_key, rare)
        now = evidence.mode or "strict"
        choice = choose(evidence, pooled, self.rule, rare=rare)
        new, why = choice.mode, choice.why
        if outcome == "degraded" and report.mode in ("audit", "verify"):
            # An audited (or measured) degradation: back to strict at once, to earn the way down again.
            new, why = "strict", "degraded"
        if new != now or why == "degraded":
            self.store.set_mode(key, new)
            self._changed(key, now, new, why, choice)

    def _changed(self, key: str, old: str, new: Mode, why: str, choice: Choice) -> None:
        if self.log_changes:
            f = choice.figures
            log.info("adaptive policy: family %s moved from %s to %s (%s): degradation bound %.4f, judge miss "
                     "%.3f, gain %.3f, over %.1f outcomes of its own", key, old, new, why, f.degradation,
                     f.judge_miss, f.gain, f.own)

    def _state_available(self) -> bool:
        return self._outage.seen(self._available())

    def _forget_pooled(self) -> None:
        """After an outage the state may have lost the pooled and rare evidence this process
        still holds: a stale view must not lend a rare family a cheaper mode."""
        with self._lock:
            self._pooled.clear()

    def _rare_evidence(self, evidence: FamilyEvidence | None, rare_key: str | None) -> FamilyEvidence | None:
        """The rare families' evidence, read only for a family that is rare itself."""
        if rare_key is None or (evidence is not None and evidence.outcomes >= self.rule.min_evidence):
            return None
        return self._pooled_evidence(rare_key)

    def _pooled_evidence(self, key: str) -> FamilyEvidence | None:
        now = self._clock()
        with self._lock:
            kept = self._pooled.get(key)
            if kept is not None and now - kept[0] < POOLED_TTL:
                return kept[1]
        evidence = self.store.get(key)
        self._remember(key, evidence)
        return evidence

    def _remember(self, key: str, evidence: FamilyEvidence | None) -> None:
        with self._lock:
            self._pooled[key] = (self._clock(), evidence)
            self._pooled.move_to_end(key)
            while len(self._pooled) > _POOLED_KEPT:
                self._pooled.popitem(last=False)
