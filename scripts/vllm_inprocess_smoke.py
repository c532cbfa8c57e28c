"""Smoke test of ``vllm/<model>`` against real vLLM, on a GPU machine that has it.

    pip install 'atlas-middleware[vllm]'
    python scripts/vllm_inprocess_smoke.py Qwen/Qwen2.5-0.5B-Instruct [--max-model-len 2048]

What the CI tests check with the fake engine (tests/test_vllm_inprocess.py), here on vLLM's
own async engine: concurrent sync and async calls are answered with exact usage; a stream
yields several deltas that add up to its answer; a cancelled call is aborted (a call after it
still answers); a prompt over ``max_model_len`` fails alone while its neighbours are
answered. Prints one line per check and exits 1 if any failed.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from atlas_middleware.backends.local.vllm_inprocess import VLLMBackend
from atlas_middleware.messages import ChatRequest


def req(text: str, **params: object) -> ChatRequest:
    return ChatRequest(model="vllm/smoke", messages=[{"role": "user", "content": text}], params=params)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    args = parser.parse_args()
    started = time.perf_counter()
    backend = VLLMBackend.for_model(f"vllm/{args.model}", max_model_len=args.max_model_len,
                                    gpu_memory_utilization=args.gpu_memory_utilization)
    print(f"engine {type(backend.engine).__module__}.{type(backend.engine).__name__} "
          f"ready in {time.perf_counter() - started:.0f} s")
    failed: list[str] = []

    def check(name: str, ok: bool, detail: object = "") -> None:
        print(f"{'ok    ' if ok else 'FAILED'} {name} {detail}")
        if not ok:
            failed.append(name)

    try:
        questions = [f"What is {i} + {i}? Answer with the number." for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            outs = list(pool.map(lambda q: backend.complete(req(q, max_tokens=32)), questions))
        check("8 concurrent sync calls", all(o.text and o.usage.completion_tokens > 0 for o in outs),
              [o.text[:20] for o in outs[:3]])
        check("usage counted by the provider", all(o.usage.counted_by == "provider" for o in outs))

        async def concurrent() -> list[object]:
            return list(await asyncio.gather(*(backend.acomplete(req(q, max_tokens=32)) for q in questions)))

        check("8 concurrent async calls", all(getattr(o, "text", "") for o in asyncio.run(concurrent())))

        chunks = list(backend.stream(req("Count from 1 to 20.", max_tokens=64)))
        text = "".join(c.content or "" for c in chunks)
        check("stream deltas", len(chunks) > 3 and chunks[-1].usage is not None and bool(text),
              f"{len(chunks)} chunks")

        async def cancelled() -> bool:
            task = asyncio.ensure_future(backend.acomplete(req("Write a long story.", max_tokens=2000,
                                                               ignore_eos=True)))
            await asyncio.sleep(0.5)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                return True
            return False

        check("cancel aborts", asyncio.run(cancelled()) and bool(backend.complete(req("Hi", max_tokens=8)).text))

        too_long = "word " * (args.max_model_len + 100)

        def call(text: str) -> object:
            try:
                return backend.complete(req(text, max_tokens=16))
            except Exception as exc:
                return exc

        with ThreadPoolExecutor(3) as pool:
            mixed = list(pool.map(call, ["Hi", too_long, "Hello"]))
        check("an over-long prompt fails alone", isinstance(mixed[1], ValueError)
              and not isinstance(mixed[0], Exception) and not isinstance(mixed[2], Exception), repr(mixed[1])[:120])
    finally:
        backend.close()
    print("all ok" if not failed else f"{len(failed)} failed: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
