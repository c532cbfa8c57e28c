"""Per-family report figures (issue 17) against the ledger: a real ledger of calls whose
outcomes the scripts decide, the expected figures computed here by hand from its records,
the 95% intervals and the Beta functions against scipy."""

from __future__ import annotations

import csv
import io
import json
import random
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from scipy import special, stats
from typer.testing import CliRunner

from atlas_middleware import Atlas
from atlas_middleware._tenants import DEFAULT_TENANT
from atlas_middleware.cli.app import app
from atlas_middleware.cli.commands import report as _registered  # noqa: F401
from atlas_middleware.learning.gate import GateRule, TeachingGate, assess, gate_key
from atlas_middleware.learning.posterior import beta_cdf, beta_interval, beta_quantile
from atlas_middleware.learning.rebuild import replay
from atlas_middleware.ledger import LedgerRecord, SQLiteLedger
from atlas_middleware.messages import ChatRequest
from atlas_middleware.offline.reporting import summarize
from atlas_middleware.offline.reporting.summary import _report_fields, learn
from atlas_middleware.state.families import MemoryFamilies
from atlas_middleware.teaching import prompts
from atlas_middleware.teaching.flow import sampled
from atlas_middleware.testing import PairwiseJudge, ScriptedBackend, teacher_reply

runner = CliRunner()
RIGHT, WRONG = "The answer is 42", "The answer is 41"
FAMILIES = ("helps", "hurts", "same", "strong")
AUDIT_RATE = 0.5
RULE = {"gate_min_evidence": 3.0, "gate_explore": 0.0}
# Written into the guidance (kept with store_texts): the report must not mistake it for the fields.
TRICKY = 'Check "audit":null and "guidance_reused":false and "reused_from":"x" first.'


def _text(request: ChatRequest) -> str:
    return "\n".join(prompts.content_text(m.get("content")) for m in request.messages)


def _family(request: ChatRequest) -> str:
    text = _text(request)
    return next((f for f in FAMILIES if f"Q{f.upper()}" in text), "?")


def _guided(request: ChatRequest) -> str:
    # helps: guidance makes the answer right; hurts: wrong; same: both right.
    return RIGHT if _family(request) in ("helps", "same") else WRONG


def _baseline(request: ChatRequest) -> str:
    return WRONG if _family(request) == "helps" else RIGHT


def _teacher(request: ChatRequest) -> str:
    # strong: the teacher sees a strong student (level 5 >= skip_level) and gives no guidance.
    return teacher_reply(TRICKY, level=5 if _family(request) == "strong" else 2)


def _run(url: str, rounds: int, policy: str, *, session: str | None = None,
         families: tuple[str, ...] = FAMILIES, **kwargs: Any) -> None:
    student = ScriptedBackend({"probe": "Add them.", "guided": _guided, "baseline": _baseline})
    teacher = ScriptedBackend({"teacher": _teacher, "judge_pair": PairwiseJudge(lambda a: a.strip().endswith("42"))})
    with Atlas(student_backend=student, teacher_backend=teacher, ledger=url, teacher="scripted-teacher",
               spool="none", policy=policy, store_texts=True, **kwargs) as atlas:
        for i in range(rounds):
            for f in families:
                opts: dict[str, Any] = {"task": f}
                if session:
                    opts["session_id"] = f"{session}-{f}"
                atlas.completion("student", [{"role": "user", "content": f"Q{f.upper()}: what is {i} + 41?"}],
                                 atlas=opts)
            atlas.flush()


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[LedgerRecord]]:
    path = tmp_path_factory.mktemp("families") / "ledger.db"
    url = f"sqlite:///{path}"
    # strict with the learned gate and family reuse: hurts closes (gate_skipped calls follow),
    # helps keeps its winning guidance and reuses it.
    _run(url, 8, "strict", gate="learned", reuse="family", **RULE)
    _run(url, 10, "audit", audit_rate=AUDIT_RATE)  # delivered degradations: audits preferring the baseline
    _run(url, 3, "strict", session="s")  # session reuse
    _run(url, 2, "verify")  # never compared (biased), whatever its outcome
    _run(url, 3, "strict", families=("strong",))  # the most called family
    store = SQLiteLedger(path)
    rows = store.records()
    store.close()
    return url, rows


