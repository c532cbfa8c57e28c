"""End-to-end wall time of each policy against its critical path.

Backends sleep realistic times: probe 0.3 s, teacher 1 s, guided 2 s, baseline 3 s, judge
0.5 s. The critical path of each policy is what no amount of concurrency can remove:

  strict  max(baseline, probe + teacher + guided) + judge   (answers differ: a judge runs)
  verify  probe + teacher + guided + judge                  (the grade passes)
  audit   probe + teacher + guided                          (the comparison runs after delivery)
  off     probe + teacher + guided

Target: every policy within 5% of its critical path, through both drivers.

    python bench/latency.py            # full delays
    python bench/latency.py --quick    # delays x 0.1 (CI runs this)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from atlas_middleware import Atlas  # noqa: E402
from atlas_middleware.testing import ScriptedBackend, teacher_reply  # noqa: E402

QUESTION = [{"role": "user", "content": "What is 20 + 22?"}]
DELAYS = {"probe": 0.3, "teacher": 1.0, "guided": 2.0, "baseline": 3.0, "judge": 0.5}


def critical_path(policy: str, d: dict[str, float]) -> float:
    chain = d["probe"] + d["teacher"] + d["guided"]
    return {
        "strict": max(d["baseline"], chain) + d["judge"],
        "verify": chain + d["judge"],
        "audit": chain,
        "off": chain,
    }[policy]


def build(policy: str, d: dict[str, float]) -> Atlas:
    student = ScriptedBackend(
        {"probe": "plan", "baseline": "The answer is 41", "guided": "The answer is 42"},
        delays={"probe": d["probe"], "guided": d["guided"], "baseline": d["baseline"]},
    )
    teacher = ScriptedBackend(
        {"teacher": teacher_reply("Check the carry."), "judge_pair": "<verdict>A</verdict>",
         "judge_score": "<verdict>9</verdict>"},
        delays={"teacher": d["teacher"], "judge_pair": d["judge"], "judge_score": d["judge"]},
    )
    return Atlas(teacher="t", student_backend=student, teacher_backend=teacher, policy=policy,
                 judge="teacher", audit_rate=1.0, ledger="none", teacher_timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="scale every delay by 0.1")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    d = {k: v * scale for k, v in DELAYS.items()}

    print(f"\ndelays (s): {d}; median of {args.runs} runs\n")
    print("| policy | driver | critical path s | wall s | over critical path |")
    print("|---|---|---:|---:|---:|")
    worst = 0.0
    for policy in ("strict", "verify", "audit", "off"):
        atlas = build(policy, d)
        for driver in ("sync", "async"):
            walls = []
            for _ in range(args.runs):
                t0 = time.perf_counter()
                if driver == "sync":
                    atlas.completion(model="s", messages=QUESTION)
                else:
                    asyncio.run(atlas.acompletion(model="s", messages=QUESTION))
                walls.append(time.perf_counter() - t0)
            atlas.flush()
            wall = sorted(walls)[len(walls) // 2]
            cp = critical_path(policy, d)
            over = wall / cp - 1
            worst = max(worst, over)
            print(f"| {policy} | {driver} | {cp:.3f} | {wall:.3f} | {over * 100:+.1f}% |")
        atlas.close()
    print(f"\nworst: {worst * 100:+.1f}% over the critical path (target: within 5%): "
          f"{'met' if worst <= 0.05 else 'NOT met'}")


if __name__ == "__main__":
    main()
