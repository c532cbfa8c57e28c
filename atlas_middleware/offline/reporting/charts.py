"""Charts of a ``Summary``: PNG with matplotlib (extra ``report``), and the per-family chart
as inline SVG written by hand.

Figures are drawn on an explicit Agg canvas (``matplotlib.figure.Figure``, never pyplot),
so rendering needs no display, leaves the process-wide backend alone and is thread-safe.

The per-family chart (``family_svg``, for the HTML page: no matplotlib, no script) has one
row per task family, the most called first: a dot for the share of compared calls whose
delivered answer was judged better than the student's own (green) and one for worse (red),
each on the line of its 95% interval, on a shared 0-100% axis; the gate's state is the
colour of the badge before the family's name. Hovering a dot shows its exact figures (an
SVG ``<title>``). Every number comes from the ``Summary``; nothing is computed but positions.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import MissingExtraError
from ...usage import ROLES
from .summary import DECISIONS, GroupSummary, Rate, Summary

if TYPE_CHECKING:
    from matplotlib.axes import Axes

CHART_TITLES: dict[str, str] = {
    "dollars": "Net dollars against the student alone per day (+ = saved, - = teaching cost more)",
    "savings": "Tokens saved against the student alone per day (+ = saved, - = teaching cost more)",
    "decisions": "What was delivered",
    "tokens_by_role": "Tokens by role",
    "latency": "Latency distribution",
    "top_calls": "The calls that cost most (tokens, all roles)",
}


def _figure() -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise MissingExtraError("report charts", "report", "matplotlib") from exc
    fig = Figure(figsize=(8, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _savings(ax: Axes, s: Summary) -> None:
    days = [g.key for g in s.daily]
    x = list(range(len(days)))
    # One sign convention with every other figure: + = saved against the student alone.
    ax.bar([i - 0.2 for i in x], [-g.net_tokens for g in s.daily], width=0.4,
           label="net tokens, everything teaching spent included", color="#264653")
    ax.bar([i + 0.2 for i in x], [g.tokens_saved for g in s.daily], width=0.4,
           label="answer tokens only (shorter answers)", color="#8ab17d")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, days, rotation=30, ha="right")
    ax.set_ylabel("tokens")
    ax.legend(loc="best", fontsize="small")


def _dollars(ax: Axes, s: Summary) -> None:
    """Net dollars per day, the measured part and the estimated part stacked on it."""
    days = [g.key for g in s.daily]
    x = list(range(len(days)))
    estimated = [g.cost_saved_estimated_usd or 0.0 for g in s.daily]
    measured = [(g.cost_saved_usd or 0.0) - e for g, e in zip(s.daily, estimated, strict=True)]
    ax.bar(x, measured, label="measured (the call's own baseline)", color="#264653")
    ax.bar(x, estimated, bottom=measured, label="estimated (the family's baselines)", color="#8ab17d")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, days, rotation=30, ha="right")
    ax.set_ylabel("US dollars")
    ax.legend(loc="best", fontsize="small")


def _decisions(ax: Axes, s: Summary) -> None:
    counts = [s.overall.decisions.get(d, 0) for d in DECISIONS]
    bars = ax.bar(list(DECISIONS), counts, color=["#2a9d8f", "#e9c46a", "#8d99ae"])
    ax.bar_label(bars)
    ax.set_ylabel("calls")


def _tokens_by_role(ax: Axes, s: Summary) -> None:
    prompt = [s.overall.tokens[r].prompt for r in ROLES]
    completion = [s.overall.tokens[r].completion for r in ROLES]
    ax.bar(list(ROLES), prompt, label="prompt")
    ax.bar(list(ROLES), completion, bottom=prompt, label="completion")
    ax.set_ylabel("tokens")
    ax.legend(fontsize="small")


def _latency(ax: Axes, s: Summary) -> None:
    if s.latencies_ms:
        ax.hist(s.latencies_ms, bins=20, alpha=0.6, label="whole call")
    if s.teacher_latencies_ms:
        ax.hist(s.teacher_latencies_ms, bins=20, alpha=0.6, label="teacher")
    ax.set_xlabel("milliseconds")
    ax.set_ylabel("calls")
    if s.latencies_ms or s.teacher_latencies_ms:
        ax.legend(fontsize="small")


def _top_calls(ax: Axes, s: Summary) -> None:
    calls = list(reversed(s.top_calls))
    # Positions, not labels, on the y axis: two calls may share a label and must not merge.
    # A long model name (openrouter/meta-llama/...) would squeeze the bars off the figure.
    labels = [f"{c.call_id[:8]} {c.created_at:%m-%d %H:%M} {_short(c.student_model, 24)} ({c.decision})" for c in calls]
    ax.barh(range(len(calls)), [c.total_tokens for c in calls])
    ax.set_yticks(range(len(calls)), labels)
    ax.set_xlabel("tokens")
    ax.tick_params(axis="y", labelsize="small")


_DRAW: dict[str, Callable[[Axes, Summary], None]] = {
    "dollars": _dollars,
    "savings": _savings,
    "decisions": _decisions,
    "tokens_by_role": _tokens_by_role,
    "latency": _latency,
    "top_calls": _top_calls,
}


def render_charts(summary: Summary) -> dict[str, bytes]:
    """Chart name -> PNG bytes, in display order."""
    out: dict[str, bytes] = {}
    for name, draw in _DRAW.items():
        fig = _figure()
        ax = fig.add_subplot()
        ax.set_title(CHART_TITLES[name])
        if summary.overall.calls == 0:
            ax.text(0.5, 0.5, "no calls in this range", ha="center", va="center", transform=ax.transAxes)
        else:
            draw(ax, summary)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        out[name] = buf.getvalue()
    return out


def write_charts(charts: dict[str, bytes], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, png in charts.items():
        path = folder / f"{name}.png"
        path.write_bytes(png)
        paths.append(path)
    return paths


# -- the per-family chart: inline SVG ------------------------------------------------------

GATE_COLOURS: dict[str, str] = {"open": "#2a9d8f", "learning": "#e9c46a", "closed": "#e76f51"}
NO_GATE = "#8d99ae"
BETTER, WORSE = "#1b7f3b", "#c0392b"
TOP = 12

_W, _LABEL_W, _PLOT_L, _PLOT_R = 860, 300, 320, 830
_ROW_H, _TOP_Y = 46, 84


def _x(share: float) -> float:
    return _PLOT_L + share * (_PLOT_R - _PLOT_L)


def _short(key: str, n: int = 34) -> str:
    return key if len(key) <= n else key[: n - 1] + "…"


def _lane(y: float, r: Rate, colour: str, what: str, family: str) -> str:
    if r.rate is None or r.low is None or r.high is None:
        return ""
    tip = (f"{family}: delivered {what} than the student alone in {r.count} compared calls, "
           f"{r.rate:.1%} (95% interval {r.low:.1%} to {r.high:.1%})")
    return (f'<g class="lane" data-what="{what}"><title>{escape(tip)}</title>'
            f'<line x1="{_x(r.low):.1f}" x2="{_x(r.high):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="{colour}" stroke-width="3" stroke-linecap="round" opacity="0.55"/>'
            f'<circle cx="{_x(r.rate):.1f}" cy="{y:.1f}" r="5" fill="{colour}"/></g>')


def _row(i: int, g: GroupSummary) -> str:
    y0 = _TOP_Y + i * _ROW_H
    state = g.gate.state if g.gate is not None else None
    colour = GATE_COLOURS.get(state or "", NO_GATE)
    gate_text = f"gate {state}" if state else "no gate view"
    detail = f"{g.calls:,} calls · {g.compared:,} compared · {gate_text}"
    if g.teacher_calls_avoided:
        detail += f" · {g.teacher_calls_avoided:,} reused"
    parts = [
        f'<g class="family" data-family="{escape(g.key)}" data-gate="{escape(state or "")}">',
        f'<rect x="8" y="{y0 + 8:.1f}" width="12" height="12" rx="3" fill="{colour}"><title>{escape(gate_text)}</title></rect>',
        # A derived family reads as the masked start of its template where the ledger kept texts.
        f'<text x="28" y="{y0 + 18:.1f}" font-size="13" fill="#222"><title>{escape(g.key)}</title>'
        f'{escape(_short(g.label or g.key))}</text>',
        f'<text x="28" y="{y0 + 34:.1f}" font-size="11" fill="#666">{escape(detail)}</text>',
    ]
    if g.compared == 0:
        parts.append(f'<text x="{_PLOT_L + 6}" y="{y0 + 26:.1f}" font-size="11" fill="#888">'
                     "no compared calls: nothing measured yet</text>")
    else:
        parts.append(_lane(y0 + 14, g.delivered_improvement, BETTER, "better", g.key))
        parts.append(_lane(y0 + 30, g.delivered_degradation, WORSE, "worse", g.key))
    parts.append(f'<line x1="8" x2="{_PLOT_R}" y1="{y0 + _ROW_H - 2:.1f}" y2="{y0 + _ROW_H - 2:.1f}" '
                 'stroke="#f0f0f0"/></g>')
    return "".join(parts)


def _legend() -> str:
    items = [
        f'<circle cx="14" cy="16" r="5" fill="{BETTER}"/>'
        '<text x="24" y="20" font-size="12">delivered answer judged better than the student alone</text>',
        f'<circle cx="384" cy="16" r="5" fill="{WORSE}"/>'
        '<text x="394" y="20" font-size="12">judged worse</text>',
        '<line x1="500" x2="530" y1="16" y2="16" stroke="#888" stroke-width="3" stroke-linecap="round"/>'
        '<text x="538" y="20" font-size="12">95% interval</text>',
        '<text x="8" y="42" font-size="12">badge: the learned gate</text>',
    ]
    x = 160
    for state, colour in GATE_COLOURS.items():
        items.append(f'<rect x="{x}" y="32" width="12" height="12" rx="3" fill="{colour}"/>'
                     f'<text x="{x + 16}" y="42" font-size="12">{state}</text>')
        x += 16 + 8 * len(state) + 16
    return "".join(items)


def _axis(bottom: float) -> str:
    out = []
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        x = _x(tick)
        dashed = "" if tick in (0.0, 1.0) else ' stroke-dasharray="3 3"'
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{_TOP_Y - 6}" y2="{bottom:.1f}" stroke="#ddd"{dashed}/>')
        out.append(f'<text x="{x:.1f}" y="{bottom + 16:.1f}" font-size="11" text-anchor="middle" '
                   f'fill="#555">{tick:.0%}</text>')
    out.append(f'<text x="{(_PLOT_L + _PLOT_R) / 2:.1f}" y="{_TOP_Y - 14}" font-size="11" text-anchor="middle" '
               'fill="#555">share of the compared calls</text>')
    return "".join(out)


def shown_families(summary: Summary, top: int = TOP) -> list[GroupSummary]:
    """The families the chart draws: the most called ``top``, ties by key."""
    return sorted(summary.families, key=lambda g: (-g.calls, g.key))[:top]


def family_svg(summary: Summary, top: int = TOP) -> str:
    """The chart as an ``<svg>`` element (empty string when there are no families)."""
    families = shown_families(summary, top)
    if not families:
        return ""
    bottom = _TOP_Y + len(families) * _ROW_H
    height = bottom + 28
    label = (f"Per task family, the share of compared calls whose delivered answer was judged better "
             f"or worse than the student alone, with 95% intervals; {len(families)} of "
             f"{len(summary.families)} families, the most called first")
    rows = "".join(_row(i, g) for i, g in enumerate(families))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="family-chart" role="img" '
            f'aria-label="{escape(label)}" viewBox="0 0 {_W} {height}" width="{_W}" height="{height}" '
            f'font-family="system-ui, sans-serif"><title>{escape(label)}</title>'
            f'<rect width="{_W}" height="{height}" fill="#fff"/>{_legend()}{_axis(bottom)}{rows}</svg>')
