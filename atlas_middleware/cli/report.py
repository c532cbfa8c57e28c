"""``atlas-middleware report``: savings figures from the ledger, as a table, CSV, JSON or HTML."""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer

from ..config import AtlasConfig
from ..errors import AtlasError
from ..ledger import LedgerQuery, LedgerRecord, open_ledger
from ..ledger.spool import SpooledWriter
from ..offline.reporting import FORMATS, GROUP_BY, render_csv, render_json, render_table, summarize
from .app import app
from .options import ConfigOpt, LedgerOpt

_RELATIVE = re.compile(r"^(\d+)([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """ISO date or datetime (naive = UTC), or a span back from now: ``30m``, ``12h``, ``7d``, ``2w``."""
    now = now or datetime.now(UTC)
    m = _RELATIVE.match(text.strip())
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not an ISO date/datetime or a span like 7d") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


@app.command()
def report(
    ledger: LedgerOpt = None,
    config: ConfigOpt = None,
    since: Annotated[str | None, typer.Option("--since", help="From this time on: ISO date/datetime (UTC) or 7d, 12h, ...")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Before this time (exclusive); same forms as --since.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", help="Only calls to this student model, with or without its provider prefix (gpt-4o-mini "
        "matches openai/gpt-4o-mini).")] = None,
    session: Annotated[str | None, typer.Option("--session", help="Only calls of this session id.")] = None,
    family: Annotated[str | None, typer.Option("--family", help="Only calls of this task family (t:... or f:...).")] = None,
    group_by: Annotated[str | None, typer.Option("--group-by", help="day | model | session | decision | family.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | csv | json | html.")] = "table",
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file instead of stdout (needed for html).")] = None,
    charts: Annotated[Path | None, typer.Option("--charts", help="Also write the charts as PNG files into this folder.")] = None,
    spool: Annotated[str | None, typer.Option("--spool", help="The spool file to count (and --flush). (env ATLAS_SPOOL)")] = None,
    flush: Annotated[bool, typer.Option("--flush", help="First write spooled records to the ledger.")] = False,
    top: Annotated[int, typer.Option("--top", min=0, help="How many of the costliest calls to list.")] = 10,
) -> None:
    """Calls, decisions, tokens by role, tokens saved and net tokens, cost, teacher latency and errors;
    per task family, what teaching delivered (with 95% intervals), reuse and the learned gate's state."""
    fmt = "json" if as_json else fmt.lower()
    if fmt not in FORMATS:
        raise typer.BadParameter(f"--format must be one of {', '.join(FORMATS)}")
    if group_by is not None and group_by not in GROUP_BY:
        raise typer.BadParameter(f"--group-by must be one of {', '.join(GROUP_BY)}")
    if fmt == "html" and out is None:
        raise typer.BadParameter("--format html needs --out PATH (the page is one self-contained file)")
    query = LedgerQuery(
        since=parse_when(since) if since else None, until=parse_when(until) if until else None,
        session_id=session, task_family=family,
    )
    filters = {k: v for k, v in {"since": since, "until": until, "model": model, "session": session,
                                 "family": family}.items() if v}
    try:
        cfg = AtlasConfig.load(str(config) if config else None, ledger=ledger, spool=spool)
        store = open_ledger(cfg.ledger_url())
        try:
            writer = SpooledWriter.for_ledger(store, cfg.ledger.spool)
            if flush:
                typer.echo(f"flushed {writer.flush()} spooled record(s) to the ledger", err=True)
            records = _of_model(store.records(query), model)
            summary = summarize(
                records, ledger=store.url, group_by=group_by,
                filters=filters, pending_spooled=writer.pending(), top=top,
                gate_rule=cfg.gate.rule(), audit_rate=cfg.audit_rate, gate_records=cfg.gate.rebuild,
                gate_mode=cfg.gate.mode,
            )
        finally:
            store.close()
        text = _render(summary, fmt, charts, _terminal_width() if out is None else None)
    except AtlasError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {out}", err=True)


def model_matches(wanted: str, model: str) -> bool:
    """The same model, or one named with a provider prefix the other leaves out:
    ``gpt-4o-mini`` and ``openai/gpt-4o-mini`` (LiteLLM's names) are one model here."""
    return wanted == model or model.endswith("/" + wanted) or wanted.endswith("/" + model)


def _of_model(records: list[LedgerRecord], model: str | None) -> list[LedgerRecord]:
    """The records of ``model`` (``model_matches``); when none match, a hint on stderr naming
    the models the ledger has in the other filters' range, so a misspelt name is not read
    as "no calls"."""
    if model is None:
        return records
    matched = [r for r in records if model_matches(model, r.student_model)]
    if not matched:
        models = sorted({r.student_model for r in records})
        have = f"the ledger has: {', '.join(models)}" if models else "the ledger has no calls in this range"
        typer.echo(f"hint: no calls to model {model!r}; {have}", err=True)
    return matched


def _terminal_width() -> int:
    """The terminal's width (``COLUMNS`` first, as ``shutil`` reads it); 400 when stdout is
    not a terminal, so a file or a pipe gets one row per group."""
    return shutil.get_terminal_size(fallback=(400, 24)).columns


def _render(summary: object, fmt: str, charts_dir: Path | None, width: int | None = None) -> str:
    from ..offline.reporting import Summary

    assert isinstance(summary, Summary)
    pngs = None
    if fmt == "html" or charts_dir is not None:
        from ..offline.reporting.charts import render_charts, write_charts

        pngs = render_charts(summary)
        if charts_dir is not None:
            for path in write_charts(pngs, charts_dir):
                typer.echo(f"wrote {path}", err=True)
    if fmt == "html":
        from ..offline.reporting.html import render_html

        return render_html(summary, pngs)
    if fmt == "table":
        return render_table(summary, width)
    renderers = {"csv": render_csv, "json": render_json}
    return renderers[fmt](summary)
