"""Text renderers of a ``Summary``: the terminal table, CSV and JSON."""

from __future__ import annotations

import csv
import io
import json

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ...usage import ROLES
from .flat import (
    COLUMNS,
    flat_row,
    fmt_cost,
    fmt_int,
    fmt_interval,
    fmt_ms,
    fmt_net_usd,
    fmt_rate,
    fmt_saved_per_call,
    fmt_saved_rate,
    fmt_saved_tokens,
    fmt_share,
    fmt_signed,
    fmt_times,
    fmt_usd,
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
        g.key, fmt_int(g.calls), fmt_net_usd(g.cost_saved_usd), fmt_times(g.cost_vs_alone), decisions,
        *(fmt_int(g.tokens[role].total) for role in ROLES),
        fmt_int(g.total_tokens), fmt_signed(g.tokens_saved), fmt_rate(g.saved_rate),
        fmt_saved_tokens(g.net_tokens), fmt_saved_rate(g.net_rate), fmt_cost(g.cost_usd, g.cost_unknown_calls),
        fmt_ms(g.teacher_latency_ms.p50), fmt_ms(g.teacher_latency_ms.p95),
        fmt_share(g.teacher_error_rate), fmt_share(g.error_rate),
    ]


# One sign convention in every table, chart and sentence: + = saved against the student
# alone, - = teaching cost more (SIGN_NOTE). The JSON and CSV keep the ledger's fields as
# defined (``net_tokens``: spent - the student alone) for programs that read them.
TABLE_HEADERS: tuple[str, ...] = (
    "group", "calls", "net $ (+ saved)", "cost / alone", "guided / baseline / alone", *(f"{r} tok" for r in ROLES),
    "total tok", "answer tok saved", "answer saved %", "net tok (+ saved)", "net tok %", "cost",
    "teacher p50 ms", "teacher p95 ms", "teacher err", "failed",
)
SIGN_NOTE = "Signs: + = saved against the student alone, - = teaching cost more."


FAMILY_HEADERS: tuple[str, ...] = (
    "task family", "calls", "net $ (+ saved)", "cost / alone", "taught", "taught %", "net tok (+ saved)", "net tok %",
    "net tok/call", "compared",
    "delivered better [95%]", "delivered worse [95%]", "teacher avoided", "gate skipped",
    "gate (P gain, P effect)", "budget out",
)


def fmt_gate(g: GroupSummary) -> str:
    if g.gate is None:
        return "n/a"
    return f"{g.gate.state} ({g.gate.p_gain:.2f}, {g.gate.p_effect:.2f})"


def family_row(g: GroupSummary) -> list[str]:
    return [g.key, fmt_int(g.calls), fmt_net_usd(g.cost_saved_usd), fmt_times(g.cost_vs_alone), fmt_int(g.taught), fmt_share(g.taught_share),
            fmt_saved_tokens(g.net_tokens), fmt_saved_rate(g.net_rate), fmt_saved_per_call(g.net_tokens_per_call),
            fmt_int(g.compared), fmt_interval(g.delivered_improvement), fmt_interval(g.delivered_degradation),
            fmt_int(g.teacher_calls_avoided), fmt_int(g.gate_skipped), fmt_gate(g), fmt_int(g.budget_exhausted)]


SHADOW_HEADERS: tuple[str, ...] = (
    "task family", "shadow calls", "sampled", "compared", "accuracy change [95%]", "better [95%]",
    "worse [95%]", "NDR unchecked [95%]", "$/call unchecked (+ saved)", "unchecked / alone",
    "$/call strict (+ saved)", "strict / alone", "busy",
)


def shadow_row(g: GroupSummary) -> list[str]:
    x = g.shadow
    assert x is not None
    change = ("n/a" if x.accuracy_change is None or x.accuracy_change_low is None or x.accuracy_change_high is None
              else f"{x.accuracy_change * 100:+.1f} pts [{x.accuracy_change_low * 100:+.1f}, "
                   f"{x.accuracy_change_high * 100:+.1f}]")
    ndr = ("n/a" if x.ndr is None or x.ndr_low is None or x.ndr_high is None
           else f"{x.ndr:.1%} [{x.ndr_low * 100:.1f}, {x.ndr_high * 100:.1f}]")
    return [g.key, fmt_int(x.calls), fmt_int(x.sampled), fmt_int(x.compared), change, fmt_interval(x.improved),
            fmt_interval(x.degraded), ndr, fmt_net_usd(x.unchecked_saved_usd_per_call), fmt_times(x.unchecked_vs_alone),
            fmt_net_usd(x.checked_saved_usd_per_call), fmt_times(x.checked_vs_alone), fmt_int(x.busy)]


