"""Reproduce the ATLAS benchmark tables for any student/teacher pair.

``evaluate(atlas, settings, out)`` loads the problems, runs every (problem, sample) through
the real middleware (resumable: ``out/results.jsonl``), and writes ``tables.md``,
``metrics.json`` and the plots. The pieces are usable alone: ``datasets`` (GSM8K, ARC,
user JSONL), ``checking`` (grading), ``runner`` (the resumable driver), ``metrics`` and
``stats`` (the figures), ``tables`` and ``plots`` (the outputs).

Needs the ``eval`` extra (math-verify, scipy, matplotlib, tqdm) and, for the built-in data
sets, the packages that ship them (see ``datasets``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from .datasets import Problem, load_dataset
from .metrics import EvalMetrics, compute_metrics
from .outputs import Outputs, write_outputs
from .records import ResultsFile, SampleRecord
from .runner import EvalSettings, evaluate_sample, run_samples

__all__ = [
    "EvalMetrics",
    "EvalSettings",
    "Outputs",
    "Problem",
    "ResultsFile",
    "SampleRecord",
    "aevaluate",
    "compute_metrics",
    "evaluate",
    "evaluate_sample",
    "load_dataset",
    "run_samples",
    "write_outputs",
]


async def aevaluate(
    atlas: Any, settings: EvalSettings, out: Path, *, problems: list[Problem] | None = None,
    progress: bool = True, plots: bool = True, notes: list[str] | None = None,
) -> Outputs:
    """Run (or continue) an evaluation and write its outputs; see the module docstring."""
    problems = problems if problems is not None else load_dataset(settings.dataset, settings.limit)
    results = await run_samples(atlas, problems, settings, out, progress=progress)
    # Only this run's scope counts: a folder may hold more samples from a larger earlier run.
    wanted = [(p.id, s) for p in problems for s in range(settings.samples)]
    records = [results.records[k] for k in wanted if k in results]
    return write_outputs(out, records, settings, plots=plots, notes=notes)


def evaluate(atlas: Any, settings: EvalSettings, out: Path, **kwargs: Any) -> Outputs:
    return asyncio.run(aevaluate(atlas, settings, out, **kwargs))
