"""The gate's evidence replayed from the ledger when a process starts.

The state backend is the gate's memory; the ledger is its history. Process memory starts
empty, and a Redis that restarted is empty too, so at start ``rebuild`` replays the last
``gate_rebuild`` ledger records through the very ``TeachingGate.observe`` the live calls go
through (into a scratch memory store), then loads the result into the state backend. There
is one copy of the rule: a replayed ledger gives the evidence the live calls gave, up to
the records left out by ``gate_rebuild`` and the outcomes the ledger cannot show (below).

With Redis, only the first replica to start since Redis was last empty replays
(``FamilyStore.claim_rebuild``, a lease made permanent once the evidence is in Redis); the
others find the evidence there. Calls the caller kept from learning (``learn: False``) are
skipped, as they were live; so are an evaluation's, whose grades (``Atlas.learn``) are not
in the ledger. The adaptive policy's evidence and modes (``modes.py``) come back the same way:
its calls' reports carry their mode, and so do the families' measured baselines, the
counterfactual's estimate for calls that run none (``state/baselines.py``). Reuse needs texts: a ledger written without ``store_texts`` holds no guidance
to reuse, so only the gate's evidence comes back. Each report carries its tenant, so the
replayed evidence and guidance come back under the tenant whose calls made them; a record
written before tenants existed counts for the default tenant and leaves no guidance to reuse
(``gate.py``): the rebuild never hands one caller's guidance to another.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from .._redact import secret_logger
from .._tenants import DEFAULT_TENANT
from ..ledger.base import Ledger, LedgerQuery
from ..report import CallReport
from ..state.base import FamilyEvidence
from ..state.baselines import BaselineStore, fair_baseline
from ..state.families import MemoryFamilies
from .gate import TeachingGate, gate_key

log = secret_logger("atlas_middleware.learning")


def replay(reports: Iterable[CallReport], gate: TeachingGate) -> dict[str, FamilyEvidence]:
    """The evidence ``reports`` (oldest first) give ``gate``'s rule, from nothing."""
    scratch = TeachingGate(MemoryFamilies(max_families=1 << 30), gate.rule, learned=gate.learned,
                           reuse=gate.reuse, audit_rate=gate.audit_rate, log_changes=False,
                           adaptive=gate.adaptive_rule, adaptive_default=gate.adaptive_default)
    for report in reports:
        if report.learn:  # a call made with learn: False taught the gate only what its caller said
            scratch.observe(report)
    assert isinstance(scratch.store, MemoryFamilies)
    return scratch.store.snapshot()


def rebuild(gate: TeachingGate, ledger: Ledger, records: int, baselines: BaselineStore | None = None) -> int:
    """Load the evidence of the ledger's last ``records`` records into ``gate``'s store, and
    their measured baselines into ``baselines`` (the counterfactual's estimate); the number of
    records replayed (0 when another replica has done it)."""
    if records <= 0 or not gate.store.claim_rebuild():
        return 0
    t0 = time.perf_counter()
    try:
        reports = [r.report() for r in ledger.records(LedgerQuery(last=records)) if r.task_family]
        evidence = replay(reports, gate)
        gate.store.load(evidence)
        if baselines is not None:
            replay_baselines(reports, baselines)
    except BaseException:
        gate.store.finish_rebuild(False)  # the next replica to start tries again
        raise
    gate.store.finish_rebuild(True)
    closed = sum(e.closed for e in evidence.values())
    log.info("teaching gate rebuilt from %d ledger records in %.2f s: %d families, %d closed",
             len(reports), time.perf_counter() - t0, len(evidence), closed)
    return len(reports)


def replay_baselines(reports: Iterable[CallReport], baselines: BaselineStore) -> None:
    """Add the fair measured baselines of ``reports`` (oldest first) to their families' means,
    as the live calls did (``Atlas._remember_baseline``)."""
    for report in reports:
        baseline = fair_baseline(report)
        if baseline is not None and report.task_family is not None:
            baselines.add(gate_key(report.student_model, report.task_family, report.tenant or DEFAULT_TENANT),
                          baseline)
