"""`atlas-middleware report` in every format, checked against the ledger rows."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from test_report_support import ROLES, by, check_group_json, expected, make_calls, restamped
from typer.testing import CliRunner

from atlas_middleware.cli.app import app
from atlas_middleware.cli.commands import report as _registered  # noqa: F401
from atlas_middleware.errors import MissingExtraError
from atlas_middleware.ledger import LedgerRecord, SQLiteLedger
from atlas_middleware.offline.reporting import summarize

runner = CliRunner()


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[LedgerRecord]]:
    """A SQLite ledger of real calls (two rounds of every scenario) over three days."""
    path = tmp_path_factory.mktemp("report") / "ledger.db"
    url = f"sqlite:///{path}"
    make_calls(url, rounds=2, spool="none")
    store = SQLiteLedger(path)
    today = store.records()
    for days_back, cost in ((1, 0.0021), (3, None)):
        for r in restamped(today, days_back, cost):
            # The oldest day's records were written before task families existed.
            store.append(r.model_copy(update={"task_family": None}) if days_back == 3 else r)
    rows = store.records()
    store.close()
    assert len(rows) == 3 * len(today) == 30
    return url, rows


def cli(*args: str) -> str:
    # A wide terminal: the table rows are read whole (test_report_readable checks narrow ones).
    result = runner.invoke(app, ["report", *args], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result.stdout


def close(a: float | None, b: float | None) -> bool:
    return a == b if a is None or b is None else abs(a - b) < 1e-9


def test_ledger_holds_every_kind_of_call(ledger: tuple[str, list[LedgerRecord]]) -> None:
    # The fixture must exercise what the report summarises, or the checks below prove little.
    _, rows = ledger
    assert {r.decision for r in rows} == {"guided", "baseline", "student_only"}
    assert any(r.reason == "teacher_error" for r in rows)
    assert any(r.tokens_saved is None for r in rows) and any((r.tokens_saved or 0) > 0 for r in rows)
    assert any(r.cost_usd is not None for r in rows) and any(r.cost_usd is None for r in rows)
    assert any((r.cost_saved_usd or 0) < 0 for r in rows) and any(r.cost_saved_usd is None for r in rows)


@pytest.mark.parametrize("group_by", ["day", "model", "session", "decision", "family"])
def test_json_matches_ledger_rows(ledger: tuple[str, list[LedgerRecord]], group_by: str) -> None:
    url, rows = ledger
    data = json.loads(cli("--ledger", url, "--format", "json", "--group-by", group_by))
    check_group_json(data["overall"], rows)
    groups = by(rows, group_by)
    assert [g["key"] for g in data["groups"]] == sorted(groups)
    for g in data["groups"]:
        check_group_json(g, groups[g["key"]])
    assert data["pending_spooled"] == 0
    assert [d["key"] for d in data["daily"]] == sorted(by(rows, "day"))
    families = by(rows, "family")
    assert [f["key"] for f in data["families"]] == sorted(families)
    for f in data["families"]:
        check_group_json(f, families[f["key"]])


def test_the_ledger_holds_several_families(ledger: tuple[str, list[LedgerRecord]]) -> None:
    # A tagged family, a derived one and old rows without one: each must be its own group.
    _, rows = ledger
    families = by(rows, "family")
    assert "t:graded sums" in families and any(k.startswith("f:") for k in families) and "(none)" in families
    assert all(0 < sum(1 for r in rs if r.tokens["guided"]["calls"]) for k, rs in families.items() if k != "(none)")


def test_family_csv_and_table_match_ledger_rows(ledger: tuple[str, list[LedgerRecord]]) -> None:
    url, rows = ledger
    families = by(rows, "family")
    parsed = list(csv.DictReader(io.StringIO(cli("--ledger", url, "--format", "csv", "--group-by", "family"))))
    assert [p["group"] for p in parsed] == [*sorted(families), "all"]
    for p in parsed:
        group = rows if p["group"] == "all" else families[p["group"]]
        want = expected(group)
        assert (int(p["calls"]), int(p["taught"]), int(p["net_tokens"])) == (want["calls"], want["taught"], want["net_tokens"])
        assert close(float(p["taught_share"]), want["taught"] / want["calls"])
    text = cli("--ledger", url)
    section = text[text.index("by task family"):]
    for key, group in families.items():
        want = expected(group)
        line = next(ln for ln in section.splitlines() if ln.strip("│┃| ").startswith(key))
        cells = [c.strip() for c in re.split(r"[│|┃]", line) if c.strip()]
        assert cells[:8] == [key, str(want["calls"]), *dollar_cells(want), str(want["taught"]),
                             f"{want['taught'] / want['calls']:.1%}", format(-want["net_tokens"], "+,"),
                             pct(None if want["net_rate"] is None else -want["net_rate"])], key
    one = json.loads(cli("--ledger", url, "--json", "--family", "t:graded sums"))
    check_group_json(one["overall"], families["t:graded sums"])
    assert one["filters"] == {"family": "t:graded sums"}


def test_json_flag_is_format_json(ledger: tuple[str, list[LedgerRecord]]) -> None:
    url, _ = ledger
    assert json.loads(cli("--ledger", url, "--json")) == json.loads(cli("--ledger", url, "--format", "json"))


def test_top_calls_are_the_costliest(ledger: tuple[str, list[LedgerRecord]]) -> None:
    url, rows = ledger
    data = json.loads(cli("--ledger", url, "--json", "--top", "3"))
    totals = sorted((sum(t["prompt"] + t["completion"] for t in r.tokens.values()) for r in rows), reverse=True)
    assert [c["total_tokens"] for c in data["top_calls"]] == totals[:3]


def test_csv_matches_ledger_rows(ledger: tuple[str, list[LedgerRecord]]) -> None:
    url, rows = ledger
    parsed = list(csv.DictReader(io.StringIO(cli("--ledger", url, "--format", "csv", "--group-by", "day"))))
    groups = by(rows, "day")
    assert [p["group"] for p in parsed] == [*sorted(groups), "all"]
    for p in parsed:
        want = expected(rows if p["group"] == "all" else groups[p["group"]])
        assert int(p["calls"]) == want["calls"]
        for d, n in want["decisions"].items():
            assert int(p[f"decision_{d}"]) == n
        for role in ROLES:
            assert int(p[f"{role}_prompt_tokens"]) == want["tokens"][role]["prompt"]
            assert int(p[f"{role}_completion_tokens"]) == want["tokens"][role]["completion"]
        assert int(p["tokens_saved"]) == want["tokens_saved"]
        assert int(p["net_tokens"]) == want["net_tokens"]
        assert close(float(p["net_rate"]), want["net_rate"])
        assert close(float(p["saved_rate"]), want["saved_rate"])
        assert close(float(p["cost_usd"]) if p["cost_usd"] else None, want["cost_usd"])
        assert close(float(p["teacher_error_rate"]), want["teacher_error_rate"])


def pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:+.1f}%"


def dollar_cells(want: dict[str, Any]) -> list[str]:
    """The two net-dollar cells that lead a row, formatted here independently of the renderer."""
    saved, ratio = want["cost_saved_usd"], want["cost_vs_alone"]
    net = "n/a" if saved is None else ("+" if saved >= 0 else "-") + "$" + format(abs(saved), ",.6f")
    return [net, "n/a" if ratio is None else format(ratio, ".2f") + "x"]


def table_cells(want: dict[str, Any]) -> list[str]:
    """What a table row must show, formatted here independently of the renderer."""
    d = want["decisions"]
    cost = "n/a" if want["cost_usd"] is None else "$" + format(want["cost_usd"], ",.4f")
    if want["cost_usd"] is not None and want["cost_unknown_calls"]:
        cost += f" (+{want['cost_unknown_calls']} unpriced)"
    share = "n/a" if want["teacher_error_rate"] is None else f"{want['teacher_error_rate'] * 100:.1f}%"
    return [
        str(want["calls"]), *dollar_cells(want), f"{d['guided']} / {d['baseline']} / {d['student_only']}",
        *(format(want["tokens"][r]["prompt"] + want["tokens"][r]["completion"], ",") for r in ROLES),
        format(want["total_tokens"], ","), format(want["tokens_saved"], "+,"), pct(want["saved_rate"]),
        format(-want["net_tokens"], "+,"), pct(None if want["net_rate"] is None else -want["net_rate"]), cost,
        format(want["teacher_p50"], ",.1f"), format(want["teacher_p95"], ",.1f"), share,
    ]


def test_table_matches_ledger_rows(ledger: tuple[str, list[LedgerRecord]]) -> None:
    url, rows = ledger
    text = cli("--ledger", url, "--group-by", "model")
    lines = {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│|┃]", line) if c.strip()]
        if cells:
            lines[cells[0]] = cells[1:]
    groups = by(rows, "model")
    for key, group_rows in [*groups.items(), ("all", rows)]:
        assert lines[key][: len(table_cells(expected(group_rows)))] == table_cells(expected(group_rows)), key
    assert "pending spooled records: 0" in text
    # Net dollars lead: the first line, before any table.
    want = expected(rows)
    spent = -want["cost_saved_usd"]
    assert " ".join(text.split("\n\n")[0].split()).startswith(
        f"Teaching cost ${spent:.3g} ({spent / want['student_alone_cost_usd']:.1%}) more than the student alone "
        f"would have, over {want['dollar_calls']} of {want['calls']} calls. {want['dollar_calls']} measured against "
        "the call's own baseline, 0 estimated from its family's measured baselines.")


def test_filters_select_the_same_rows_as_the_ledger(ledger: tuple[str, list[LedgerRecord]]) -> None:
    url, rows = ledger
    days = sorted(by(rows, "day"))
    since, until = days[1], days[2]  # exactly the middle day
    data = json.loads(cli("--ledger", url, "--json", "--since", since, "--until", until))
    check_group_json(data["overall"], by(rows, "day")[since])
    assert data["filters"] == {"since": since, "until": until}
    data = json.loads(cli("--ledger", url, "--json", "--model", "llama-local", "--session", "beta"))
    check_group_json(data["overall"], [r for r in rows if r.student_model == "llama-local" and r.session_id == "beta"])
    data = json.loads(cli("--ledger", url, "--json", "--since", "2d"))
    check_group_json(data["overall"], [r for r in rows if r.created_at.date().isoformat() >= days[1]])


def test_empty_ledger_reports_no_rates(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    data = json.loads(cli("--ledger", url, "--json"))
    assert data["overall"]["calls"] == 0 and data["overall"]["net_rate"] is None
    assert "n/a" in cli("--ledger", url)
    cli("--ledger", url, "--format", "html", "--out", str(tmp_path / "empty.html"))


def test_bad_options_are_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'x.db'}"
    for args in (["--format", "pdf"], ["--group-by", "week"], ["--format", "html"], ["--since", "yesterday"]):
        result = runner.invoke(app, ["report", "--ledger", url, *args])
        assert result.exit_code != 0, args


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: dict[str, str] = {}
        self.rows: dict[str, list[str]] = {}
        self.cards: dict[str, str] = {}
        self.headline = ""
        self._in_headline = False
        self.urls: list[str] = []
        self._row: str | None = None
        self._card: str | None = None
        self._cell = False
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name in ("src", "href"):
            if a.get(name):
                self.urls.append(a[name] or "")
        if tag == "img":
            self.images[a["data-chart"] or ""] = a["src"] or ""
        elif tag == "tr" and a.get("data-group"):
            # A table split to fit the screen repeats its rows: their cells read on in order.
            self._row = a["data-group"]
            self.rows.setdefault(self._row, [])
        elif tag == "td" and self._row:
            self._cell, self._text = True, ""
        elif tag == "div" and a.get("data-k"):
            self._card = a["data-k"]
        elif tag == "p" and a.get("data-headline"):
            self._in_headline = True
        elif tag == "div" and a.get("class") == "v" and self._card:
            self._cell, self._text = True, ""

    def handle_data(self, data: str) -> None:
        if self._cell:
            self._text += data
        if self._in_headline:
            self.headline += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "p":
            self._in_headline = False
        if tag == "td" and self._row and self._cell:
            self.rows[self._row].append(self._text)
            self._cell = False
        elif tag == "tr":
            self._row = None
        elif tag == "div" and self._card and self._cell:
            self.cards[self._card] = self._text
            self._cell, self._card = False, None


def test_html_is_self_contained_and_matches_ledger(ledger: tuple[str, list[LedgerRecord]], tmp_path: Path) -> None:
    url, rows = ledger
    out, charts = tmp_path / "report.html", tmp_path / "charts"
    cli("--ledger", url, "--format", "html", "--out", str(out), "--group-by", "decision", "--charts", str(charts))
    page = _Page()
    page.feed(out.read_text(encoding="utf-8"))
    # Self-contained: every src/href is inline data.
    assert page.urls and all(u.startswith("data:image/png;base64,") for u in page.urls)
    assert set(page.images) == {"dollars", "savings", "decisions", "tokens_by_role", "latency", "top_calls"}
    for name, src in page.images.items():
        png = base64.b64decode(src.split(",", 1)[1])
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        assert (charts / f"{name}.png").read_bytes() == png  # the PNG files are the same charts
    groups = by(rows, "decision")
    for key, group_rows in [*groups.items(), ("all", rows)]:
        want = table_cells(expected(group_rows))
        assert page.rows[key][1: 1 + len(want)] == want, key
    want = expected(rows)
    # Net dollars lead the page: the first card, and the headline above the cards.
    assert next(iter(page.cards)) == "net dollars (+ saved)"
    assert [page.cards["net dollars (+ saved)"], page.cards["cost / student alone"]] == dollar_cells(want)
    assert page.headline.startswith(f"Teaching cost ${-want['cost_saved_usd']:.3g} (")
    assert f"more than the student alone would have, over {want['dollar_calls']} of {want['calls']} calls" in page.headline
    assert page.cards["calls"] == str(want["calls"])
    assert page.cards["net tokens (+ saved)"] == f"{-want['net_tokens']:+,} ({pct(-want['net_rate'])})"
    assert page.cards["pending spooled"] == "0"


def test_charts_have_the_expected_size(ledger: tuple[str, list[LedgerRecord]]) -> None:
    from matplotlib.image import imread

    from atlas_middleware.offline.reporting.charts import render_charts

    _, rows = ledger
    for png in render_charts(summarize(rows, ledger="x")).values():
        image = imread(io.BytesIO(png), format="png")
        assert image.shape[:2] == (400, 800)
        assert image.std() > 0.01  # something was drawn


def test_charts_without_matplotlib_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from atlas_middleware.offline.reporting.charts import render_charts

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(MissingExtraError, match=r"atlas-middleware\[report\]"):
        render_charts(summarize([], ledger="x"))


def test_text_formats_do_not_import_matplotlib(ledger: tuple[str, list[LedgerRecord]]) -> None:
    url, _ = ledger
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom atlas_middleware.cli.app import app\n"
        "from atlas_middleware.cli import commands\n"
        f"r = CliRunner().invoke(app, ['report', '--ledger', {url!r}, '--format', 'csv'])\n"
        "assert r.exit_code == 0, r.output\nassert 'matplotlib' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