SHADOW_NOTE = (
    "shadow: the student's own answer was delivered; on the sampled calls teaching ran in the background. "
    "accuracy change = better - worse share of the compared calls, had the guided answer been delivered "
    "(approximate 95% interval); better / worse = the guided answer judged better / worse than the student's "
    "own (95% Beta interval); NDR unchecked = calls no worse than the student alone had the guided answer "
    "been delivered without a comparison (under strict the judge keeps the student's own where it sees a "
    "degradation); $/call = the student alone's price - what teaching would have cost per call, unchecked "
    "(probe, teacher, guided answer) or under strict (everything), over the {n} sampled calls with every "
    "price known."
)


def shadow_rows(summary: Summary) -> list[Row]:
    """What teaching would have delivered, per task family and in all (``policy: shadow``)."""
    groups = [g for g in summary.families if g.shadow is not None]
    if not groups or summary.overall.shadow is None:
        return []
    return [*((shadow_row(g), "") for g in groups), (shadow_row(summary.overall), "bold")]


FAMILY_NOTE = (
    "compared = calls whose guided answer was compared with the student's own in an unbiased sample "
    "(every strict comparison, the audit sample); delivered better / worse = of those, the calls whose "
    "delivered answer was judged better / worse than the student's own, with the 95% Beta interval; "
    "teacher avoided = calls that reused earlier guidance; gate = the learned gate's state after "
    "replaying the last {n} records with the configured rule{mode}."
)


def headline(g: GroupSummary) -> str:
    """What teaching cost or saved, net, in one plain sentence: dollars where priced, tokens
    otherwise; the calls it is measured over; how many of their counterfactuals are estimates."""
    if g.cost_saved_usd is not None:
        alone = g.student_alone_cost_usd or 0.0
        share = f" ({abs(g.cost_saved_usd) / alone:.1%})" if alone else ""
        over = _over(g.dollar_calls, g.calls)
        estimated = g.dollar_calls_estimated
        basis = (f" {g.dollar_calls - estimated:,} measured against the call's own baseline, {estimated:,} "
                 "estimated from its family's measured baselines.")
        if g.cost_saved_usd < 0:
            return (f"Teaching cost {fmt_usd(-g.cost_saved_usd)}{share} more than the student alone would have, "
                    f"{over}.{basis}")
        return f"Teaching saved {fmt_usd(g.cost_saved_usd)}{share} against the student alone, {over}.{basis}"
    if g.measured_calls:
        share = "" if g.net_rate is None else f" ({abs(g.net_rate):.1%})"
        over = _over(g.measured_calls, g.calls)
        why = " (no prices known: tokens, all roles, against each call's own baseline)."
        if g.net_tokens > 0:
            return (f"Teaching cost {g.net_tokens:,} tokens{share} more than the student alone would have, "
                    f"{over}{why}")
        return f"Teaching saved {-g.net_tokens:,} tokens{share} against the student alone, {over}{why}"
    return (f"No net figure yet: none of the {g.calls:,} calls ran the student alone to compare with "
            "(a baseline), nor has its family's measured baselines with prices known.")


def _over(some: int, calls: int) -> str:
    return f"over {calls:,} calls" if some == calls else f"over {some:,} of {calls:,} calls"


def family_note(summary: Summary) -> str:
    mode = "" if summary.gate_mode in (None, "learned") else f" (gate is '{summary.gate_mode}': what it would decide)"
    return FAMILY_NOTE.format(n=summary.gate_records, mode=mode)


Row = tuple[list[str], str]
"""A table row's cells and its rich style."""
KEY_CHARS = 32
"""A row name longer than this is cut in the terminal, and written in full under the table."""


def column_chunks(widths: list[int], budget: int, overhead: int) -> list[list[int]]:
    """Split a table's columns into pieces that each fit ``budget``: every piece starts with
    column 0 (the row's name) and takes the next columns while ``width + overhead`` each fits.
    A piece always has one column besides the name, even where that alone is too wide."""
    chunks: list[list[int]] = []
    current, used = [0], widths[0] + overhead
    for i in range(1, len(widths)):
        if len(current) > 1 and used + widths[i] + overhead > budget:
            chunks.append(current)
            current, used = [0], widths[0] + overhead
        current.append(i)
        used += widths[i] + overhead
    chunks.append(current)
    return chunks


