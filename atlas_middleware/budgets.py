"""Teaching budgets: caps on what teaching spends per UTC day, in total and per task family.

``budget.daily_usd`` caps every call's teaching spend together, ``budget.family_daily_usd``
each task family's (per tenant and student model, the key of its evidence). A call's
**teaching spend** is what it cost beyond the call the student alone would have made: probe,
teacher and judge, and the second student answer when both a guided answer and the
student's own were made (``teaching_spend``). A call whose answer was the guided one alone
spent its probe and teacher (and judge) beyond the student alone.

Before a call is taught, ``Budget.check`` reads the UTC day's counters; past a cap the call
runs untaught: the student alone, reason ``budget_exhausted``, ``CallReport.budget`` saying
which cap. When the call ends (its audit or shadow comparison too), ``Budget.charge`` adds
its spend. The check comes before and the charge after, so calls in flight when a cap is
reached may pass it by what they spend; a day's counters start from zero at 00:00 UTC.

The counters live in the state backend (``state/budgets.py``): this process's memory, or one
Redis counter per UTC day and cap with an expiry, shared by the fleet.

**A state backend that is down fails safe: untaught.** A budget is a ceiling the user set on
spend; a replica that cannot read the fleet's count cannot tell whether the ceiling is
reached, and its own memory knows only its own share. So while the shared state is down,
calls run untaught (``budget_exhausted``, ``budget.why: state_unavailable``): the student
alone, the very answer every non-degradation figure is measured against, so what is lost is
the teaching gain of the outage, never the caller's answer. One warning per outage (and
one when the state is back); the proxy counts such calls in
``atlas_budget_calls_total{why="state_unavailable"}``. With Redis the fallback wrapper
retries it every ``backoff`` second, so teaching resumes a second after Redis does.

Roles whose price is unknown (LiteLLM's cost map lacks the model and no custom price was
given) spend nothing against a budget: a warning says so once per process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

from ._redact import secret_logger
from .report import BudgetInfo
from .state.base import OutageWarnings
from .state.budgets import TOTAL, BudgetStore
from .usage import UsageByRole

log = secret_logger("atlas_middleware.budgets")


def teaching_spend(usage: UsageByRole) -> float | None:
    """US dollars a call spent beyond the student alone (module docstring): the known prices
    of probe, teacher, judge and, when the student answered twice, the guided answer. 0 for
    a call that taught nothing; None when teaching ran and none of its prices is known."""
    extra = [usage.probe, usage.teacher, usage.judge]
    if usage.guided.calls and usage.baseline.calls:
        extra.append(usage.guided)
    ran = [u for u in extra if u.calls]
    known = [u.cost_usd for u in ran if u.cost_usd is not None]
    if ran and not known:
        return None
    return float(sum(known))


def utc_day(now: datetime) -> str:
    return (now.astimezone(UTC) if now.tzinfo is not None else now).date().isoformat()


class Budget:
    """``check`` before a call is taught, ``charge`` when it ends; ``clock`` gives the time
    (the UTC day of the counters: tests move it past midnight)."""

    def __init__(self, store: BudgetStore, *, daily_usd: float | None = None, family_daily_usd: float | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.store = store
        self.daily_usd = daily_usd
        self.family_daily_usd = family_daily_usd
        self.clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._unpriced_warned = False
        self._outage = OutageWarnings(
            log, "teaching budget: the shared state that counts the day's spend is unreachable; calls run "
            "untaught (budget_exhausted) until it is back",
            "teaching budget: the shared state is back; calls are taught within the budget again")

    def _caps(self, family: str | None) -> list[tuple[str, Literal["total", "family"], float]]:
        """(counter key, ``BudgetInfo.why``, cap) of each cap configured for the call."""
        caps: list[tuple[str, Literal["total", "family"], float]] = []
        if self.daily_usd is not None:
            caps.append((TOTAL, "total", self.daily_usd))
        if self.family_daily_usd is not None and family is not None:
            caps.append(("family:" + family, "family", self.family_daily_usd))
        return caps

    def check(self, family: str | None) -> BudgetInfo | None:
        """None when the call may be taught; else why not (a cap reached, or the state down).
        ``family``: the family's evidence key (``learning.gate.gate_key``)."""
        caps = self._caps(family)
        if not caps:
            return None
        spent = self.store.spent(utc_day(self.clock()), [key for key, _, _ in caps])
        self._outage.seen(spent is not None)
        if spent is None:
            return BudgetInfo(why="state_unavailable")
        for (_, why, cap), amount in zip(caps, spent, strict=True):
            if amount >= cap:
                return BudgetInfo(why=why, spent_usd=round(amount, 9), limit_usd=cap)
        return None

    def charge(self, family: str | None, usage: UsageByRole) -> float | None:
        """Add a finished call's teaching spend to the day's counters; the amount charged."""
        amount = teaching_spend(usage)
        if amount is None:
            self._unpriced()
            return None
        caps = self._caps(family)
        if amount > 0 and caps:
            self.store.charge(utc_day(self.clock()), [key for key, _, _ in caps], amount)
        return amount

    def _unpriced(self) -> None:
        with self._lock:
            warned, self._unpriced_warned = self._unpriced_warned, True
        if not warned:
            log.warning("teaching budget: a call's teaching roles have no known price (LiteLLM's cost map lacks the "
                        "model and no input_cost_per_token / output_cost_per_token was given); they spend nothing "
                        "against the budget")
