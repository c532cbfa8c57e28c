"""Issue 25 item 7: a report a newcomer reads right. One plain sentence of what teaching cost
or saved, one sign convention (+ = saved), readable family names, tables that fit the
terminal, and ``--model`` that finds a model with or without its provider prefix."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from test_report_support import make_calls
from typer.testing import CliRunner

from atlas_middleware.cli.app import app
from atlas_middleware.cli.commands import report as _registered  # noqa: F401
from atlas_middleware.ledger import LedgerRecord, SQLiteLedger
from atlas_middleware.offline.reporting import render_table, summarize
from atlas_middleware.offline.reporting.render import headline
from atlas_middleware.offline.reporting.summary import GroupSummary, family_label

runner = CliRunner()
PREFIXED = {"gpt-small": "openai/gpt-small", "llama-local": "ollama/llama-local"}


@pytest.fixture(scope="module")
def prefixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[LedgerRecord]]:
    """Real calls, stored under provider-prefixed model names as LiteLLM users write them,
    with texts kept for half of them (``store_texts``)."""
    folder = tmp_path_factory.mktemp("readable")
    make_calls(f"sqlite:///{folder / 'raw.db'}", rounds=2, spool="none", store_texts=True)
    raw = SQLiteLedger(folder / "raw.db")
    store = SQLiteLedger(folder / "ledger.db")
    for r in raw.records():
        store.append(r.model_copy(update={"student_model": PREFIXED[r.student_model]}))
    raw.close()
    rows = store.records()
    store.close()
    return f"sqlite:///{folder / 'ledger.db'}", rows


def test_headline_says_in_words_what_teaching_cost() -> None:
    cost = GroupSummary(calls=1204, dollar_calls=1204, cost_saved_usd=-12.40, student_alone_cost_usd=33.5135,
                        cost_vs_alone=1.37)
    assert headline(cost).startswith(
        "Teaching cost $12.40 (37.0%) more than the student alone would have, over 1,204 calls.")
    saved = GroupSummary(calls=10, dollar_calls=8, cost_saved_usd=0.25, student_alone_cost_usd=1.0, cost_vs_alone=0.75)
    assert headline(saved).startswith("Teaching saved $0.25 (25.0%) against the student alone, over 8 of 10 calls.")


def test_headline_falls_back_to_net_tokens_without_prices() -> None:
    # The page: +5,936 net tokens against a student-alone total of 633 tokens.
    g = GroupSummary(calls=40, measured_calls=12, net_tokens=5936, baseline_total_tokens=633)
    g.net_rate = 5936 / 633
    assert headline(g).startswith(
        "Teaching cost 5,936 tokens (937.8%) more than the student alone would have, over 12 of 40 calls")


@pytest.mark.parametrize("width", [80, 120])
def test_terminal_table_fits_the_terminal(prefixed: tuple[str, list[LedgerRecord]], width: int) -> None:
    _, rows = prefixed
    text = render_table(summarize(rows, ledger="sqlite:///a/rather/long/path/to/the/ledger.db",
                                  group_by="family"), width=width)
    too_long = [ln for ln in text.splitlines() if len(ln) > width]
    assert too_long == []
    # Nothing was cut: every family and every model's figures are still there.
    for key in {r.task_family for r in rows if r.task_family}:
        assert key[:20] in text


def test_cli_table_takes_the_terminal_width(prefixed: tuple[str, list[LedgerRecord]]) -> None:
    url, _ = prefixed
    result = runner.invoke(app, ["report", "--ledger", url], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert max(len(ln) for ln in result.stdout.splitlines()) <= 80


def test_one_sign_convention_plus_is_saved(prefixed: tuple[str, list[LedgerRecord]]) -> None:
    _, rows = prefixed
    s = summarize(rows, ledger="x")
    assert s.overall.net_tokens > 0  # these calls cost tokens: every signed figure shows a minus
    text = render_table(s, width=400)
    assert "(+ saved)" in text
    assert f"{-s.overall.net_tokens:+,}" in text
    assert "- = saved" not in text and "negative: the middleware saved" not in text


def test_families_have_readable_labels_only_from_stored_texts(prefixed: tuple[str, list[LedgerRecord]]) -> None:
    _, rows = prefixed
    s = summarize(rows, ledger="x")
    derived = [g for g in s.families if g.key.startswith("f:")]
    assert derived and all(g.label == "what is <num> + <num>?" for g in derived)
    assert "what is <num> + <num>?" in render_table(s, width=120)
    # Without stored texts there is nothing to read a label from: the key stays the name.
    bare = summarize([r.model_copy(update={"prompt_text": None}) for r in rows], ledger="x")
    assert all(g.label is None for g in bare.families)
    tagged = next(g for g in s.families if g.key.startswith("t:"))
    assert tagged.label is None  # a tag is its own readable name


def test_model_filter_matches_without_the_provider_prefix(prefixed: tuple[str, list[LedgerRecord]]) -> None:
    url, rows = prefixed
    result = runner.invoke(app, ["report", "--ledger", url, "--json", "--model", "gpt-small"])
    assert result.exit_code == 0, result.output
    want = [r for r in rows if r.student_model == "openai/gpt-small"]
    assert json.loads(result.stdout)["overall"]["calls"] == len(want) > 0
    exact = runner.invoke(app, ["report", "--ledger", url, "--json", "--model", "openai/gpt-small"])
    assert json.loads(exact.stdout)["overall"]["calls"] == len(want)


def test_model_filter_with_no_match_lists_the_ledgers_models(prefixed: tuple[str, list[LedgerRecord]]) -> None:
    url, _ = prefixed
    result = runner.invoke(app, ["report", "--ledger", url, "--json", "--model", "gpt-4o-mini"])
    assert result.exit_code == 0
    assert re.search(r"no calls to model 'gpt-4o-mini'.*ollama/llama-local, openai/gpt-small", result.stderr)


def test_model_filter_hint_on_an_empty_ledger(tmp_path: Path) -> None:
    result = runner.invoke(app, ["report", "--ledger", f"sqlite:///{tmp_path / 'e.db'}", "--model", "x"])
    assert result.exit_code == 0 and "the ledger has no calls" in result.stderr


def test_family_label_masks_before_it_cuts() -> None:
    # A quoted literal longer than the label must be masked whole, not shown cut in half.
    secret = "account of Jane Doe " * 20
    prompt = json.dumps([{"role": "system", "content": f'Summarise "{secret}" for customer 4242.'},
                         {"role": "user", "content": "and Bob's?"}])
    label = family_label(prompt)
    assert label == "summarise <str> for customer <num>."
    assert family_label(json.dumps([{"role": "user", "content": "Reset password for a@b.com " * 9}])) == (
        "reset password for <email> reset password for <…")
    assert family_label("not json") is None
