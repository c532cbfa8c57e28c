"""Reports kept for LiteLLM's callbacks, and the report of a response or stream."""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from ..backends.compat import stream_call_details
from ..report import CallReport
from .streams import PendingStream

REPORT_KEY = "atlas_report"


class ReportStore:
    """The latest reports by LiteLLM call id, bounded, so proxy hooks can find them."""

    def __init__(self, capacity: int = 4096) -> None:
        self._items: OrderedDict[str, CallReport] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def put(self, call_id: str | None, report: CallReport) -> None:
        if not call_id:
            return
        with self._lock:
            self._items[call_id] = report
            self._items.move_to_end(call_id)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def get(self, call_id: str | None) -> CallReport | None:
        if not call_id:
            return None
        with self._lock:
            return self._items.get(call_id)


def find_report(obj: Any) -> CallReport | None:
    """The ``CallReport`` of a response or a LiteLLM stream (after its first chunk), or None;
    callers use ``atlas_middleware.report_of``, which looks here for LiteLLM's objects."""
    report = getattr(obj, "atlas", None)
    if isinstance(report, CallReport):
        return report
    details = stream_call_details(obj)
    if details is not None and isinstance(details.get(REPORT_KEY), CallReport):
        return details[REPORT_KEY]  # type: ignore[no-any-return]
    stream = getattr(obj, "completion_stream", None)
    if isinstance(stream, PendingStream):
        return stream.report
    return None
