"""The published tables, in markdown: the headline comparison and accuracy by difficulty.

The layout follows the ATLAS benchmark page (metric, teacher+student, student alone,
difference), with two columns the published page lacks: what the middleware *delivered*
after its non-degradation policy, and the statistics (95% interval, paired t-test p-value).
"""

from __future__ import annotations

from .metrics import EvalMetrics, GroupMetrics
from .stats import MeanCI, PairedTest


def pct(x: float | None, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}%"


def points(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f} pts"


def ci(m: MeanCI) -> str:
    if m.low is None or m.high is None:
        return pct(m.mean)
    return f"{pct(m.mean)} [{100 * m.low:.1f}, {100 * m.high:.1f}]"


def p_value(t: PairedTest) -> str:
    if t.p_value is None:
        return "n/a"
    return "<0.001" if t.p_value < 0.001 else f"{t.p_value:.3f}"


def gain_text(t: PairedTest) -> str:
    if t.low is None or t.high is None:
        return points(t.mean_diff)
    return f"{points(t.mean_diff)} [{100 * t.low:+.1f}, {100 * t.high:+.1f}], p={p_value(t)}"


def clock(seconds: float) -> str:
    """m:ss, as the published generation times are written."""
    whole = round(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


def tokens(x: float) -> str:
    return f"{x:,.0f}"


def _samples(n: int) -> str:
    return f"{n} sample" if n == 1 else f"{n} samples"


def headline(m: EvalMetrics, samples: int) -> str:
    o: GroupMetrics = m.overall
    ts, al, dl = o.teacher_student, o.student_alone, o.delivered
    # "+ 0.0" turns a negative zero into "+0.0%".
    red = "n/a" if o.token_reduction is None else f"{-100 * o.token_reduction + 0.0:+.1f}%"
    net_red = "n/a" if o.net_reduction is None else f"{-100 * o.net_reduction + 0.0:+.1f}%"
    max_gain = "n/a" if m.max_gain is None else f"{points(m.max_gain)} ({m.max_gain_group})"
    rows = [
        ("Accuracy (95% CI)", ci(ts.accuracy), ci(al.accuracy), ci(dl.accuracy), gain_text(o.gain)),
        ("Gain of the delivered answer", "", "", gain_text(o.delivered_gain), ""),
        ("Max gain (by difficulty)", "", "", "", max_gain),
        ("Completion rate", pct(ts.completion_rate), pct(al.completion_rate), pct(dl.completion_rate),
         points(ts.completion_rate - al.completion_rate)),
        ("Student response tokens", tokens(ts.response_tokens), tokens(al.response_tokens),
         tokens(dl.response_tokens), red),
        ("Net tokens per call (all roles)", tokens(o.spent_tokens), tokens(o.alone_tokens), "",
         f"{o.net_tokens:+,.0f} ({net_red})"),
        (f"Generation time for {_samples(samples)}", clock(ts.generation_s), clock(al.generation_s),
         clock(dl.generation_s), f"{ts.generation_s - al.generation_s:+.1f} s"),
        ("Non-degradation rate", pct(o.ndr_raw), "", pct(o.ndr_delivered),
         f"{o.degraded_raw} raw / {o.degraded_delivered} delivered degraded"),
        ("Improvement rate", pct(o.improvement_raw), "", pct(o.improvement_delivered),
         f"{o.improved_raw} raw / {o.improved_delivered} delivered improved"),
        ("Teaching effectiveness score", "n/a" if o.tes is None else f"{o.tes:.3f}", "", "",
         f"{tokens(o.teaching_tokens)} teaching tokens"),
        ("Guidance that stated an answer", f"{o.guidance_leaks} of {_samples(o.samples)}", "", "",
         "a gain from leaked answers is copying, not teaching"),
    ]
    lines = [
        "| Metric | Teacher+Student | Student alone | Delivered | Difference |",
        "|---|---|---|---|---|",
        *(f"| {' | '.join(r)} |" for r in rows),
    ]
    return "\n".join(lines)


def by_difficulty(m: EvalMetrics) -> str:
    lines = [
        "| Difficulty | Problems | Teacher+Student | Student alone | Delivered | Gain | p | NDR (delivered) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g in [*m.by_difficulty, m.overall]:
        lines.append(
            f"| {g.label} | {g.problems} | {pct(g.teacher_student.accuracy.mean)} | "
            f"{pct(g.student_alone.accuracy.mean)} | {pct(g.delivered.accuracy.mean)} | "
            f"{points(g.gain.mean_diff)} | {p_value(g.gain)} | {pct(g.ndr_delivered)} |"
        )
    return "\n".join(lines)


def render(m: EvalMetrics, *, title: str, samples: int, notes: list[str] | None = None) -> str:
    source = (
        "the data set's own labels" if m.difficulty_source == "dataset"
        else "tertiles of the student-alone pass rate"
    )
    parts = [
        f"# {title}",
        "",
        f"{m.overall.problems} problems x up to {_samples(samples)} ({_samples(m.overall.samples)} in all). "
        "Teacher+Student is the raw guided answer; Delivered is what the middleware returned "
        "after its policy. Intervals are 95% Student-t over problems; p from a paired t-test.",
        "",
        headline(m, samples),
        "",
        f"## Accuracy by difficulty ({source})",
        "",
        by_difficulty(m),
        "",
    ]
    for note in notes or []:
        parts += [f"> {note}", ""]
    return "\n".join(parts)
