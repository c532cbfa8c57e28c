"""Postgres ledger through SQLAlchemy: several proxy replicas writing to one database.

Same interface as the SQLite ledger. What it adds for a shared server:

* Schema created and versioned by the project: ``atlas_meta.schema_version`` and a list of
  migrations, applied once under a Postgres advisory lock so replicas starting together
  do not race. A database newer than this code is refused rather than written wrongly.
* Connection pooling (``pool_size``/``max_overflow``) with ``pool_pre_ping``: connections
  broken by a server restart are replaced at checkout, and a write that meets a broken
  connection is retried once on a fresh one before it gives up (and the record is spooled).
* Idempotent appends: ``INSERT ... ON CONFLICT (call_id) DO NOTHING``, so a spooled record
  replayed after a write that in fact succeeded is stored once.
"""

from __future__ import annotations

import json
import re
from datetime import UTC
from typing import Any

from .._redact import redact, secret_logger
from ..errors import LedgerError, MissingExtraError
from .base import LedgerQuery
from .record import LedgerRecord

try:
    import sqlalchemy as sa
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.dialects.postgresql import insert as pg_insert
except ImportError as _exc:  # pragma: no cover - exercised only without the extra
    raise MissingExtraError("the Postgres ledger", "postgres", "sqlalchemy") from _exc

log = secret_logger("atlas_middleware.ledger")

SCHEMA_VERSION = 3
# An arbitrary constant: the advisory lock that serialises schema set-up across replicas.
_SCHEMA_LOCK_KEY = 0x61746C61  # "atla"

_meta = sa.MetaData()
meta_table = sa.Table(
    "atlas_meta", _meta,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)
calls_table = sa.Table(
    "atlas_calls", _meta,
    sa.Column("seq", sa.BigInteger, sa.Identity(always=False), primary_key=True),
    sa.Column("call_id", sa.Text, nullable=False, unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("student_model", sa.Text, nullable=False, index=True),
    sa.Column("teacher_model", sa.Text),
    sa.Column("policy", sa.Text, nullable=False),
    sa.Column("session_id", sa.Text, index=True),
    sa.Column("task_family", sa.Text, index=True),
    sa.Column("decision", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("failed", sa.Boolean, nullable=False),
    sa.Column("tokens", sa.Text, nullable=False),
    sa.Column("tokens_saved", sa.BigInteger),
    sa.Column("net_tokens", sa.BigInteger),
    sa.Column("cost_usd", sa.Float),
    sa.Column("student_alone_cost_usd", sa.Float),
    sa.Column("cost_saved_usd", sa.Float),
    sa.Column("counterfactual_basis", sa.Text),
    sa.Column("counterfactual_samples", sa.Integer),
    sa.Column("mode", sa.Text),
    sa.Column("latency_ms", sa.Float, nullable=False),
    sa.Column("teacher_latency_ms", sa.Float),
    sa.Column("errors", sa.Integer, nullable=False),
    sa.Column("prompt_sha256", sa.Text, nullable=False),
    sa.Column("prompt_chars", sa.Integer, nullable=False),
    sa.Column("answer_sha256", sa.Text),
    sa.Column("answer_chars", sa.Integer),
    sa.Column("prompt_text", sa.Text),
    sa.Column("answer_text", sa.Text),
    sa.Column("report_json", sa.Text, nullable=False),
)
_COLUMNS = tuple(c.name for c in calls_table.columns if c.name != "seq")
# Built once, the row given as parameters: a statement built per write (``.values(row)``)
# cost about 0.45 ms more CPU per call, a twentieth of a fleet replica's (bench/fleet_costs.py).
_INSERT = pg_insert(calls_table).on_conflict_do_nothing(index_elements=["call_id"])

# version -> statements that bring a database from version-1 to version. Version 1 is the
# ``create_all`` above; later versions append ALTERs here and bump SCHEMA_VERSION.
# They run after ``create_all``, which makes a new database at the latest version at once:
# each statement must therefore be a no-op where its change is already there.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (),
    2: ("ALTER TABLE atlas_calls ADD COLUMN IF NOT EXISTS task_family TEXT",
        "CREATE INDEX IF NOT EXISTS ix_atlas_calls_task_family ON atlas_calls (task_family)"),
    3: ("ALTER TABLE atlas_calls ADD COLUMN IF NOT EXISTS student_alone_cost_usd DOUBLE PRECISION",
        "ALTER TABLE atlas_calls ADD COLUMN IF NOT EXISTS cost_saved_usd DOUBLE PRECISION",
        "ALTER TABLE atlas_calls ADD COLUMN IF NOT EXISTS counterfactual_basis TEXT",
        "ALTER TABLE atlas_calls ADD COLUMN IF NOT EXISTS counterfactual_samples INTEGER",
        "ALTER TABLE atlas_calls ADD COLUMN IF NOT EXISTS mode TEXT"),  # policy: adaptive's mode
}


# What bounds a write. The caller's wait does (``SpooledWriter``: the write runs on a writer
# thread), and it alone bounds one to a server that accepts TCP but never answers, a frozen
# or SIGSTOPped one: its kernel acknowledges every packet, so nothing below fires. These
# end the write itself, which the caller may have stopped waiting for:
# * ``connect_timeout`` (psycopg's own clock, over the whole handshake) and ``pool_timeout``;
# * TCP keepalives and ``tcp_user_timeout``: a host gone without a reset (power, network),
#   for pooled connections and for a write whose bytes are never acknowledged.
# No ``statement_timeout``: a write waiting on a lock (a migration, a VACUUM FULL) is left to
# finish while records go to the spool, which costs no caller anything; a timeout would end
# it, and each retry would cost a caller its wait again. A per-write ``SET LOCAL`` (the only
# form every connection pooler keeps to one client) also cost ~35% of a local insert. Where
# one is wanted: ``?options=-c%20statement_timeout%3D5000`` in the URL, or on the role.
_DEAD_PEER = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3,
              "tcp_user_timeout": 15_000}


