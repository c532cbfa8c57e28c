"""The prices a deployment sets for its student, and the known cost of a report."""

from __future__ import annotations

from typing import Any

from ..pricing import PRICE_PARAMS
from ..report import CallReport


def _student_prices(litellm_params: dict[str, Any] | None) -> dict[str, Any]:
    """The per-token prices a deployment sets for its model (LiteLLM's custom pricing
    parameters, or its ``model_info``), to pass on to the student's calls.

    They are the student's prices: ``Atlas`` prices each student call by them
    (``pricing.py``), as LiteLLM would price the deployment's own call, while the teacher
    keeps its own. Without them a student missing from LiteLLM's cost map would be unpriced,
    and the spend the proxy logs would be the teacher's alone. Only the keys atlas prices by
    are passed: LiteLLM's other pricing keys (per second, per tier) would reach the
    student's request as unknown parameters and send it through LiteLLM.
    """
    params = litellm_params or {}
    info = params.get("model_info")
    info = info if isinstance(info, dict) else {}
    out = {}
    for name in PRICE_PARAMS:
        value = params.get(name)
        value = info.get(name) if value is None else value
        if value is not None:
            out[name] = value
    return out


def known_cost(report: CallReport) -> float:
    """The summed price of every inner call whose price is known."""
    usage = report.usage
    parts = (usage.probe, usage.teacher, usage.guided, usage.baseline, usage.judge)
    return float(sum(p.cost_usd for p in parts if p.cost_usd is not None))