OUTCOME_BY_REASON = {"agreement": "unchanged", "judge_tie": "unchanged", "strong_student": "unchanged",
                     "no_guidance": "unchanged", "judge_preferred_guided": "improved",
                     "judge_preferred_baseline": "degraded", "guided_invalid_tool_call": "degraded"}
OUTCOME_BY_WINNER = {"guided": "improved", "baseline": "degraded", "tie": "unchanged"}


def compared_outcome(r: LedgerRecord) -> str | None:
    """Written from the definitions in docs/reports.md, not from the code."""
    rep = r.report()
    if not (rep.usage.probe.calls or rep.usage.teacher.calls or rep.reused_from):
        return None  # served from an agent session's cache: not a new sample
    if r.policy == "strict":
        return OUTCOME_BY_REASON.get(r.reason)
    if r.policy == "audit":
        if rep.audit is None:  # never reached the audit: counted when the audit's coin picks it
            return OUTCOME_BY_REASON.get(r.reason) if sampled(r.call_id, AUDIT_RATE) else None
        return OUTCOME_BY_WINNER.get(rep.audit.winner or "") if rep.audit.sampled else None
    return None


def interval(k: int, n: int) -> tuple[float, float]:
    """Equal-tailed, except that 0 of n reaches down to 0 and n of n up to 1."""
    low, high = stats.beta.ppf(0.025, 1 + k, 1 + n - k), stats.beta.ppf(0.975, 1 + k, 1 + n - k)
    return (0.0 if k == 0 else low), (1.0 if k == n else high)


def expected(rows: list[LedgerRecord]) -> dict[str, Any]:
    outcomes = [(r, compared_outcome(r)) for r in rows]
    compared = [(r, o) for r, o in outcomes if o is not None]
    n = len(compared)
    reports = [r.report() for r in rows]
    # Measured on the call's own baseline: an audit call not sampled has an estimate (its family's
    # baselines), which the report keeps apart.
    measured = [r for r in rows if r.net_tokens is not None and r.counterfactual_basis != "estimated"]
    return {
        "calls": len(rows),
        "compared": n,
        "improved": sum(o == "improved" for _, o in compared),
        "degraded": sum(o == "degraded" for _, o in compared),
        "unchanged": sum(o == "unchanged" for _, o in compared),
        "delivered_improvement": sum(o == "improved" and r.decision == "guided" for r, o in compared),
        "delivered_degradation": sum(o == "degraded" and r.decision == "guided" for r, o in compared),
        "gate_skipped": sum(r.reason == "gate_skipped" for r in rows),
        "reused_family": sum(rep.guidance_reused and rep.reused_from is not None for rep in reports),
        "reused_session": sum(rep.guidance_reused and rep.reused_from is None for rep in reports),
        "reused_from": {k: sum(rep.reused_from == k for rep in reports)
                        for k in {rep.reused_from for rep in reports} if k is not None},
        "net_tokens_per_call": sum(r.net_tokens or 0 for r in measured) / len(measured) if measured else None,
    }


