"""Summarise ``mutmut results --all true`` per module: killed, survived, the score.

    python scripts/mutation_score.py mutation-results.txt [--equivalent scripts/equivalent_mutants.txt]

The score is (killed + timed out) / (killed + survived + timed out), over the mutants the tests
reach ("no tests" mutants are listed apart: code the decision tests do not run at all).
Mutants named in the equivalent-mutants file (one name per line, ``#`` comments, a reason
on each line) are left out of the score: they change no behaviour.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

_LINE = re.compile(r"^\s*([\w.]+)__mutmut_(\d+):\s*(.+?)\s*$")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--equivalent", default=str(Path(__file__).with_name("equivalent_mutants.txt")))
    args = ap.parse_args()
    equivalent = set()
    eq_path = Path(args.equivalent)
    if eq_path.exists():
        for line in eq_path.read_text().splitlines():
            name = line.split("#", 1)[0].strip()
            if name:
                equivalent.add(name)
    per: dict[str, Counter[str]] = defaultdict(Counter)
    for line in Path(args.results).read_text().splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        name, status = f"{m.group(1)}__mutmut_{m.group(2)}", m.group(3)
        module = m.group(1).rsplit(".", 1)[0]
        per[module]["equivalent" if name in equivalent and status == "survived" else status] += 1
    total: Counter[str] = Counter()
    print("| module | killed | survived | timeout | equivalent | no tests | score |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for module in sorted(per):
        c = per[module]
        total.update(c)
        print(f"| {module} | {c['killed']} | {c['survived']} | {c['timeout']} | {c['equivalent']} | "
              f"{c['no tests']} | {_score(c)} |")
    print(f"| **all** | {total['killed']} | {total['survived']} | {total['timeout']} | {total['equivalent']} | "
          f"{total['no tests']} | **{_score(total)}** |")


def _score(c: Counter[str]) -> str:
    reached = c["killed"] + c["survived"] + c["timeout"]
    return f"{100 * (c['killed'] + c['timeout']) / reached:.1f}%" if reached else "n/a"


if __name__ == "__main__":
    main()
