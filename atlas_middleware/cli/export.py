"""``atlas-middleware export``: teacher-training data from a ledger that stored texts."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated

import typer

from ..config import AtlasConfig
from ..errors import AtlasError, ConfigError
from ..ledger import LedgerQuery, open_ledger
from .app import app
from .options import ConfigOpt, LedgerOpt
from .report import parse_when

_DECISIONS = ("guided", "baseline", "student_only")


@app.command("export")
def export_command(
    out: Annotated[Path, typer.Option("--out", help="The folder to write (train/validation files and export.json).")],
    fmt: Annotated[str, typer.Option("--format", help="jsonl (the full schema) | rcl (the published training code's rows) | hf (a datasets.DatasetDict).")] = "jsonl",
    ledger: LedgerOpt = None,
    config: ConfigOpt = None,
    since: Annotated[str | None, typer.Option("--since", help="From this time on: ISO date/datetime (UTC) or 7d, 12h, ...")] = None,
    until: Annotated[str | None, typer.Option("--until", help="Before this time (exclusive); same forms as --since.")] = None,
    family: Annotated[str | None, typer.Option("--family", help="Only calls of this task family (t:... or f:...).")] = None,
    policy: Annotated[str | None, typer.Option("--policy", help="Only calls made under this policy.")] = None,
    decision: Annotated[str | None, typer.Option("--decision", help="Only calls that delivered this: guided | baseline | student_only.")] = None,
    unchanged_as: Annotated[str, typer.Option("--unchanged-as", help="How to read an unchanged comparison: skip (reward null) | correct | wrong.")] = "skip",
    grades: Annotated[Path | None, typer.Option("--grades", help='JSONL of {"call_id", "guided_correct", "baseline_correct"}: exact rewards for these calls.')] = None,
    tokenizer: Annotated[Path | None, typer.Option("--tokenizer", help="A local Hugging Face tokenizer folder to count teaching tokens (default: tiktoken cl100k_base, offline).")] = None,
    efficiency_weight: Annotated[float, typer.Option("--efficiency-weight", help="The reward's efficiency weight (the published config: 1.0).")] = 1.0,
    redact: Annotated[str | None, typer.Option("--redact", help="builtin (e-mails, phone and card numbers, keys) or package.module:function (str -> str), applied to every text.")] = None,
    validation_share: Annotated[float, typer.Option("--validation-share", min=0.0, max=1.0, help="Share of task families held out for validation.")] = 0.1,
    min_reward: Annotated[float | None, typer.Option("--min-reward", help="Keep only examples with a reward of at least this.")] = None,
    include_untaught: Annotated[bool, typer.Option("--include-untaught", help="Also export calls that got no teaching (reward null).")] = False,
) -> None:
    """The question, the student's approach, the teaching, both answers, outcome and reward of every taught call."""
    from ..offline import export as ex

    fmt = fmt.lower()
    if fmt not in ex.FORMATS:
        raise typer.BadParameter(f"--format must be one of {', '.join(ex.FORMATS)}")
    if unchanged_as not in ex.UNCHANGED_AS:
        raise typer.BadParameter(f"--unchanged-as must be one of {', '.join(ex.UNCHANGED_AS)}")
    if decision is not None and decision not in _DECISIONS:
        raise typer.BadParameter(f"--decision must be one of {', '.join(_DECISIONS)}")
    query = LedgerQuery(since=parse_when(since) if since else None, until=parse_when(until) if until else None,
                        task_family=family)
    options = ex.ExportOptions(policy=policy, decision=decision, unchanged_as=typing.cast(typing.Any, unchanged_as),
                            efficiency_weight=efficiency_weight, validation_share=validation_share,
                            include_untaught=include_untaught, min_reward=min_reward)
    try:
        cfg = AtlasConfig.load(str(config) if config else None, ledger=ledger)
        options.context_chars = cfg.context_chars
        hook = ex.load_redactor(redact)
        graded = ex.read_grades(grades) if grades else None
        counter = ex.open_counter(tokenizer)
        store = open_ledger(cfg.ledger_url())
        try:
            records = store.records(query)
            url = store.url
        finally:
            store.close()
        if not records and not (since or until or family):
            # A mistyped path opens a new, empty ledger: say so and write nothing. (With
            # filters, an empty selection is an answer: a daily export may find no call.)
            raise ConfigError(f"no call is recorded in the ledger {url}: nothing to export "
                              "(check --ledger / ATLAS_LEDGER)")
        examples, summary = ex.build_examples(records, counter, options, redact=hook, grades=graded)
        manifest = {
            "ledger": url, "since": since, "until": until, "family": family, "policy": policy,
            "decision": decision, "unchanged_as": unchanged_as, "efficiency_weight": efficiency_weight,
            "teaching_tokens_counted_by": counter.name, "redact": redact, "validation_share": validation_share,
            "min_reward": min_reward, "include_untaught": include_untaught, "grades": str(grades) if grades else None,
            "records": summary.records, "written": dict(summary.written), "skipped": dict(summary.skipped),
        }
        paths = ex.write_export(examples, typing.cast(typing.Any, fmt), out, manifest)
    except AtlasError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for path in paths:
        typer.echo(f"wrote {path}", err=True)
    typer.echo(summary.text())
    if summary.skipped.get("no_texts"):
        typer.echo(f"note: {summary.skipped['no_texts']} record(s) stored no texts: {ex.STORE_TEXTS_HINT}", err=True)
