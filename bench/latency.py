"""End-to-end wall time of each policy against its critical path.

Backends sleep realistic times: probe 0.3 s, teacher 1 s, guided 2 s, baseline 3 s, judge
0.5 s. The critical path of each policy is what no amount of concurrency can remove:

  strict  max(baseline, probe + teacher + guided) + judge   (answers differ: a judge runs)
  verify  probe + teacher + guided + judge                  (the grade passes)
  audit   probe + teacher + guided                          (the comparison runs after delivery)
  off     probe + teacher + guided

Target: every policy within 5% of its critical path, through both drivers.

Then time to first token of a stream (``stream=True``), against the student's own stream.
The student streams like a model: its first token 0.2 s after the request, the rest of its
answer spread over the call's time. Where nothing is compared before delivery (``off``,
``audit``) the guided answer streams live, so its first token comes once the probe and the
teacher are done; ``strict`` compares whole answers and replays the one it delivers:

  student alone   first
  off, audit      probe + teacher + first
  strict          max(baseline, probe + teacher + guided) + judge   (the whole decision)

    python bench/latency.py            # full delays
    python bench/latency.py --quick    # delays x 0.1 (CI runs this)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterator

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from atlas_middleware import Atlas  # noqa: E402
from atlas_middleware.messages import ChatRequest  # noqa: E402
from atlas_middleware.runtime.chunks import ChatChunk  # noqa: E402
from atlas_middleware.testing import ScriptedBackend, teacher_reply  # noqa: E402

QUESTION = [{"role": "user", "content": "What is 20 + 22?"}]
DELAYS = {"probe": 0.3, "teacher": 1.0, "guided": 2.0, "baseline": 3.0, "judge": 0.5, "first": 0.2}
ANSWERS = {"probe": "plan", "baseline": "The answer is 41 because two tens and two ones make it",
           "guided": "The answer is 42: two tens, then the carry, then the ones"}


class PacedStudent(ScriptedBackend):
    """A scripted student that streams like a model: the first chunk ``first`` seconds after
    the request, the others spread evenly over the rest of the call's delay."""

    def __init__(self, *args: object, first: float, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.first = first

    def _plan(self, request: ChatRequest) -> tuple[list[ChatChunk], float, float]:
        role, reply = self._resolve(request)
        pieces = self._pieces(request, reply)
        total = self._delay(role, reply)
        first = min(self.first, total)
        return pieces, first, (total - first) / max(1, len(pieces) - 1)

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        pieces, first, step = self._plan(request)
        time.sleep(first)
        for i, piece in enumerate(pieces):
            if i:
                time.sleep(step)
            yield piece

    async def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        pieces, first, step = self._plan(request)
        await asyncio.sleep(first)
        for i, piece in enumerate(pieces):
            if i:
                await asyncio.sleep(step)
            yield piece


def critical_path(policy: str, d: dict[str, float]) -> float:
    chain = d["probe"] + d["teacher"] + d["guided"]
    return {
        "strict": max(d["baseline"], chain) + d["judge"],
        "verify": chain + d["judge"],
        "audit": chain,
        "off": chain,
    }[policy]


def first_token(policy: str, d: dict[str, float]) -> float:
    if policy == "student alone":
        return d["first"]
    if policy in ("off", "audit"):
        return d["probe"] + d["teacher"] + d["first"]
    return critical_path(policy, d)


def build(policy: str, d: dict[str, float]) -> Atlas:
    student = PacedStudent(
        ANSWERS, delays={"probe": d["probe"], "guided": d["guided"], "baseline": d["baseline"]}, first=d["first"],
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
    time_to_first_token(d, args.runs)


def _timed(chunks: Iterator[object]) -> tuple[float, float]:
    """(seconds to the first chunk with text, seconds to the end) of a stream being read."""
    t0, first = time.perf_counter(), None
    for chunk in chunks:
        if first is None and _has_text(chunk):
            first = time.perf_counter() - t0
    end = time.perf_counter() - t0
    return (end if first is None else first), end


async def _atimed(chunks: AsyncIterator[object]) -> tuple[float, float]:
    t0, first = time.perf_counter(), None
    async for chunk in chunks:
        if first is None and _has_text(chunk):
            first = time.perf_counter() - t0
    end = time.perf_counter() - t0
    return (end if first is None else first), end


def _has_text(chunk: object) -> bool:
    if isinstance(chunk, ChatChunk):
        return bool(chunk.content)
    choices = getattr(chunk, "choices", None)
    return bool(choices and choices[0].delta.content)


def _one_stream(atlas: Atlas, policy: str, driver: str) -> tuple[float, float]:
    if policy == "student alone":  # the student's own stream of the user's request
        request = ChatRequest(model="s", messages=QUESTION)
        student = atlas.backends["student"]
        if driver == "sync":
            return _timed(student.stream(request))
        return asyncio.run(_atimed(student.astream(request)))
    if driver == "sync":
        t0 = time.perf_counter()
        first, end = _timed(iter(atlas.completion(model="s", messages=QUESTION, stream=True)))
        return first + (time.perf_counter() - t0 - end), time.perf_counter() - t0

    async def go() -> tuple[float, float]:
        t0 = time.perf_counter()
        stream = await atlas.acompletion(model="s", messages=QUESTION, stream=True)
        first, end = await _atimed(aiter(stream))
        return first + (time.perf_counter() - t0 - end), time.perf_counter() - t0

    return asyncio.run(go())


def time_to_first_token(d: dict[str, float], runs: int) -> None:
    print(f"\ntime to first token of a stream; the student's own first token after {d['first']:.3f} s; "
          f"median of {runs} runs\n")
    print("| stream | driver | expected first token s | first token s | whole answer s | delivers |")
    print("|---|---|---:|---:|---:|---|")
    for policy in ("student alone", "off", "audit", "strict"):
        atlas = build("off" if policy == "student alone" else policy, d)
        for driver in ("sync", "async"):
            timings = sorted(_one_stream(atlas, policy, driver) for _ in range(runs))
            first, end = timings[len(timings) // 2]
            how = "its own stream" if policy == "student alone" else (
                "replayed after the decision" if policy == "strict" else "live, as the student writes")
            print(f"| {policy} | {driver} | {first_token(policy, d):.3f} | {first:.3f} | {end:.3f} | {how} |")
        atlas.flush()
        atlas.close()


if __name__ == "__main__":
    main()
