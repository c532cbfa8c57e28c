"""Import time of ``from atlas_middleware import Atlas``, against the floor it cannot go under.

Each row is one statement run by a fresh interpreter; the rows take turns, run after run, so
load from other jobs on a shared machine falls on every row alike. Printed per row: the best
and the median wall time of the whole process, its best CPU time (user + system, steadier
than wall time on a busy machine), and each best minus the bare interpreter's best (what the
statement itself costs). The floor is what any pydantic-based asyncio client
with a SQLite ledger imports; the package adds its own modules on top.

A second table gives ``python -X importtime``'s cumulative figure for ``atlas_middleware``
(median over the runs) and the modules with the largest self time in the median run.

    python bench/import_time.py                 # 9 runs per row
    python bench/import_time.py --quick         # 3 runs (CI)
    python bench/import_time.py --compare DIR   # also a tree holding another atlas_middleware/
    python bench/import_time.py --no-bytecode   # compile from source every time, no .pyc

By default the children read and write bytecode under a cache folder in the temporary
directory (``PYTHONPYCACHEPREFIX``), as an installed wheel has its ``.pyc`` files, even where
``PYTHONDONTWRITEBYTECODE`` is set (the development machine sets it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ATLAS = "from atlas_middleware import Atlas"
ROWS = {
    "bare interpreter": "pass",
    "pydantic (top level only), asyncio, sqlite3": "import pydantic, asyncio, sqlite3",
    "floor: pydantic BaseModel/Field, asyncio, sqlite3":
        "from pydantic import BaseModel, ConfigDict, Field; import asyncio, sqlite3",
}


def child_env(bytecode: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if bytecode:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "atlas-import-bench-pyc")
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONPYCACHEPREFIX", None)
    return env


def run_ms(code: str, cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) milliseconds of one interpreter running ``code``."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=cwd, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = (time.perf_counter() - start) * 1000
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, code)
    return wall, (usage.ru_utime + usage.ru_stime) * 1000


def importtime(cwd: Path, env: dict[str, str]) -> tuple[float, list[tuple[float, str]]]:
    """Cumulative ms of ``atlas_middleware`` and (self ms, module) of the modules it imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", ATLAS], cwd=cwd, env=env,
                          check=True, capture_output=True, text=True)
    total, selfs = float("nan"), []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        own, cumulative, name = line[len("import time:"):].split("|")
        if name == " site":  # the interpreter's start-up ends here
            selfs = []
            continue
        selfs.append((int(own) / 1000, name.strip()))
        if name.strip() == "atlas_middleware":
            total = int(cumulative) / 1000
    return total, selfs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 runs per row")
    parser.add_argument("-n", "--runs", type=int, default=None, help="runs per row (default 9)")
    parser.add_argument("--compare", type=Path, action="append", default=[],
                        help="a folder holding another atlas_middleware/ package (e.g. `git archive` of a commit)")
    parser.add_argument("--no-bytecode", action="store_true", help="no .pyc: compile every module every time")
    parser.add_argument("--top", type=int, default=12, help="modules listed by self time")
    args = parser.parse_args()
    runs = args.runs or (3 if args.quick else 9)
    env = child_env(not args.no_bytecode)

    trees = {"this tree": ROOT, **{str(d): d.resolve() for d in args.compare}}
    rows: dict[str, tuple[str, Path]] = {name: (code, ROOT) for name, code in ROWS.items()}
    for label, tree in trees.items():
        rows[f"`{ATLAS}` ({label})"] = (ATLAS, tree)

    for code, cwd in rows.values():  # warm-up: bytecode written, files in the page cache
        run_ms(code, cwd, env)
    walls: dict[str, list[float]] = {name: [] for name in rows}
    cpus: dict[str, list[float]] = {name: [] for name in rows}
    profiles: dict[str, list[tuple[float, list[tuple[float, str]]]]] = {label: [] for label in trees}
    for _ in range(runs):
        for name, (code, cwd) in rows.items():
            wall, cpu = run_ms(code, cwd, env)
            walls[name].append(wall)
            cpus[name].append(cpu)
        for label, tree in trees.items():
            profiles[label].append(importtime(tree, env))

    try:
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "n/a"
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {load}, {runs} runs per row, "
          f"{'no .pyc' if args.no_bytecode else 'with .pyc'}\n")
    bare, bare_cpu = min(walls["bare interpreter"]), min(cpus["bare interpreter"])
    print("| what is imported | wall best ms | wall median ms | wall best minus bare | CPU best ms | CPU best minus bare |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, values in walls.items():
        cpu = min(cpus[name])
        print(f"| {name} | {min(values):.1f} | {statistics.median(values):.1f} | {min(values) - bare:.1f} "
              f"| {cpu:.1f} | {cpu - bare_cpu:.1f} |")

    print("\n| `-X importtime` | atlas_middleware cumulative ms (median) | largest self times in the median run, ms |")
    print("|---|---:|---|")
    for label, samples in profiles.items():
        samples.sort(key=lambda s: s[0])
        total, selfs = samples[len(samples) // 2]
        top = ", ".join(f"{name} {ms:.1f}" for ms, name in sorted(selfs, reverse=True)[: args.top])
        print(f"| {label} | {total:.1f} | {top} |")


if __name__ == "__main__":
    main()
