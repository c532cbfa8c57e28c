"""Memory stays flat over a long run of taught calls.

Runs N calls (strict policy, SQLite ledger, sessions and a bounded session cache in play)
through an ``Atlas`` with instant in-process backends, once per driver, separately: N
``completion`` calls one after another (the thread driver), then, on a fresh ``Atlas``, N
``acompletion`` calls 50 at a time on one event loop (the async driver, as a proxy worker
runs them). After each tenth of a run it prints the resident set size. Flat means the last
tenths grow by no more than noise.

    python bench/memory.py            # 10,000 calls per driver
    python bench/memory.py --quick    # 1,000 calls per driver (CI runs this)
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


def _atlas(tmp: str, name: str) -> tuple[Atlas, ScriptedBackend, ScriptedBackend]:
    student = ScriptedBackend({"probe": "plan", "baseline": "The answer is 41", "guided": "The answer is 42"})
    teacher = ScriptedBackend({"teacher": teacher_reply("Check the carry."), "judge_pair": "<verdict>A</verdict>"})
    atlas = Atlas(teacher="t", student_backend=student, teacher_backend=teacher, policy="strict",
                  judge="teacher", ledger=f"sqlite:///{tmp}/{name}.db")
    atlas.sessions.max_entries = 500  # sessions come and go; the cache must stay bounded
    return atlas, student, teacher


def _sampled(n: int, samples: list[tuple[int, float]], done: int, doubles: tuple[ScriptedBackend, ...]) -> None:
    for d in doubles:
        d.calls.clear()  # the scripted doubles keep a call log; the middleware must not
    if done // max(1, n // 10) > len(samples):
        gc.collect()
        samples.append((done, rss_mib()))


def run_sync(n: int, tmp: str) -> tuple[list[tuple[int, float]], int]:
    """``n`` calls one after another through ``Atlas.completion`` (the thread driver)."""
    atlas, student, teacher = _atlas(tmp, "sync")
    samples: list[tuple[int, float]] = []
    for done in range(1, n + 1):
        atlas.completion(model="s", messages=QUESTION, atlas={"session_id": f"task-{done}"})
        _sampled(n, samples, done, (student, teacher))
    rows = len(atlas.ledger.records())
    atlas.close()
    return samples, rows


def run_async(n: int, tmp: str, batch: int = 50) -> tuple[list[tuple[int, float]], int]:
    """``n`` calls through ``Atlas.acompletion``, ``batch`` at a time, on one long-lived
    event loop (as a proxy worker runs them)."""
    atlas, student, teacher = _atlas(tmp, "async")
    samples: list[tuple[int, float]] = []

    async def go() -> None:
        done = 0
        while done < n:
            size = min(batch, n - done)
            await asyncio.gather(*(atlas.acompletion(model="s", messages=QUESTION,
                                                     atlas={"session_id": f"task-{done + i}"})
                                   for i in range(size)))
            done += size
            _sampled(n, samples, done, (student, teacher))
        await atlas.aflush()

    asyncio.run(go())
    rows = len(atlas.ledger.records())
    atlas.close()
    return samples, rows


def report(driver: str, n: int, samples: list[tuple[int, float]], rows: int) -> None:
    print(f"\n{driver}: {n} taught calls (strict, teacher judge, SQLite ledger, {len(samples)} samples)\n")
    print("| calls | RSS MiB |")
    print("|---:|---:|")
    for calls, rss in samples:
        print(f"| {calls} | {rss:.1f} |")
    half = len(samples) // 2
    growth = samples[-1][1] - samples[half][1]
    print(f"\n{driver}: ledger rows {rows}; RSS growth over the second half: {growth:+.1f} MiB "
          f"({'flat' if growth < 5 else 'GROWING'}; threshold 5 MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-n", type=int, default=None, help="calls per driver")
    args = parser.parse_args()
    n = args.n or (1000 if args.quick else 10_000)
    with tempfile.TemporaryDirectory() as tmp:
        for driver, run in (("sync", run_sync), ("async", run_async)):
            samples, rows = run(n, tmp)
            report(driver, n, samples, rows)


if __name__ == "__main__":
    main()
