"""One self-contained HTML file: inline CSS, charts as base64 PNG (the per-family chart as
inline SVG), no script, no links out.

Nothing is fetched when the page opens, so it can be mailed, attached to a ticket or
opened offline; every number in it comes from the same ``Summary`` as the other formats.
"""

from __future__ import annotations

import base64
from html import escape

from ...usage import ROLES
from .charts import CHART_TITLES, family_svg, render_charts
from .flat import (
    fmt_cost,
    fmt_int,
    fmt_ms,
    fmt_net_usd,
    fmt_saved_rate,
    fmt_saved_tokens,
    fmt_share,
    fmt_times,
)
from .render import (
    FAMILY_HEADERS,
    SHADOW_HEADERS,
    SHADOW_NOTE,
    SIGN_NOTE,
    TABLE_HEADERS,
    column_chunks,
    family_note,
    family_row,
    headline,
    shadow_row,
    table_row,
)
from .summary import Summary

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.cards { display: flex; flex-wrap: wrap; gap: 1rem; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: .8rem 1.2rem; min-width: 9rem; }
.card .v { font-size: 1.4rem; font-weight: 600; } .card .k { color: #666; font-size: .85rem; }
table { border-collapse: collapse; font-size: .8rem; margin-bottom: 1rem; }
th, td { border-bottom: 1px solid #eee; padding: .3rem .5rem; text-align: right; white-space: nowrap; }
thead th { white-space: normal; vertical-align: bottom; }
table.groups td:first-child, table.families td:first-child, table.shadow td:first-child, tbody th { max-width: 14rem; white-space: normal; overflow-wrap: anywhere; font-weight: normal; }
.label { display: block; color: #666; font-size: .75rem; }
.wide { overflow-x: auto; }
th:first-child, td:first-child { text-align: left; }
tr.total td { font-weight: 600; border-top: 2px solid #999; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 1rem; }
.charts img { width: 100%; border: 1px solid #eee; }
.note { color: #555; font-size: .85rem; }
.headline { font-size: 1.1rem; font-weight: 600; }
.family-chart { max-width: 100%; height: auto; border: 1px solid #eee; }
"""


def _cards(s: Summary) -> str:
    """The net figures first, every signed one + = saved (``SIGN_NOTE``); how much shorter
    the delivered answers were is in the table, not beside the net figure it is not."""
    o = s.overall
    items = [
        ("net dollars (+ saved)", fmt_net_usd(o.cost_saved_usd)),
        ("cost / student alone", fmt_times(o.cost_vs_alone)),
        ("calls", fmt_int(o.calls)),
        ("net tokens (+ saved)", f"{fmt_saved_tokens(o.net_tokens)} ({fmt_saved_rate(o.net_rate)})"),
        ("cost", fmt_cost(o.cost_usd, o.cost_unknown_calls)),
        ("teacher p95 ms", fmt_ms(o.teacher_latency_ms.p95)),
        ("teacher errors", fmt_share(o.teacher_error_rate)),
        ("pending spooled", fmt_int(s.pending_spooled)),
    ]
    return "".join(
        f'<div class="card" data-k="{escape(k)}"><div class="v">{escape(v)}</div>'
        f'<div class="k">{escape(k)}</div></div>'
        for k, v in items
    )


# A laptop's 1366 CSS pixels less the page's margins and a scrollbar, in the pixels a table
# cell's character takes at the table's font (about 7.5 at 0.8rem, a little over for safety):
# a table wider than that is split into pieces, each repeating the row names (``column_chunks``).
_PAGE_PX, _CHAR_PX, _CELL_PX, _NAME_CHARS = 1150, 8, 16, 24


def _tables(cls: str, attr: str, headers: tuple[str, ...], rows: list[tuple[str, list[str], str]],
            names: dict[str, str] | None = None) -> str:
    """``rows``: (the row's key, its cells, its class). A header wraps at its spaces, so its
    longest word counts; the row name wraps after ``_NAME_CHARS``. ``names``: a readable
    label shown under a row's key. The first piece's key cell is a ``td``, a later piece's a
    ``th``, so each row's ``td`` cells read in order are the row once."""
    widths = [max([*(len(w) for w in h.split()), *(len(cells[i]) for _, cells, _ in rows)])
              for i, h in enumerate(headers)]
    widths[0] = min(widths[0], _NAME_CHARS)
    out = []
    for n, columns in enumerate(column_chunks([w * _CHAR_PX for w in widths], _PAGE_PX, _CELL_PX)):
        head = "".join(f"<th>{escape(headers[i])}</th>" for i in columns)
        body = []
        for key, cells, row_cls in rows:
            label = (names or {}).get(key)
            name = escape(cells[0]) + ("" if label is None else f'<span class="label">{escape(label)}</span>')
            first = f"<td>{name}</td>" if n == 0 else f'<th scope="row">{name}</th>'
            rest = "".join(f"<td>{escape(cells[i])}</td>" for i in columns[1:])
            klass = f' class="{row_cls}"' if row_cls else ""
            body.append(f'<tr{klass} {attr}="{escape(key)}">{first}{rest}</tr>')
        out.append(f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>')
    return f'<div class="wide">{"".join(out)}</div>'


def _table(s: Summary) -> str:
    rows = [(g.key, table_row(g), "") for g in s.groups]
    rows.append(("all", table_row(s.overall), "total"))
    return _tables("groups", "data-group", TABLE_HEADERS, rows, {g.key: g.label for g in s.groups if g.label})


def _families(s: Summary) -> str:
    if not s.families:
        return ""
    labels = {g.key: g.label for g in s.families if g.label is not None}
    table = _tables("families", "data-family", FAMILY_HEADERS, [(g.key, family_row(g), "") for g in s.families],
                    labels)
    return (f"<h2>By task family</h2><figure>{family_svg(s)}</figure>"
            f'{table}<p class="note">{escape(family_note(s))}</p>')


def _shadow(s: Summary) -> str:
    """``policy: shadow``: what teaching would have delivered, per family and in all."""
    groups = [g for g in s.families if g.shadow is not None]
    if not groups or s.overall.shadow is None:
        return ""
    rows = [(g.key, shadow_row(g), "") for g in groups]
    rows.append(("all", shadow_row(s.overall), "total"))
    return (f"<h2>Shadow: what teaching would have delivered</h2>{_tables('shadow', 'data-shadow', SHADOW_HEADERS, rows)}"
            f'<p class="note">{escape(SHADOW_NOTE.format(n=s.overall.shadow.priced))}</p>')


def _top(s: Summary) -> str:
    head = "<tr><th>call</th><th>when (UTC)</th><th>model</th><th>decision</th><th>tokens</th><th>net tok (+ saved)</th><th>cost</th></tr>"
    rows = "".join(
        f"<tr><td>{escape(c.call_id)}</td><td>{escape(c.created_at.isoformat(timespec='seconds'))}</td>"
        f"<td>{escape(c.student_model)}</td><td>{escape(c.decision)}</td><td>{fmt_int(c.total_tokens)}</td>"
        f"<td>{'n/a' if c.net_tokens is None else fmt_saved_tokens(c.net_tokens)}</td>"
        f"<td>{escape(fmt_cost(c.cost_usd, 0))}</td></tr>"
        for c in s.top_calls
    )
    return f"<table>{head}{rows}</table>"


def render_html(summary: Summary, charts: dict[str, bytes] | None = None) -> str:
    charts = render_charts(summary) if charts is None else charts
    imgs = "".join(
        f'<figure><img alt="{escape(CHART_TITLES.get(name, name))}" data-chart="{escape(name)}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}"></figure>'
        for name, png in charts.items()
    )
    filters = ", ".join(f"{k}={v}" for k, v in sorted(summary.filters.items())) or "none"
    roles = ", ".join(ROLES)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>atlas-middleware savings report</title><style>{_CSS}</style></head>
<body>
<h1>atlas-middleware savings report</h1>
<p class="note">Ledger <code>{escape(summary.ledger)}</code>; filters: {escape(filters)};
grouped by {escape(summary.group_by or "nothing")}.</p>
<p class="headline" data-headline="net-dollars">{escape(headline(summary.overall))}</p>
<div class="cards">{_cards(summary)}</div>
<h2>Charts</h2><div class="charts">{imgs}</div>
<h2>By {escape(summary.group_by or "total")}</h2>{_table(summary)}
<p class="note">{escape(SIGN_NOTE)} Net $ = the student alone's price - everything spent (estimated
from the family's measured baselines where a call ran none); cost / alone = what was spent / the student
alone's price, over the same calls. Tokens by role: {escape(roles)}. Answer tok saved = baseline completion -
delivered completion (shorter answers, not net of what teaching spent). Net tok = the student alone's tokens -
everything spent, probe, teacher and judge included. Token rates use the {summary.overall.measured_calls} of
{summary.overall.calls} calls that measured a baseline.</p>
{_families(summary)}
{_shadow(summary)}
<h2>The calls that cost most</h2>{_top(summary)}
</body></html>
"""
