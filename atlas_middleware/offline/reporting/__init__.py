"""Savings reports from the ledger: figures in ``summary``, renderers for each format.

``summary`` and the text renderers need nothing beyond the core; ``charts`` and ``html``
need matplotlib (``pip install 'atlas-middleware[report]'``) and import it only when called.
"""

from .render import FORMATS, render_csv, render_json, render_table
from .summary import GROUP_BY, GroupBy, GroupSummary, Summary, summarize

__all__ = [
    "FORMATS",
    "GROUP_BY",
    "GroupBy",
    "GroupSummary",
    "Summary",
    "render_csv",
    "render_json",
    "render_table",
    "summarize",
]