def cli(*args: str) -> str:
    # A wide terminal: the table rows are read whole (test_report_readable checks narrow ones).
    result = runner.invoke(app, ["report", *args], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.stdout


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """The report reads the gate's rule and the audit rate from the configuration."""
    monkeypatch.setenv("ATLAS_AUDIT_RATE", str(AUDIT_RATE))
    monkeypatch.setenv("ATLAS_GATE_MIN_EVIDENCE", str(RULE["gate_min_evidence"]))
    monkeypatch.setenv("ATLAS_GATE_EXPLORE", str(RULE["gate_explore"]))


def by_family(rows: list[LedgerRecord]) -> dict[str, list[LedgerRecord]]:
    out: dict[str, list[LedgerRecord]] = {}
    for r in rows:
        out.setdefault(r.task_family or "(none)", []).append(r)
    return out


def close(a: float | None, b: float | None, tol: float = 1e-9) -> bool:
    return a == b if a is None or b is None else abs(a - b) < tol


def test_the_ledger_holds_what_the_figures_count(ledger: tuple[str, list[LedgerRecord]]) -> None:
    # Without each kind of call the checks below would prove little.
    _, rows = ledger
    families = by_family(rows)
    assert set(families) == {f"t:{f}" for f in FAMILIES}
    want = {k: expected(v) for k, v in families.items()}
    assert want["t:helps"]["delivered_improvement"] > 0 and want["t:hurts"]["delivered_degradation"] > 0
    assert want["t:hurts"]["gate_skipped"] > 0 and want["t:helps"]["reused_family"] > 0
    assert want["t:helps"]["reused_session"] > 0 and want["t:same"]["reused_session"] > 0  # kept in the session
    assert any(r.policy == "audit" and r.reason == "strong_student" and compared_outcome(r) for r in rows)
    assert any(r.policy == "audit" and r.reason == "strong_student" and not compared_outcome(r) for r in rows)
    assert any(r.policy == "verify" and r.tokens["baseline"]["calls"] for r in rows)  # compared, yet not counted
    assert any(TRICKY.replace('"', '\\"') in r.report_json for r in rows)


def check_family(data: dict[str, Any], rows: list[LedgerRecord]) -> None:
    want = expected(rows)
    n = want["compared"]
    assert data["calls"] == want["calls"] and data["compared"] == n
    for name in ("improved", "degraded", "unchanged", "delivered_improvement", "delivered_degradation"):
        got, k = data[name], want[name]
        assert got["count"] == k, name
        assert close(got["rate"], k / n if n else None), name
        low, high = interval(k, n)
        assert close(got["low"], low, 1e-8) and close(got["high"], high, 1e-8), (name, got, low, high)
    for key in ("gate_skipped", "reused_family", "reused_session", "reused_from"):
        assert data[key] == want[key], key
    assert data["teacher_calls_avoided"] == want["reused_family"] + want["reused_session"]
    assert close(data["net_tokens_per_call"], want["net_tokens_per_call"])


def test_family_figures_in_json_match_the_ledger(ledger: tuple[str, list[LedgerRecord]], configured: None) -> None:
    url, rows = ledger
    data = json.loads(cli("--ledger", url, "--json"))
    families = by_family(rows)
    assert [f["key"] for f in data["families"]] == sorted(families)
    for f in data["families"]:
        check_family(f, families[f["key"]])
    check_family(data["overall"], rows)
    assert data["gate_records"] == len(rows) and data["gate_mode"] == "always"


def test_gate_state_is_the_replayed_rule(ledger: tuple[str, list[LedgerRecord]], configured: None) -> None:
    url, rows = ledger
    data = json.loads(cli("--ledger", url, "--json"))
    gates = {f["key"]: f["gate"] for f in data["families"]}
    # What the scripts make of the families: teaching hurts one and helps another.
    assert gates["t:hurts"]["state"] == "closed" and gates["t:helps"]["state"] == "open"
    assert gates["t:helps"]["p_gain"] > 0.95 > 0.05 > gates["t:hurts"]["p_gain"]
    # The same as replaying the fully validated reports through the gate (rebuild's path).
    rule = GateRule(min_evidence=RULE["gate_min_evidence"], explore=RULE["gate_explore"])
    gate = TeachingGate(MemoryFamilies(), rule, learned=True, reuse=False, audit_rate=AUDIT_RATE)
    evidence = replay((r.report() for r in rows), gate)
    for family, g in gates.items():
        a = assess(evidence.get(gate_key("student", family, DEFAULT_TENANT)), rule)  # evidence is per student model
        assert (g["state"], g["evidence"]) == (a.state, a.evidence)
        assert close(g["p_gain"], a.p_gain) and close(g["p_effect"], a.p_effect)
    # The configured rule, not the default one: with this much evidence required nothing closes.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ATLAS_GATE_MIN_EVIDENCE", "1000")
        mp.setenv("ATLAS_GATE_HORIZON", "5000")
        strict_rule = json.loads(cli("--ledger", url, "--json"))
    assert {f["gate"]["state"] for f in strict_rule["families"]} == {"learning"}
    # Only the last gate_rebuild records are replayed (what a process starting now rebuilds).
    last = 12
    evidence = replay((r.report() for r in rows[-last:]), gate)
    few = summarize(rows, ledger="x", gate_rule=rule, audit_rate=AUDIT_RATE, gate_records=last)
    assert few.gate_records == last
    for g in few.families:
        assert g.gate is not None
        assert g.gate.evidence == assess(evidence.get(gate_key("student", g.key, DEFAULT_TENANT)), rule).evidence


def test_family_csv_table_and_html_show_the_same_figures(
    ledger: tuple[str, list[LedgerRecord]], configured: None, tmp_path: Path
) -> None:
    url, rows = ledger
    families = by_family(rows)
    data = {f["key"]: f for f in json.loads(cli("--ledger", url, "--json"))["families"]}
    parsed = list(csv.DictReader(io.StringIO(cli("--ledger", url, "--format", "csv", "--group-by", "family"))))
    assert [p["group"] for p in parsed] == [*sorted(families), "all"]
    for p in parsed:
        want = expected(rows if p["group"] == "all" else families[p["group"]])
        assert int(p["compared"]) == want["compared"]
        for name in ("delivered_improvement", "delivered_degradation", "improved", "degraded"):
            assert int(p[name]) == want[name]
            low, high = interval(want[name], want["compared"])
            assert close(float(p[f"{name}_low"]), low, 1e-8) and close(float(p[f"{name}_high"]), high, 1e-8)
        assert int(p["teacher_calls_avoided"]) == want["reused_family"] + want["reused_session"]
        assert int(p["gate_skipped"]) == want["gate_skipped"]
        gate = None if p["group"] == "all" else data[p["group"]]["gate"]
        assert p["gate_state"] == ("" if gate is None else gate["state"])

    def cells(key: str) -> list[str]:
        want, g = expected(families[key]), data[key]["gate"]

        def ci(k: int) -> str:
            n = want["compared"]
            low, high = interval(k, n)
            return f"{k / n * 100:.1f}% [{low * 100:.1f}, {high * 100:.1f}]"

        net = want["net_tokens_per_call"]
        return [ci(want["delivered_improvement"]), ci(want["delivered_degradation"]),
                str(want["reused_family"] + want["reused_session"]), str(want["gate_skipped"]),
                f"{g['state']} ({g['p_gain']:.2f}, {g['p_effect']:.2f})", format(-net, "+,.1f")]

    text = cli("--ledger", url)
    section = text[text.index("by task family"):]
    for key in families:
        line = next(ln for ln in section.splitlines() if ln.strip("│┃| ").startswith(key))
        got = [c.strip() for c in re.split(r"[│|┃]", line) if c.strip()]
        want = cells(key)
        # After the family and its calls come the two net-dollar cells, then the rest.
        assert got[0] == key and got[1] == str(len(families[key])) and got[9] == str(expected(families[key])["compared"])
        assert got[10:15] == want[:5] and got[8] == want[5], (got, want)
        assert got[15] == "0"  # budget out: no budget here

    out = tmp_path / "report.html"
    cli("--ledger", url, "--format", "html", "--out", str(out))
    page = _Page()
    page.feed(out.read_text(encoding="utf-8"))
    for key in families:
        assert page.rows[key][10:15] == cells(key)[:5] and page.rows[key][8] == cells(key)[5], key
    # The chart: every family drawn, most called first, its gate as the badge, a dot per lane.
    order = sorted(families, key=lambda k: (-len(families[k]), k))
    assert [f for f, _ in page.chart] == order
    assert dict(page.chart) == {k: data[k]["gate"]["state"] for k in families}
    assert page.lanes == {k: ["better", "worse"] for k in families}
    assert "<script" not in out.read_text(encoding="utf-8")


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[str]] = {}
        self.chart: list[tuple[str, str]] = []
        self.lanes: dict[str, list[str]] = {}
        self._row: str | None = None
        self._family: str | None = None
        self._cell = False
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-family"):
            # A table split to fit the screen repeats its rows: their cells read on in order.
            self._row = a["data-family"]
            self.rows.setdefault(self._row or "", [])
        elif tag == "td" and self._row:
            self._cell, self._text = True, ""
        elif tag == "g" and a.get("class") == "family":
            self._family = a["data-family"] or ""
            self.chart.append((self._family, a["data-gate"] or ""))
            self.lanes[self._family] = []
        elif tag == "g" and a.get("class") == "lane" and self._family:
            self.lanes[self._family].append(a["data-what"] or "")

    def handle_data(self, data: str) -> None:
        if self._cell:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._row and self._cell:
            self.rows[self._row].append(self._text)
            self._cell = False
        elif tag == "tr":
            self._row = None


