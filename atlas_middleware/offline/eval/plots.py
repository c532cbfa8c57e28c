"""PNG plots: accuracy by difficulty with 95% intervals, and response-token distributions.

matplotlib (the ``eval`` extra) is imported only here, with the non-interactive Agg
backend, so plotting works on machines without a display.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import MissingExtraError
from .metrics import EvalMetrics
from .records import SampleRecord


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingExtraError("the evaluation's plots", "eval", "matplotlib") from exc
    return plt


def accuracy_by_difficulty(m: EvalMetrics, path: Path) -> Path:
    plt = _pyplot()
    groups = [*m.by_difficulty, m.overall]
    arms = [("Teacher+Student", "teacher_student"), ("Student alone", "student_alone"), ("Delivered", "delivered")]
    width = 0.8 / len(arms)
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, (name, attr) in enumerate(arms):
        means: list[float] = []
        errs: list[list[float]] = [[], []]
        for g in groups:
            acc = getattr(g, attr).accuracy
            mean = 100 * (acc.mean or 0.0)
            means.append(mean)
            # An interval is clipped to [0, 100] for display only; the JSON keeps it whole.
            errs[0].append(mean - 100 * max(acc.low, 0.0) if acc.low is not None else 0.0)
            errs[1].append(100 * min(acc.high, 1.0) - mean if acc.high is not None else 0.0)
        xs = [x + (i - 1) * width for x in range(len(groups))]
        ax.bar(xs, means, width, yerr=errs, capsize=3, label=name)
    ax.set_xticks(range(len(groups)), [g.label for g in groups])
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Accuracy by difficulty (95% CI)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=len(arms), fontsize="small", frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def token_distributions(records: list[SampleRecord], path: Path) -> Path:
    plt = _pyplot()
    guided = [r.guided.completion_tokens for r in records]
    alone = [r.alone.completion_tokens for r in records]
    fig, ax = plt.subplots(figsize=(7, 4))
    top = max([*guided, *alone, 1])
    bins = list(range(0, top + max(1, top // 30) + 1, max(1, top // 30)))
    ax.hist(alone, bins=bins, alpha=0.6, label="Student alone")
    ax.hist(guided, bins=bins, alpha=0.6, label="Teacher+Student")
    ax.set_xlabel("student response tokens")
    ax.set_ylabel("samples")
    ax.set_title("Response tokens: guided vs alone")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
