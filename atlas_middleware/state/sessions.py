"""Guidance reused across the steps of one agent task (keyed by a session id).

An agent makes many model calls per task; the teacher diagnoses once, and later steps
reuse the guidance until a comparison shows it stopped helping (then it is dropped and the
next step is taught afresh). An empty entry records "the teacher saw no need to help".

This is one process's cache (``state/memory.py``); ``state/redis.py`` shares the same
entries across replicas.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ..teaching.families import check_label

MAX_SESSION_ID_CHARS = 256


def check_session_id(session_id: Any) -> str | None:
    """The session id, trimmed; None for none (None or empty); ``InvalidRequestError`` when it
    cannot be one: not a string, longer than ``MAX_SESSION_ID_CHARS``, or with control characters.

    It becomes a state key (a Redis key, a cache entry) and a ledger column, so a client
    (the proxy's ``x-atlas-session-id`` header) must not store 10 KB, or a newline, there.
    """
    if session_id is None or session_id == "":
        return None
    return check_label(session_id, "session_id", MAX_SESSION_ID_CHARS, "leave it out for no session")


@dataclass
class SessionEntry:
    guidance: str
    """Empty string: the teacher judged the student strong enough for this task."""
    stored_at: float


class SessionCache:
    def __init__(self, ttl: float = 3600.0, max_entries: int = 10000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._data: OrderedDict[str, SessionEntry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session_id: str) -> SessionEntry | None:
        with self._lock:
            entry = self._data.get(session_id)
            if entry is None:
                return None
            if time.monotonic() - entry.stored_at > self.ttl:
                del self._data[session_id]
                return None
            self._data.move_to_end(session_id)
            return entry

    def lookup(self, session_id: str) -> str | None:
        """The guidance alone (the ``state.SessionStore`` protocol): shared backends keep no
        entry object, only the text and its time to live."""
        entry = self.get(session_id)
        return None if entry is None else entry.guidance

    def put(self, session_id: str, guidance: str) -> None:
        with self._lock:
            self._data[session_id] = SessionEntry(guidance, time.monotonic())
            self._data.move_to_end(session_id)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)

    def drop(self, session_id: str) -> None:
        with self._lock:
            self._data.pop(session_id, None)

    def __len__(self) -> int:
        return len(self._data)
