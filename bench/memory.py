"""Memory stays flat over a long run of taught calls.

Runs N calls (strict policy, SQLite ledger, sessions and a bounded session cache in play)
through one ``Atlas`` with instant in-process backends, and prints the resident set size
after each tenth of the run. Flat means the last tenths grow by no more than noise.

    python bench/memory.py            # 10,000 calls
    python bench/memory.py --quick    # 2,000 calls (CI runs this)
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tempfile
from pathlib import Path

from atlas_middleware import Atlas
from atlas_middleware.testing import ScriptedBackend, teacher_reply

QUESTION = [{"role": "user", "content": "What is 20 + 22?"}]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-n", type=int, default=None)
    args = parser.parse_args()
    n = args.n or (2000 if args.quick else 10_000)

    student = ScriptedBackend({"probe": "plan", "baseline": "The answer is 41", "guided": "The answer is 42"})
    teacher = ScriptedBackend({"teacher": teacher_reply("Check the carry."), "judge_pair": "<verdict>A</verdict>"})
    with tempfile.TemporaryDirectory() as tmp:
        atlas = Atlas(teacher="t", student_backend=student, teacher_backend=teacher, policy="strict",
                      judge="teacher", ledger=f"sqlite:///{tmp}/ledger.db")
        atlas.sessions.max_entries = 500  # sessions come and go; the cache must stay bounded
        samples = []
        step = n // 10

        async def batch(start: int) -> None:
            await asyncio.gather(*(
                atlas.acompletion(model="s", messages=QUESTION, atlas={"session_id": f"task-{start + i}"})
                for i in range(50)))

        done = 0
        while done < n:
            if done % 2 == 0:
                atlas.completion(model="s", messages=QUESTION, atlas={"session_id": f"task-{done}"})
                done += 1
            else:
                asyncio.run(batch(done))
                done += 50
            student.calls.clear()  # the scripted doubles keep a call log; the middleware must not
            teacher.calls.clear()
            if done // step > len(samples):
                gc.collect()
                samples.append((done, rss_mib()))
        rows = len(atlas.ledger.records())
        atlas.close()

    print(f"\n{n} taught calls (strict, teacher judge, SQLite ledger, {len(samples)} samples)\n")
    print("| calls | RSS MiB |")
    print("|---:|---:|")
    for calls, rss in samples:
        print(f"| {calls} | {rss:.1f} |")
    half = len(samples) // 2
    growth = samples[-1][1] - samples[half][1]
    print(f"\nledger rows: {rows}; RSS growth over the second half: {growth:+.1f} MiB "
          f"({'flat' if growth < 5 else 'GROWING'}; threshold 5 MiB)")


if __name__ == "__main__":
    main()
