"""Write a finished evaluation: tables.md, metrics.json (every figure) and the PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from .metrics import EvalMetrics, compute_metrics
from .plots import accuracy_by_difficulty, token_distributions
from .records import SampleRecord
from .runner import EvalSettings
from .tables import render


class Outputs(BaseModel):
    metrics: EvalMetrics
    tables: Path
    json_path: Path
    plots: list[Path]


def write_outputs(
    out: Path, records: list[SampleRecord], settings: EvalSettings, *, plots: bool = True,
    notes: list[str] | None = None,
) -> Outputs:
    metrics = compute_metrics(records)
    title = f"ATLAS evaluation: {settings.dataset}, student {settings.student}, teacher {settings.teacher}"
    tables = out / "tables.md"
    tables.write_text(render(metrics, title=title, samples=settings.samples, notes=notes), encoding="utf-8")
    json_path = out / "metrics.json"
    json_path.write_text(
        json.dumps({"settings": settings.manifest(), "metrics": metrics.model_dump(mode="json")}, indent=2),
        encoding="utf-8",
    )
    pngs = (
        [accuracy_by_difficulty(metrics, out / "accuracy_by_difficulty.png"),
         token_distributions(records, out / "tokens.png")]
        if plots else []
    )
    return Outputs(metrics=metrics, tables=tables, json_path=json_path, plots=pngs)