def test_report_fields_read_without_parsing_agree_with_json(ledger: tuple[str, list[LedgerRecord]]) -> None:
    _, rows = ledger
    for r in rows:
        audit, reused, reused_from = _report_fields(r.report_json)
        full = json.loads(r.report_json)
        assert (audit.model_dump() if audit else None, reused, reused_from) == (
            full["audit"], full["guidance_reused"], full["reused_from"]), r.call_id


def test_learning_of_a_record_is_the_gates_counted_outcome(ledger: tuple[str, list[LedgerRecord]]) -> None:
    from atlas_middleware.learning.gate import counted_outcome

    _, rows = ledger
    for r, x in zip(rows, learn(rows, AUDIT_RATE), strict=True):
        assert x.outcome == counted_outcome(r.report(), AUDIT_RATE) == compared_outcome(r), r.reason


def test_no_compared_call_gives_no_rate() -> None:
    s = summarize([], ledger="x")
    assert s.overall.compared == 0 and s.overall.delivered_improvement.rate is None
    assert s.overall.delivered_improvement.low is None and s.families == []


@pytest.mark.parametrize("seed", range(3))
def test_beta_functions_match_scipy(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(60):
        a, b = rng.choice([rng.uniform(0.2, 3), rng.uniform(1, 400)]), rng.choice([rng.uniform(0.2, 3), rng.uniform(1, 400)])
        x, q = rng.random(), rng.random()
        assert abs(beta_cdf(x, a, b) - special.betainc(a, b, x)) < 1e-9, (x, a, b)
        assert abs(beta_quantile(q, a, b) - special.betaincinv(a, b, q)) < 1e-8, (q, a, b)
        k, n = rng.randint(0, 300), rng.randint(0, 300)
        low, high = beta_interval(k, n)
        assert abs(low - special.betaincinv(1 + k, 1 + n, 0.025)) < 1e-8
        assert abs(high - special.betaincinv(1 + k, 1 + n, 0.975)) < 1e-8


def test_a_tag_with_markup_is_shown_as_written(tmp_path: Path) -> None:
    """A tag is the caller's text: rich must not read ``[red]`` (or fail on ``[/]``) in it."""
    from atlas_middleware.report import CallReport

    store = SQLiteLedger(tmp_path / "l.db")
    for tag in ("t:[/]", "t:[red]alarm[/red]"):
        store.append(LedgerRecord.from_report(
            CallReport(student_model="s", policy="strict", task_family=tag), "p", None, False))
    store.close()
    out = cli("--ledger", f"sqlite:///{tmp_path / 'l.db'}")
    assert "t:[/]" in out and "t:[red]alarm[/red]" in out


def test_the_gate_view_is_the_model_the_gate_decides_on_now() -> None:
    """Older calls of model A say teaching helps; the replayed recent ones, of model B, that it
    hurts: the family shows B's (closed) view, and names B."""
    from atlas_middleware.report import CallReport, Reason
    from atlas_middleware.usage import Usage

    def record(model: str, reason: Reason) -> LedgerRecord:
        rep = CallReport(student_model=model, policy="strict", task_family="t:b", reason=reason, net_tokens=5)
        rep.usage.add("teacher", Usage(prompt_tokens=1, completion_tokens=1, calls=1))
        return LedgerRecord.from_report(rep, "p", None, False)

    rows = [record("A", Reason.JUDGE_GUIDED) for _ in range(30)] + [record("B", Reason.JUDGE_BASELINE) for _ in range(20)]
    summary = summarize(rows, ledger="x", group_by="family", gate_rule=GateRule(), audit_rate=0.1, gate_records=20)
    (family,) = summary.families
    assert family.gate is not None and (family.gate.student_model, family.gate.state) == ("B", "closed")
