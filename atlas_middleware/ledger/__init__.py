"""Where every call is recorded. ``open_ledger(url)`` picks the backend from the URL."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Ledger, LedgerQuery, NullLedger
from .record import LedgerRecord
from .sqlite import SQLiteLedger

__all__ = ["Ledger", "LedgerQuery", "LedgerRecord", "NullLedger", "SQLiteLedger", "open_ledger"]


def open_ledger(url: str | None) -> Ledger:
    """``sqlite:///relative.db``, ``sqlite:////abs/path.db``, ``sqlite:///:memory:``, ``none``."""
    if url is None or url.strip().lower() in ("", "none", "off"):
        return NullLedger()
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///"):]
        if not path:
            raise ConfigError(f"ledger URL {url!r} names no file")
        return SQLiteLedger(path, url=url)
    if url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        try:
            from .postgres import PostgresLedger  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise ConfigError(
                "the Postgres ledger needs: pip install 'atlas-middleware[postgres]'"
            ) from exc
        return PostgresLedger(url)  # type: ignore[no-any-return,unused-ignore]
    raise ConfigError(
        f"unknown ledger URL {url!r}: use sqlite:///path.db, postgresql://... or none"
    )