def sqlalchemy_url(url: str) -> str:
    """Route ``postgresql://`` and ``postgres://`` to the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    raise LedgerError(f"not a Postgres URL: {sa.engine.make_url(url).render_as_string()}")


class PostgresLedger:
    def __init__(self, url: str, *, pool_size: int = 5, max_overflow: int = 10, connect_timeout: float = 5.0) -> None:
        self._engine = sa.create_engine(
            sqlalchemy_url(url),
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=True,
            pool_timeout=connect_timeout,
            connect_args={"connect_timeout": max(1, int(connect_timeout)), **_DEAD_PEER},
        )
        # Never keep the password in a field someone may print.
        self.url = self._engine.url.render_as_string(hide_password=True)
        self._schema_ready = False
        try:
            self._ensure_schema()
        except sa_exc.DBAPIError as exc:
            if _misconfigured(exc):
                self._engine.dispose()
                raise LedgerError(f"cannot open the Postgres ledger at {self.url}: {exc.orig or exc}") from exc
            # The server is down or restarting: a replica must still start. The schema is set
            # up on first use; until then writes fail and the records wait in the spool.
            log.warning("Postgres ledger at %s unreachable (%s); will retry on first use", self.url,
                        redact(str(exc.orig or exc)))
        except sa_exc.SQLAlchemyError as exc:
            self._engine.dispose()
            raise LedgerError(f"cannot open the Postgres ledger at {self.url}: {exc}") from exc
        except LedgerError:  # a schema newer than this release: the pool's connection is closed too
            self._engine.dispose()
            raise

    def _ensure_schema(self) -> None:
        with self._engine.begin() as conn:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SCHEMA_LOCK_KEY})
            _meta.create_all(conn)
            found = conn.execute(
                sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
            ).scalar_one_or_none()
            version = 0 if found is None else int(found)
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"the ledger at {self.url} has schema version {version}, newer than this "
                    f"atlas-middleware knows ({SCHEMA_VERSION}); upgrade atlas-middleware"
                )
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[v]:
                    conn.execute(sa.text(statement))
            if found is None:
                conn.execute(meta_table.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
            elif version < SCHEMA_VERSION:
                conn.execute(
                    meta_table.update().where(meta_table.c.key == "schema_version").values(value=str(SCHEMA_VERSION))
                )
        self._schema_ready = True

    def schema_version(self) -> int:
        with self._engine.connect() as conn:
            value = conn.execute(
                sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
            ).scalar_one()
        return int(value)

    def append(self, record: LedgerRecord) -> None:
        row = record.model_dump()
        row["tokens"] = json.dumps(record.tokens, sort_keys=True)
        values = {c: row[c] for c in _COLUMNS}
        for attempt in (1, 2):
            try:
                if not self._schema_ready:
                    self._ensure_schema()
                with self._engine.begin() as conn:
                    conn.execute(_INSERT, values)
                return
            except sa_exc.DBAPIError as exc:
                # A connection the server dropped (restart, failover): one retry on a fresh one.
                if attempt == 1 and exc.connection_invalidated:
                    continue
                raise LedgerError(f"ledger write failed: {exc.orig or exc}") from exc
            except sa_exc.SQLAlchemyError as exc:
                raise LedgerError(f"ledger write failed: {exc}") from exc

    def records(self, query: LedgerQuery | None = None) -> list[LedgerRecord]:
        q = query or LedgerQuery()
        cols = [calls_table.c[c] for c in _COLUMNS]
        stmt = sa.select(calls_table.c.seq, *cols).order_by(calls_table.c.seq)
        if q.since:
            stmt = stmt.where(calls_table.c.created_at >= _aware(q.since))
        if q.until:
            stmt = stmt.where(calls_table.c.created_at < _aware(q.until))
        if q.student_model:
            stmt = stmt.where(calls_table.c.student_model == q.student_model)
        if q.session_id:
            stmt = stmt.where(calls_table.c.session_id == q.session_id)
        if q.task_family:
            stmt = stmt.where(calls_table.c.task_family == q.task_family)
        if q.last:  # the newest ``last``, then oldest first again
            newest = stmt.order_by(None).order_by(calls_table.c.seq.desc()).limit(q.last).subquery()
            stmt = sa.select(*[newest.c[c] for c in _COLUMNS]).order_by(newest.c.seq)
        if q.limit:
            stmt = stmt.limit(q.limit)
        try:
            if not self._schema_ready:
                self._ensure_schema()
            with self._engine.connect() as conn:
                rows = conn.execute(stmt).mappings().all()
        except sa_exc.SQLAlchemyError as exc:
            raise LedgerError(f"ledger read failed: {exc}") from exc
        return [_record(dict(r)) for r in rows]

    def count(self) -> int:
        with self._engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(calls_table)).scalar_one())

    def close(self) -> None:
        self._engine.dispose()


_MISCONFIGURED = re.compile(
    r'password authentication failed|role "[^"]*" does not exist|database "[^"]*" does not exist'
    r"|no pg_hba\.conf entry|authentication failed"
)


def _misconfigured(exc: sa_exc.DBAPIError) -> bool:
    """Errors no retry will fix (bad credentials, no such database): raise at construction.

    Everything else (refused or cut connections, a server shutting down or starting up)
    is the server being away, which the spool is for.
    """
    sqlstate = getattr(exc.orig, "sqlstate", None) or ""
    # psycopg gives no SQLSTATE for errors while connecting: read the server's message.
    return sqlstate.startswith(("28", "3D")) or bool(_MISCONFIGURED.search(str(exc.orig or exc)))


def _aware(value: Any) -> Any:
    # The SQLite ledger compares ISO strings; here a naive datetime is taken as UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _record(row: dict[str, Any]) -> LedgerRecord:
    row["tokens"] = json.loads(row["tokens"])
    return LedgerRecord.model_validate(row)
