"""What a streamed chunk costs: a 1,000-word answer streamed through ``Atlas``.

The student is an in-process scripted backend that streams one word per chunk and does no
work, so the figures are the middleware's own per-chunk work: turning each chunk into the
caller's chunk object (``ChunkWriter``), and the whole live stream (``policy="off"``: the
guided answer passed on as the student writes it: 1,000 chunks) and replayed stream
(``strict``: the chosen answer replayed once the decision is made, in 48-character chunks),
sync and async; the whole stream includes the probe, teacher and (``strict``) baseline calls
of scripted backends, so its per-chunk figure is an upper bound. For reference, the same
answer through LiteLLM's own ``CustomStreamWrapper`` (``litellm.completion`` with a mocked
streamed answer), the per-chunk work every ``litellm.completion(stream=True)`` caller pays.

    python bench/stream_chunks.py            # a 1,000-word answer, best of 5
    python bench/stream_chunks.py --quick    # a 200-word answer, best of 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from atlas_middleware import Atlas  # noqa: E402
from atlas_middleware.runtime.chunks import ChatChunk  # noqa: E402
from atlas_middleware.runtime.streaming import ChunkWriter  # noqa: E402
from atlas_middleware.testing import ScriptedBackend, teacher_reply  # noqa: E402

QUESTION = [{"role": "user", "content": "What is 20 + 22?"}]


def best(fn: Callable[[], list[Any]], runs: int) -> tuple[float, int]:
    """(best wall seconds of ``runs`` after one warm-up, chunks the caller got)."""
    count = len(fn())
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), count


def writer_only(n: int) -> Callable[[], list[Any]]:
    pieces = [ChatChunk(content=f" w{i}") for i in range(n)]

    def run() -> list[Any]:
        writer = ChunkWriter(include_usage=True, model="m")
        return [c for p in pieces for c in writer.feed(p)] + writer.end()

    return run


def through_atlas(n: int, policy: str, driver: str) -> Callable[[], list[Any]]:
    answer = " ".join(f"w{i}" for i in range(n))
    student = ScriptedBackend({"probe": "Add the two numbers.", "guided": answer, "baseline": answer})
    teacher = ScriptedBackend({"teacher": teacher_reply("Carry the one.")})
    atlas = Atlas(student_backend=student, teacher_backend=teacher, teacher="scripted-teacher",
                  policy=policy, ledger="none", judge="answer")

    def run() -> list[Any]:
        if driver == "sync":
            return list(atlas.completion(model="s", messages=QUESTION, stream=True))

        async def go() -> list[Any]:
            stream = await atlas.acompletion(model="s", messages=QUESTION, stream=True)
            return [c async for c in stream]

        return asyncio.run(go())

    return run


def litellm_reference(n: int) -> Callable[[], list[Any]]:
    import litellm

    answer = " ".join(f"w{i}" for i in range(n))

    def run() -> list[Any]:
        return list(litellm.completion(model="openai/m", messages=QUESTION, stream=True, mock_response=answer))

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, runs = (200, 3) if args.quick else (1000, 5)
    rows = [("ChunkWriter alone", writer_only(n))]
    rows += [(f"Atlas {policy} ({'live' if policy == 'off' else 'replayed'}), {driver}", through_atlas(n, policy, driver))
             for policy in ("off", "strict") for driver in ("sync", "async")]
    rows.append(("litellm.completion mock stream (reference)", litellm_reference(n)))
    print(f"a {n}-word answer, best of {runs}")
    print("| stream | chunks | whole stream ms | per chunk us |")
    print("|---|---:|---:|---:|")
    for label, fn in rows:
        seconds, count = best(fn, runs)
        print(f"| {label} | {count} | {seconds * 1000:.1f} | {seconds * 1e6 / count:.1f} |")


if __name__ == "__main__":
    main()
