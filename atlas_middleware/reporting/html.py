"""One self-contained HTML file: inline CSS, charts as base64 PNG (the per-family chart as
inline SVG), no script, no links out.

Nothing is fetched when the page opens, so it can be mailed, attached to a ticket or
opened offline; every number in it comes from the same ``Summary`` as the other formats.
"""

from __future__ import annotations

import base64
from html import escape

from ..usage import ROLES
from .charts import CHART_TITLES, family_svg, render_charts
from .flat import fmt_cost, fmt_int, fmt_ms, fmt_rate, fmt_share, fmt_signed
from .render import FAMILY_HEADERS, TABLE_HEADERS, family_note, family_row, table_row
from .summary import Summary

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
.cards { display: flex; flex-wrap: wrap; gap: 1rem; }
.card { border: 1px solid #ddd; border-radius: 8px; padding: .8rem 1.2rem; min-width: 9rem; }
.card .v { font-size: 1.4rem; font-weight: 600; } .card .k { color: #666; font-size: .85rem; }
table { border-collapse: collapse; font-size: .85rem; }
th, td { border-bottom: 1px solid #eee; padding: .3rem .6rem; text-align: right; white-space: nowrap; }
.wide { overflow-x: auto; }
th:first-child, td:first-child { text-align: left; }
tr.total td { font-weight: 600; border-top: 2px solid #999; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(560px, 1fr)); gap: 1rem; }
.charts img { width: 100%; border: 1px solid #eee; }
.note { color: #555; font-size: .85rem; }
.family-chart { max-width: 100%; height: auto; border: 1px solid #eee; }
"""


def _cards(s: Summary) -> str:
    o = s.overall
    items = [
        ("calls", fmt_int(o.calls)),
        ("tokens saved", f"{fmt_signed(o.tokens_saved)} ({fmt_rate(o.saved_rate)})"),
        ("net tokens", f"{fmt_signed(o.net_tokens)} ({fmt_rate(o.net_rate)})"),
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


def _table(s: Summary) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in TABLE_HEADERS)
    rows = [
        f'<tr data-group="{escape(g.key)}">' + "".join(f"<td>{escape(c)}</td>" for c in table_row(g)) + "</tr>"
        for g in s.groups
    ]
    rows.append('<tr class="total" data-group="all">'
                + "".join(f"<td>{escape(c)}</td>" for c in table_row(s.overall)) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _families(s: Summary) -> str:
    if not s.families:
        return ""
    head = "".join(f"<th>{escape(h)}</th>" for h in FAMILY_HEADERS)
    rows = "".join(
        f'<tr data-family="{escape(g.key)}">' + "".join(f"<td>{escape(c)}</td>" for c in family_row(g)) + "</tr>"
        for g in s.families
    )
    return (f"<h2>By task family</h2><figure>{family_svg(s)}</figure>"
            f'<div class="wide"><table class="families"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody>'
            f'</table></div><p class="note">{escape(family_note(s))}</p>')


def _top(s: Summary) -> str:
    head = "<tr><th>call</th><th>when (UTC)</th><th>model</th><th>decision</th><th>tokens</th><th>net</th><th>cost</th></tr>"
    rows = "".join(
        f"<tr><td>{escape(c.call_id)}</td><td>{escape(c.created_at.isoformat(timespec='seconds'))}</td>"
        f"<td>{escape(c.student_model)}</td><td>{escape(c.decision)}</td><td>{fmt_int(c.total_tokens)}</td>"
        f"<td>{'n/a' if c.net_tokens is None else fmt_signed(c.net_tokens)}</td>"
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
<div class="cards">{_cards(summary)}</div>
<h2>Charts</h2><div class="charts">{imgs}</div>
<h2>By {escape(summary.group_by or "total")}</h2><div class="wide">{_table(summary)}</div>
<p class="note">Tokens by role: {escape(roles)}. Saved = baseline completion - delivered completion
(positive: shorter answers). Net = everything spent - the student alone (negative: saved). Rates use
the {summary.overall.measured_calls} of {summary.overall.calls} calls that measured a baseline.</p>
{_families(summary)}
<h2>The calls that cost most</h2>{_top(summary)}
</body></html>
"""
