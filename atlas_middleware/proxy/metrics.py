"""Prometheus metrics for the teaching loop, fed by every delivered ``CallReport``.

A registry of its own (not prometheus_client's global one), so that LiteLLM's own
Prometheus integration can run in the same process without name clashes. The proxy serves
it at ``/atlas/metrics``. Each process has its own counts, and every series carries a
``replica`` label naming the process (``ATLAS_REPLICA``, else ``<hostname>-<pid>``): two
workers behind one port, or a replica restarted under the same address, are then distinct
series that Prometheus sums (``sum without (instance, replica) (rate(...))``) instead of
one series that jumps between processes' counts. Fleet totals that outlive processes come
from the ledger (``atlas-middleware report``), not from here.

The shared state (``state/``) is read at scrape time through ``watch_state``: how many
state operations process memory served because Redis failed (``atlas_state_fallbacks_total``
by operation) and whether it is failing now (``atlas_state_degraded``). Under ``policy:
adaptive``, ``atlas_adaptive_calls_total{mode, why}`` counts calls by their family's mode;
``why="state_unavailable"`` counts those served ``strict`` because the shared state was down.
Under a teaching budget, ``atlas_budget_calls_total{why}`` counts the calls it kept untaught:
``total`` or ``family`` (a cap reached) and ``state_unavailable`` (the shared counter could
not be read: a budget fails safe, untaught; ``budgets.py``).
The ledger writer (``ledger/spool.py``) is read the same way, through ``watch_ledger``:
records lost (``atlas_ledger_records_lost_total{reason}``, each also logged at ERROR),
records spooled (``atlas_ledger_records_spooled_total{reason}``) and writes still running
after the caller stopped waiting (``atlas_ledger_writes_overdue``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from ..errors import MissingExtraError
from ..ledger.spool import LedgerStatus
from ..report import TEACHER_PATH_FAILURES, CallReport, Reason
from ..state import StateStatus
from ..usage import ROLES

S = TypeVar("S")

# The guidance path's failures that are the teacher's (a probe's are the student's).
TEACHER_FAILURES = TEACHER_PATH_FAILURES - {Reason.PROBE_ERROR, Reason.PROBE_EMPTY}
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def default_replica() -> str:
    """This process's name in every series: ``ATLAS_REPLICA`` (a pod name, say), else
    ``<hostname>-<pid>`` (on Kubernetes the hostname is the pod's name)."""
    return os.environ.get("ATLAS_REPLICA") or f"{socket.gethostname()}-{os.getpid()}"


class AtlasMetrics:
    def __init__(self, replica: str | None = None) -> None:
        try:
            import prometheus_client as prom
        except ImportError:
            raise MissingExtraError("the proxy's metrics endpoint", "proxy", "prometheus-client") from None
        self._prom = prom
        self.replica = replica or default_replica()
        self.registry = prom.CollectorRegistry()
        r, me = self.registry, self.replica
        self.calls = prom.Counter("atlas_calls", "Calls by decision and reason", ["replica", "decision", "reason"],
                                  registry=r)
        self.tokens = prom.Counter("atlas_tokens", "Tokens spent, by loop role and kind", ["replica", "role", "kind"],
                                   registry=r)
        # Savings can be negative (a longer delivered answer), so they accumulate in gauges.
        self.tokens_saved = prom.Gauge("atlas_tokens_saved", "Sum of tokens_saved over calls that measured it",
                                       ["replica"], registry=r).labels(me)
        self.net_tokens = prom.Gauge("atlas_net_tokens", "Sum of net_tokens over calls that measured it",
                                     ["replica"], registry=r).labels(me)
        self.cost_saved = prom.Gauge("atlas_cost_saved_usd", "Net US dollars against the student alone "
                                     "(+ saved), by whether the student-alone price was measured or estimated",
                                     ["replica", "basis"], registry=r)
        self.teacher_latency = prom.Histogram(
            "atlas_teacher_latency_seconds", "Latency of teacher calls", ["replica"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60), registry=r).labels(me)
        self.teacher_errors = prom.Counter("atlas_teacher_errors", "Teacher failures by reason", ["replica", "reason"],
                                           registry=r)
        self.reused = prom.Counter("atlas_guidance_reused", "Calls given earlier guidance instead of probe and "
                                   "teacher, by where it came from", ["replica", "source"], registry=r)
        # why="state_unavailable": calls served strict because the shared state was down.
        self.modes = prom.Counter("atlas_adaptive_calls", "Calls under policy adaptive, by their family's mode and "
                                  "why it was chosen", ["replica", "mode", "why"], registry=r)
        # why="state_unavailable": calls run untaught because the budget's shared counter could not be read.
        self.budget = prom.Counter("atlas_budget_calls", "Calls run untaught under a teaching budget, by which cap "
                                   "(total, family) or state_unavailable", ["replica", "why"], registry=r)
        # When this process started: a counter that restarts from 0 is a new process, not a loss.
        prom.Gauge("atlas_process_start_time_seconds", "Start time of this replica's process (UNIX seconds)",
                   ["replica"], registry=r).labels(me).set_to_current_time()

    def observe(self, report: CallReport) -> None:
        me = self.replica
        self.calls.labels(me, report.decision, report.reason.value).inc()
        for role in ROLES:
            usage = getattr(report.usage, role)
            if usage.calls:
                self.tokens.labels(me, role, "prompt").inc(usage.prompt_tokens)
                self.tokens.labels(me, role, "completion").inc(usage.completion_tokens)
        if report.counterfactual_basis == "measured":  # an estimate is never counted as measured
            if report.tokens_saved is not None:
                self.tokens_saved.inc(report.tokens_saved)
            if report.net_tokens is not None:
                self.net_tokens.inc(report.net_tokens)
        if report.cost_saved_usd is not None and report.counterfactual_basis is not None:
            self.cost_saved.labels(me, report.counterfactual_basis).inc(report.cost_saved_usd)
        if "teacher" in report.latency_ms:
            self.teacher_latency.observe(report.latency_ms["teacher"] / 1000.0)
        if report.reason in TEACHER_FAILURES:
            self.teacher_errors.labels(me, report.reason.value).inc()
        if report.guidance_reused:  # a teacher call avoided
            self.reused.labels(me, "family" if report.reused_from else "session").inc()
        if report.mode is not None and report.adaptive is not None:
            self.modes.labels(me, report.mode, report.adaptive.why).inc()
        if report.budget is not None:
            self.budget.labels(me, report.budget.why).inc()

    def watch_state(self, status_of: Callable[[], StateStatus | None]) -> None:
        """Export the shared state's fallbacks and health, read from ``status_of()`` (None:
        no ``Atlas`` built yet) at every scrape, so the state needs no metrics of its own."""
        self.registry.register(_StateCollector(status_of, self.replica))

    def watch_ledger(self, status_of: Callable[[], LedgerStatus | None]) -> None:
        """Export the ledger writer's counts (``ledger/spool.py``), read from ``status_of()``
        (None: no ``Atlas`` built yet) at every scrape: records lost and spooled, by reason."""
        self.registry.register(_LedgerCollector(status_of, self.replica))

    def render(self) -> bytes:
        return bytes(self._prom.generate_latest(self.registry))

    def mount(self, app: Any, path: str = "/atlas/metrics") -> None:
        """Serve the metrics on a Starlette/FastAPI ``app`` (the LiteLLM proxy's), once."""
        from starlette.responses import Response

        if any(getattr(route, "path", None) == path for route in app.router.routes):
            return

        async def metrics(request: Any) -> Response:
            return Response(self.render(), media_type=CONTENT_TYPE)

        app.add_route(path, metrics, methods=["GET"])


class _StatusCollector(Generic[S]):
    """A custom collector whose families are read from ``status_of()`` at scrape time
    (``describe`` builds them empty)."""

    def __init__(self, status_of: Callable[[], S | None], replica: str) -> None:
        import prometheus_client.core as core  # the metric families of a custom collector

        self._core = core
        self._status_of = status_of
        self._replica = replica

    def describe(self) -> Iterator[Any]:
        return self._families(None)

    def collect(self) -> Iterator[Any]:
        return self._families(self._status_of())

    def _families(self, status: S | None) -> Iterator[Any]:
        raise NotImplementedError


class _StateCollector(_StatusCollector[StateStatus]):
    def _families(self, status: StateStatus | None) -> Iterator[Any]:
        fallbacks = self._core.CounterMetricFamily(
            "atlas_state_fallbacks", "State operations served from process memory because the shared state failed",
            labels=["replica", "op"])
        degraded = self._core.GaugeMetricFamily(
            "atlas_state_degraded", "1 while the shared state is unreachable and process memory serves",
            labels=["replica", "backend"])
        if status is not None:
            for op, count in sorted(status.fallbacks.items()):
                fallbacks.add_metric([self._replica, op], count)
            degraded.add_metric([self._replica, status.backend], 1.0 if status.degraded else 0.0)
        yield fallbacks
        yield degraded


class _LedgerCollector(_StatusCollector[LedgerStatus]):
    def _families(self, status: LedgerStatus | None) -> Iterator[Any]:
        lost = self._core.CounterMetricFamily(
            "atlas_ledger_records_lost", "Call records kept neither in the ledger nor in the spool (each logged "
            "at ERROR), by reason", labels=["replica", "reason"])
        spooled = self._core.CounterMetricFamily(
            "atlas_ledger_records_spooled", "Call records sent to the spool instead of the ledger, by why",
            labels=["replica", "reason"])
        overdue = self._core.GaugeMetricFamily(
            "atlas_ledger_writes_overdue", "Ledger writes given up on that are still running (a ledger that does "
            "not answer)", labels=["replica"])
        if status is not None:
            for reason, count in sorted(status.lost.items()):
                lost.add_metric([self._replica, reason], count)
            for reason, count in sorted(status.spooled.items()):
                spooled.add_metric([self._replica, reason], count)
            overdue.add_metric([self._replica], status.overdue)
        yield lost
        yield spooled
        yield overdue
