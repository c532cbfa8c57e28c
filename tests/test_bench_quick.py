"""The benchmarks run in quick mode in CI so they never rot. Their speed figures are not
asserted against targets (those live in docs/benchmarks.md, measured by hand), but every
row the page quotes must be printed, with figures that are numbers in a plausible range."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "bench"
QUICK = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_") and p.name != "teacher_throughput.py")

Table = list[dict[str, str]]
_NUM = re.compile(r"^[+-]?[\d,]*\.?\d+(?:x|%| MiB| ms| s)?$")


def tables(out: str) -> list[Table]:
    """Every markdown table in ``out``, as rows keyed by header."""
    found: list[Table] = []
    lines = out.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.startswith("|") and re.match(r"^\|[\s:|-]+\|$", lines[i + 1]) and "---" in lines[i + 1]:
            head = [c.strip() for c in line.strip("|").split("|")]
            rows = []
            for row in lines[i + 2:]:
                if not row.startswith("|"):
                    break
                rows.append(dict(zip(head, (c.strip() for c in row.strip("|").split("|")), strict=False)))
            found.append(rows)
    return found


def number(cell: str) -> float:
    cell = cell.replace("**", "").strip()
    assert _NUM.match(cell), f"not a figure: {cell!r}"
    return float(re.sub(r"[^\d.+-]", "", cell))


def in_range(cell: str, low: float, high: float) -> float:
    value = number(cell)
    assert low <= value <= high, f"{cell} outside [{low}, {high}]"
    return value


def check_import_time(out: str) -> None:
    (rows, _) = tables(out)[:2]
    by = {r["what is imported"]: r for r in rows}
    assert {"bare interpreter", "`from atlas_middleware import Atlas` (this tree)"} <= set(by)
    for r in rows:
        in_range(r["wall best ms"], 1, 30_000)
        in_range(r["CPU best ms"], 1, 30_000)
    assert number(by["`from atlas_middleware import Atlas` (this tree)"]["wall best ms"]) > number(
        by["bare interpreter"]["wall best ms"])


def check_latency(out: str) -> None:
    rows, streams = tables(out)
    assert {(r["policy"], r["driver"]) for r in rows} == {
        (p, d) for p in ("strict", "verify", "audit", "off") for d in ("sync", "async")}
    for r in rows:
        critical = in_range(r["critical path s"], 0.05, 10)
        assert in_range(r["wall s"], 0.05, 30) >= critical * 0.99  # nothing beats the critical path
        in_range(r["over critical path"], -1, 1000)
    assert {(r["stream"], r["driver"]) for r in streams} == {
        (p, d) for p in ("student alone", "off", "audit", "strict") for d in ("sync", "async")}
    for r in streams:
        expected = in_range(r["expected first token s"], 0.001, 10)
        first = in_range(r["first token s"], 0.001, 30)
        assert first >= expected * 0.95  # nothing comes before the student's first token
        assert in_range(r["whole answer s"], 0.001, 30) >= first
    by = {(r["stream"], r["driver"]): number(r["first token s"]) for r in streams}
    for driver in ("sync", "async"):  # a live stream's first token comes before the replay's
        assert by[("off", driver)] < by[("strict", driver)]


def check_memory(out: str) -> None:
    sync, async_ = tables(out)
    for rows in (sync, async_):
        calls = [number(r["calls"]) for r in rows]
        assert calls == sorted(calls) and len(calls) == 10
        for r in rows:
            in_range(r["RSS MiB"], 5, 4096)
    assert "sync: ledger rows 1000" in out and "async: ledger rows 1000" in out


def check_overhead(out: str) -> None:
    (rows,) = tables(out)
    by = {r["variant"]: r for r in rows}
    assert {"raw httpx", "litellm.completion", "taught, lean path", "taught async, lean path",
            "taught, LiteLLM path", "middleware only", "middleware only, async"} <= set(by)
    for r in rows:
        in_range(r["wall p50 ms"], 0.01, 10_000)
        in_range(r["client CPU ms/call"], 0.01, 10_000)
    assert number(by["litellm.completion"]["CPU vs one litellm.completion"]) == 1.0


def check_proxy_load(out: str) -> None:
    (rows,) = tables(out)
    assert {(r["clients"], r["row"]) for r in rows} == {
        (c, row) for c in ("1", "16") for row in ("plain LiteLLM", "atlas opt-out", "atlas off", "atlas strict")}
    for r in rows:
        in_range(r["req/s"], 0.5, 100_000)
        in_range(r["p50 ms"], 1, 60_000)
        assert r["errors"] == "0", r
    # every answer counted by its reason: the teacher was used on the taught rows
    assert "atlas strict: agreement" in out and "atlas off: policy_off" in out and "FAILED" not in out


def check_policy_frontier(out: str) -> None:
    main, sweep = tables(out)
    assert [(r["policy"].replace(" **(default)**", ""), r["judge"]) for r in main] == [
        ("strict", "teacher (auto)"), ("strict", "answer"), ("verify", "teacher (auto)"),
        ("verify", "answer"), ("audit", "teacher (auto)"), ("off", "teacher (auto)")]
    for r in main + sweep:
        in_range(r["delivered accuracy"], 0, 100)
        in_range(r["NDR"], 0, 100)
        in_range(r["calls"], 1, 10)
    assert len(sweep) == 10


def check_transport_cpu(out: str) -> None:
    (rows,) = tables(out)
    assert [r["client"].split(",")[0] for r in rows] == [
        "httpx.AsyncClient", "aiohttp.ClientSession", "httpx.Client", "LeanHTTPBackend.acomplete (aiohttp)",
        "LeanHTTPBackend.complete (httpx)"]
    for r in rows:
        in_range(r["CPU ms / request"], 0.001, 1000)
        in_range(r["wall ms / request"], 0.001, 1000)


def check_fleet(out: str) -> None:
    (rows,) = tables(out)
    assert [(r["replicas"], r["clients"]) for r in rows] == [("1", "8"), ("2", "8")]
    for r in rows:
        in_range(r["taught req/s"], 0.1, 100_000)
        in_range(r["p50 s"], 0.001, 600)
        in_range(r["proxy CPU ms/req"], 0.01, 10_000)
        assert r["untaught"] == "0" and r["errors"] == "0", r
    assert rows[0]["vs 1 replica"] == "1.00x"
    in_range(rows[1]["vs 1 replica"], 0.05, 100)


def check_fleet_costs(out: str) -> None:
    (rows,) = tables(out)
    assert [r["operation"] for r in rows] == [
        "redis breaker.allow (before a call)", "redis breaker.success (after)", "redis baselines.add (after)",
        "asyncio.to_thread hop of a no-op", "ledger append, PostgreSQL", "ledger append, SQLite",
        "teacher call, one teacher", "teacher call, a group of two"]
    for r in rows:
        in_range(r["CPU µs"], 0.1, 1_000_000)


def check_learned_gate(out: str) -> None:
    runs, families = tables(out)
    assert [(r["policy"], r["gate"]) for r in runs] == [
        (p, g) for p in ("strict", "audit") for g in ("always", "learned", "learned + reuse")]
    by = {(r["policy"], r["gate"]): r for r in runs}
    for r in runs:
        in_range(r["delivered accuracy"], 0, 100)
        in_range(r["teacher calls"], 0, 1)
        # NDR kept: never below always-teach under the same policy
        assert number(r["NDR"]) >= number(by[(r["policy"], "always")]["NDR"]), r
    strict = by[("strict", "learned")]
    assert number(strict["calls skipped by the gate"]) > 0 and number(strict["vs always"]) < 0
    assert number(by[("strict", "learned + reuse")]["teacher calls avoided by reuse"]) > 0
    reached = {(r["policy"], r["gate"], r["family"]): r for r in families}
    for family, right in (("helps", "taught"), ("harms", "closed"), ("inert", "closed")):
        row = reached[("strict", "learned", family)]
        assert row["right state"] == right and row["final state"] == right, row


def check_adaptive_default(out: str) -> None:
    main, families = tables(out)
    by = {r["policy"].replace(" **(default)**", ""): r for r in main}
    assert list(by) == ["adaptive", "strict", "audit"]
    for r in main:
        in_range(r["delivered accuracy"], 0, 100)
        in_range(r["vs per-family oracle"], -100, 100)
        in_range(r["NDR"], 0, 100)
        in_range(r["dollars vs alone"], 0.1, 10)
        in_range(r["student tokens vs alone"], 0.1, 10)
    # The mechanism, not a speed: the default keeps NDR where strict does, for fewer dollars.
    assert number(by["adaptive"]["NDR"]) >= 99.0
    assert number(by["adaptive"]["dollars vs alone"]) < number(by["strict"]["dollars vs alone"])
    # An audit's baseline and judge run after delivery: counted all the same (probe, teacher
    # and guided answer are 3 calls; the sampled tenth adds its comparison's).
    assert 3.05 < number(by["audit"]["calls"]) < 3.5
    rows = {r["family"]: r for r in families}
    assert set(rows) == {"helps", "helps-little", "harms", "inert", "tail"}
    assert rows["harms"]["final mode"] == "skip" and rows["helps"]["final mode"] in ("strict", "verify", "audit")
    assert "Default: mix A: NDR" in out


def check_stream_chunks(out: str) -> None:
    (rows,) = tables(out)
    by = {r["stream"]: r for r in rows}
    assert len(by) == 6 and "ChunkWriter alone" in by
    for r in rows:
        in_range(r["chunks"], 1, 10_000)
        in_range(r["per chunk us"], 0.01, 100_000)
    # LiteLLM's own chunk objects cost far less per chunk than LiteLLM's stream wrapper adds
    reference = next(r for label, r in by.items() if label.startswith("litellm.completion"))
    assert number(by["ChunkWriter alone"]["per chunk us"]) < number(reference["per chunk us"])


CHECKS = {name[len("check_"):]: fn for name, fn in dict(globals()).items() if name.startswith("check_")}


def test_every_benchmark_has_a_check() -> None:
    assert {p.stem for p in QUICK} == set(CHECKS)


@pytest.mark.slow
@pytest.mark.parametrize("script", QUICK, ids=[p.name for p in QUICK])
def test_benchmark_quick_mode_runs_and_prints_its_figures(script: Path) -> None:
    if script.stem in ("fleet", "fleet_costs") and not (os.environ.get("TEST_REDIS_URL")
                                                      and os.environ.get("TEST_POSTGRES_URL")):
        pytest.skip(f"bench/{script.name} needs Redis and PostgreSQL: run scripts/ci-services.sh (CI always does)")
    proc = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    CHECKS[script.stem](proc.stdout)
