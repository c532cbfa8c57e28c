"""The ledger interface: every call appended once, read back for reports.

Backends: ``sqlite:///path`` (default; WAL, many threads and processes), ``none``. A
Postgres backend implements the same protocol for several replicas.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict

from .record import LedgerRecord


class LedgerQuery(BaseModel):
    model_config = ConfigDict(defer_build=True)

    since: datetime | None = None
    until: datetime | None = None
    student_model: str | None = None
    session_id: str | None = None
    task_family: str | None = None
    limit: int | None = None
    """The first ``limit`` matching records."""
    last: int | None = None
    """The last ``last`` matching records (still returned oldest first); with ``limit``, the
    first ``limit`` of those."""


@runtime_checkable
class Ledger(Protocol):
    url: str

    def append(self, record: LedgerRecord) -> None:
        """Store one record; appending the same ``call_id`` twice stores it once."""
        ...

    def records(self, query: LedgerQuery | None = None) -> list[LedgerRecord]:
        """Records in creation order, oldest first."""
        ...

    def close(self) -> None: ...


class NullLedger:
    """Keeps nothing (``ledger="none"``)."""

    url = "none"

    def append(self, record: LedgerRecord) -> None:
        return None

    def records(self, query: LedgerQuery | None = None) -> list[LedgerRecord]:
        return []

    def close(self) -> None:
        return None
