"""The benchmarks run in quick mode in CI so they never rot (their figures are not asserted:
speed targets live in docs/benchmarks.md, measured by hand)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "bench"
QUICK = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_") and p.name != "teacher_throughput.py")


@pytest.mark.slow
@pytest.mark.parametrize("script", QUICK, ids=[p.name for p in QUICK])
def test_benchmark_quick_mode_runs(script: Path) -> None:
    proc = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "|---" in proc.stdout  # printed its table
