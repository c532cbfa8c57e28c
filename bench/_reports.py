"""Each call's final report, for the benchmarks that count what a call cost.

The report a caller gets (``response.atlas``) is a copy taken at delivery, so that it does
not change under the caller while an audit runs on. The audit's baseline and judge come
after it, and only the report the ledger gets has them: a benchmark that adds up the
caller's copies counts ``audit`` a tenth of a student call too cheap.
"""

from __future__ import annotations

from atlas_middleware.ledger import LedgerRecord
from atlas_middleware.report import CallReport


class FinalReports:
    """A ledger that keeps each call's final report, by call id, until it is taken."""

    url = "memory://bench"

    def __init__(self) -> None:
        self.reports: dict[str, CallReport] = {}

    def append(self, record: LedgerRecord) -> None:
        self.reports[record.call_id] = record.report()

    def records(self, query: object = None) -> list[LedgerRecord]:
        return []

    def close(self) -> None:
        return None

    def take(self, delivered: CallReport) -> CallReport:
        """The final report of the call whose delivered copy this is."""
        return self.reports.pop(delivered.call_id)
