"""CPU per request of the two async HTTP clients the lean path could use, in one run.

The same loopback OpenAI-compatible server (a child process: its CPU is not counted)
answers every request at once. From C concurrent tasks in this process, each client sends
N chat-completion POSTs in all, over one pooled session, and the benchmark reports this
process's CPU time (``time.process_time``) and wall time per request. This is the figure
behind the choice of aiohttp for the lean path's async transport (docs/benchmarks.md);
the sync transport (``httpx.Client``, one request at a time) is printed for reference, and so
is the lean backend itself over each (``LeanHTTPBackend``: the same POST with its request
building, error mapping and response parsing), so that a change to it shows what it costs.

    python bench/transport_cpu.py               # 16 tasks, 4,000 requests per client, 3 rounds
    python bench/transport_cpu.py --quick       # 400 requests, 1 round (CI runs this)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).parent))

from _servers import servers  # noqa: E402

BODY = json.dumps({"model": "student", "messages": [{"role": "user", "content": "What is 20 + 22?"}]}).encode()
HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer k"}


async def _spread(send: Callable[[], Awaitable[None]], n: int, tasks: int) -> None:
    async def worker(count: int) -> None:
        for _ in range(count):
            await send()

    share, extra = divmod(n, tasks)
    await asyncio.gather(*(worker(share + (i < extra)) for i in range(tasks)))


async def run_httpx(url: str, n: int, tasks: int) -> None:
    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=tasks)) as client:
        async def send() -> None:
            (await client.post(url, content=BODY, headers=HEADERS)).raise_for_status()

        await _spread(send, n, tasks)


async def run_aiohttp(url: str, n: int, tasks: int) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=tasks)) as session:
        async def send() -> None:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                response.raise_for_status()
                await response.read()

        await _spread(send, n, tasks)


def run_httpx_sync(url: str, n: int) -> None:
    with httpx.Client() as client:
        for _ in range(n):
            client.post(url, content=BODY, headers=HEADERS).raise_for_status()


def _lean_request(url: str) -> Any:
    from atlas_middleware import ChatRequest

    return ChatRequest(model="openai/student", messages=[{"role": "user", "content": "What is 20 + 22?"}],
                       params={"api_base": url.removesuffix("/chat/completions"), "api_key": "k"})


async def run_lean_async(url: str, n: int, tasks: int) -> None:
    from atlas_middleware.backends.http.transport import LeanHTTPBackend

    lean, request = LeanHTTPBackend(max_connections=tasks), _lean_request(url)

    async def send() -> None:
        await lean.acomplete(request)

    try:
        await _spread(send, n, tasks)
    finally:
        await lean.aclose()


def run_lean_sync(url: str, n: int) -> None:
    from atlas_middleware.backends.http.transport import LeanHTTPBackend

    lean, request = LeanHTTPBackend(), _lean_request(url)
    try:
        for _ in range(n):
            lean.complete(request)
    finally:
        lean.close()


def measure(fn: Callable[[], None], n: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per request."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    fn()
    return (time.process_time() - cpu0) * 1000 / n, (time.perf_counter() - wall0) * 1000 / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-n", type=int, default=None, help="requests per client and round")
    ap.add_argument("--tasks", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=None)
    args = ap.parse_args()
    n = args.n or (400 if args.quick else 4000)
    rounds = args.rounds or (1 if args.quick else 3)
    with servers() as (student_url, _):
        url = student_url.rstrip("/") + "/chat/completions"
        variants: dict[str, Callable[[], None]] = {
            f"httpx.AsyncClient, {args.tasks} tasks": lambda: asyncio.run(run_httpx(url, n, args.tasks)),
            f"aiohttp.ClientSession, {args.tasks} tasks": lambda: asyncio.run(run_aiohttp(url, n, args.tasks)),
            "httpx.Client, one at a time": lambda: run_httpx_sync(url, n),
            f"LeanHTTPBackend.acomplete (aiohttp), {args.tasks} tasks":
                lambda: asyncio.run(run_lean_async(url, n, args.tasks)),
            "LeanHTTPBackend.complete (httpx), one at a time": lambda: run_lean_sync(url, n),
        }
        for fn in variants.values():  # warm up: connections, imports, the server's threads
            measure(fn, n)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        for r in range(rounds):  # rotate the order so no client always runs first
            names = list(variants)[r % len(variants):] + list(variants)[:r % len(variants)]
            for name in names:
                results[name].append(measure(variants[name], n))
    print(f"\n{n} requests per client per round, {rounds} round(s), median of the rounds; "
          "server in a child process, answering at once\n")
    print("| client | CPU ms / request | wall ms / request |")
    print("|---|---:|---:|")
    for name, values in results.items():
        print(f"| {name} | {statistics.median(v[0] for v in values):.3f} | "
              f"{statistics.median(v[1] for v in values):.3f} |")
    a = statistics.median(v[0] for v in results[f"aiohttp.ClientSession, {args.tasks} tasks"])
    h = statistics.median(v[0] for v in results[f"httpx.AsyncClient, {args.tasks} tasks"])
    print(f"\nhttpx.AsyncClient / aiohttp CPU per request: {h / a:.1f}x")


if __name__ == "__main__":
    main()
