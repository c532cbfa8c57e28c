"""PNG charts of a ``Summary`` with matplotlib (extra ``report``).

Figures are drawn on an explicit Agg canvas (``matplotlib.figure.Figure``, never pyplot),
so rendering needs no display, leaves the process-wide backend alone and is thread-safe.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import MissingExtraError
from ..usage import ROLES
from .summary import DECISIONS, Summary

if TYPE_CHECKING:
    from matplotlib.axes import Axes

CHART_TITLES: dict[str, str] = {
    "savings": "Tokens saved and net tokens per day",
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
    ax.bar([i - 0.2 for i in x], [g.tokens_saved for g in s.daily], width=0.4, label="tokens saved (+ = shorter answers)")
    ax.bar([i + 0.2 for i in x], [g.net_tokens for g in s.daily], width=0.4, label="net tokens (- = saved)")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, days, rotation=30, ha="right")
    ax.set_ylabel("tokens")
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
    labels = [f"{c.call_id[:8]} {c.created_at:%m-%d %H:%M} {c.student_model} ({c.decision})" for c in calls]
    ax.barh(range(len(calls)), [c.total_tokens for c in calls])
    ax.set_yticks(range(len(calls)), labels)
    ax.set_xlabel("tokens")
    ax.tick_params(axis="y", labelsize="small")


_DRAW: dict[str, Callable[[Axes, Summary], None]] = {
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
