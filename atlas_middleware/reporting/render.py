"""Text renderers of a ``Summary``: the terminal table, CSV and JSON."""

from __future__ import annotations

import csv
import io
import json

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..usage import ROLES
from .flat import (
    COLUMNS,
    flat_row,
    fmt_cost,
    fmt_int,
    fmt_interval,
    fmt_ms,
    fmt_rate,
    fmt_share,
    fmt_signed,
    fmt_tokens,
)
from .summary import GroupSummary, Summary

FORMATS = ("table", "csv", "json", "html")


def render_json(summary: Summary) -> str:
    return json.dumps(summary.model_dump(mode="json"), indent=2, sort_keys=True) + "\n"


def render_csv(summary: Summary) -> str:
    """One row per group, then the ``all`` row (only ``all`` without ``--group-by``)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for g in [*summary.groups, summary.overall]:
        writer.writerow({k: "" if v is None else v for k, v in flat_row(g).items()})
    return out.getvalue()


def table_row(g: GroupSummary) -> list[str]:
    decisions = " / ".join(fmt_int(g.decisions.get(d, 0)) for d in ("guided", "baseline", "student_only"))
    return [
        g.key, fmt_int(g.calls), decisions,
        *(fmt_int(g.tokens[role].total) for role in ROLES),
        fmt_int(g.total_tokens), fmt_signed(g.tokens_saved), fmt_rate(g.saved_rate),
        fmt_signed(g.net_tokens), fmt_rate(g.net_rate), fmt_cost(g.cost_usd, g.cost_unknown_calls),
        fmt_ms(g.teacher_latency_ms.p50), fmt_ms(g.teacher_latency_ms.p95),
        fmt_share(g.teacher_error_rate), fmt_share(g.error_rate),
    ]


TABLE_HEADERS: tuple[str, ...] = (
    "group", "calls", "guided / baseline / alone", *(f"{r} tok" for r in ROLES), "total tok",
    "saved", "saved %", "net", "net %", "cost", "teacher p50 ms", "teacher p95 ms",
    "teacher err", "failed",
)


FAMILY_HEADERS: tuple[str, ...] = (
    "task family", "calls", "taught", "taught %", "net", "net %", "net/call", "compared",
    "delivered better [95%]", "delivered worse [95%]", "teacher avoided", "gate skipped",
    "gate (P gain, P effect)",
)


def fmt_gate(g: GroupSummary) -> str:
    if g.gate is None:
        return "n/a"
    return f"{g.gate.state} ({g.gate.p_gain:.2f}, {g.gate.p_effect:.2f})"


def family_row(g: GroupSummary) -> list[str]:
    return [g.key, fmt_int(g.calls), fmt_int(g.taught), fmt_share(g.taught_share),
            fmt_signed(g.net_tokens), fmt_rate(g.net_rate), fmt_tokens(g.net_tokens_per_call),
            fmt_int(g.compared), fmt_interval(g.delivered_improvement), fmt_interval(g.delivered_degradation),
            fmt_int(g.teacher_calls_avoided), fmt_int(g.gate_skipped), fmt_gate(g)]


FAMILY_NOTE = (
    "compared = calls whose guided answer was compared with the student's own in an unbiased sample "
    "(every strict comparison, the audit sample); delivered better / worse = of those, the calls whose "
    "delivered answer was judged better / worse than the student's own, with the 95% Beta interval; "
    "teacher avoided = calls that reused earlier guidance; gate = the learned gate's state after "
    "replaying the last {n} records with the configured rule{mode}."
)


def family_note(summary: Summary) -> str:
    mode = "" if summary.gate_mode in (None, "learned") else f" (gate is '{summary.gate_mode}': what it would decide)"
    return FAMILY_NOTE.format(n=summary.gate_records, mode=mode)


def family_table(summary: Summary) -> Table:
    """What teaching did per task family (``--group-by family``: every figure)."""
    table = Table(title="by task family", show_lines=False)
    for i, header in enumerate(FAMILY_HEADERS):
        table.add_column(header, justify="left" if i == 0 else "right", no_wrap=True)
    for g in summary.families:
        table.add_row(*_plain(family_row(g)))
    return table


def _plain(cells: list[str]) -> list[Text]:
    """Cells as plain text: a family tag or model name is the caller's text, and rich would
    read ``[red]`` in it as markup (or fail on ``[/]``)."""
    return [Text(cell) for cell in cells]


def render_table(summary: Summary, width: int | None = None) -> str:
    title = f"atlas-middleware savings - {summary.ledger}"
    if summary.filters:
        title += " (" + ", ".join(f"{k}={v}" for k, v in sorted(summary.filters.items())) + ")"
    table = Table(title=Text(title), show_lines=False)
    for i, header in enumerate(TABLE_HEADERS):
        table.add_column(header, justify="left" if i == 0 else "right", no_wrap=True)
    for g in summary.groups:
        table.add_row(*_plain(table_row(g)))
    table.add_row(*_plain(table_row(summary.overall)), style="bold", end_section=False)
    console = Console(file=io.StringIO(), width=width or 400, record=True, color_system=None)
    console.print(table)
    notes = []
    if summary.families:
        console.print(family_table(summary))
        notes.append(family_note(summary))
    notes += [
        "saved = baseline completion - delivered completion (positive: shorter answers); "
        "net = all tokens spent - student alone (negative: the middleware saved tokens). "
        f"Rates use the {summary.overall.measured_calls} of {summary.overall.calls} calls "
        "that measured a baseline.",
        f"pending spooled records: {summary.pending_spooled}"
        + (" (not yet in the ledger; they are written when it is reachable)" if summary.pending_spooled else ""),
    ]
    for note in notes:
        console.print(note, markup=False)
    return console.export_text()