def fitted_tables(title: str, headers: tuple[str, ...], rows: list[Row], width: int) -> list[Table]:
    """The table as pieces that each fit ``width`` columns (a rich table with its box costs 3
    characters per column and 1 more), the row names repeated in each piece, so no cell is
    wrapped or cut and no line is longer than the terminal."""
    headers = tuple(_two_lines(h) for h in headers)
    widths = [max([*map(len, h.split("\n")), *(len(cells[i]) for cells, _ in rows)]) for i, h in enumerate(headers)]
    chunks = column_chunks(widths, width - 1, 3)
    tables = []
    for n, columns in enumerate(chunks):
        part = title if len(chunks) == 1 else f"{title} ({n + 1}/{len(chunks)})"
        table = Table(title=Text(part), show_lines=False)
        for i in columns:
            table.add_column(headers[i], justify="left" if i == 0 else "right", no_wrap=True)
        for cells, style in rows:
            table.add_row(*_plain([cells[i] for i in columns]), style=style or None)
        tables.append(table)
    return tables


def _plain(cells: list[str]) -> list[Text]:
    """Cells as plain text: a family tag or model name is the caller's text, and rich would
    read ``[red]`` in it as markup (or fail on ``[/]``)."""
    return [Text(cell) for cell in cells]


def _two_lines(header: str) -> str:
    """A long header on two lines, split at the space nearest its middle: a column is then as
    wide as its figures, not as its name."""
    spaces = [i for i, c in enumerate(header) if c == " "]
    if len(header) <= 10 or not spaces:
        return header
    # A bracket's note ("(+ saved)") stays whole on its line.
    at = header.index(" (") if " (" in header else min(spaces, key=lambda i: abs(i - len(header) / 2))
    return header[:at] + "\n" + header[at + 1:]


def _short_key(cells: list[str]) -> list[str]:
    key = cells[0]
    return [key if len(key) <= KEY_CHARS else key[: KEY_CHARS - 1] + "…", *cells[1:]]


def family_names(summary: Summary) -> list[str]:
    """The families whose name the table cannot show whole: a derived key with the masked
    start of its template (``GroupSummary.label``), or a tag cut at ``KEY_CHARS``."""
    out = []
    for g in summary.families:
        if g.label is not None:
            out.append(f"{g.key}: {g.label}")
        elif len(g.key) > KEY_CHARS:
            out.append(g.key)
    return out


def render_table(summary: Summary, width: int | None = None) -> str:
    """The terminal table, at most ``width`` characters a line (400 when not given: a file
    or a pipe keeps one row per group); a table too wide is split into pieces."""
    width = width or 400
    title = f"atlas-middleware savings - {summary.ledger}"
    if summary.filters:
        title += " (" + ", ".join(f"{k}={v}" for k, v in sorted(summary.filters.items())) + ")"
    console = Console(file=io.StringIO(), width=width, record=True, color_system=None)
    console.print(headline(summary.overall), markup=False)
    rows: list[Row] = [(_short_key(table_row(g)), "") for g in summary.groups]
    rows.append((table_row(summary.overall), "bold"))
    tables = fitted_tables(title, TABLE_HEADERS, rows, width)
    notes = []
    if summary.families:
        family = [(_short_key(family_row(g)), "") for g in summary.families]
        tables += fitted_tables("by task family", FAMILY_HEADERS, family, width)
        names = family_names(summary)
        if names:
            notes.append("task families: " + "; ".join(names))
        notes.append(family_note(summary))
    shadow = shadow_rows(summary)
    if shadow:
        assert summary.overall.shadow is not None
        tables += fitted_tables("shadow: what teaching would have delivered, by task family", SHADOW_HEADERS,
                                [(_short_key(cells), style) for cells, style in shadow], width)
        notes.append(SHADOW_NOTE.format(n=summary.overall.shadow.priced))
    for table in tables:
        console.print(table)
    notes += [
        f"{SIGN_NOTE} net $ = the student alone's price - everything spent (estimated where the call ran "
        "no baseline); cost / alone = what was spent / the student alone's price, over the same calls. "
        "answer tok saved = baseline completion - delivered completion (shorter answers); "
        "net tok = the student alone's tokens - all tokens spent (probe, teacher, judge included). "
        f"Token rates use the {summary.overall.measured_calls} of {summary.overall.calls} calls "
        "that measured a baseline.",
        f"pending spooled records: {summary.pending_spooled}"
        + (" (not yet in the ledger; they are written when it is reachable)" if summary.pending_spooled else ""),
    ]
    for note in notes:
        console.print(note, markup=False)
    return console.export_text()
