"""What one taught call costs the client, against plain clients, in one run.

Servers answer instantly from a child process (their CPU is not counted). For each variant
we time N sequential calls and report the wall-time median and the client's CPU time per
call (``time.process_time`` of this process: the client's own work, whatever its threads),
the best of five rounds of N/5 calls: on a shared machine the other jobs only ever add to
a round, so the best round is the steadiest estimate of the call's own cost.

Variants:
  raw httpx            one POST on a pooled httpx.Client
  openai client        openai.OpenAI().chat.completions.create
  litellm.completion   one plain LiteLLM call
  litellm.acompletion  one plain async LiteLLM call
  taught, lean path    Atlas(strict) over HTTP, direct httpx (4 backend calls)
  taught async, lean   Atlas.acompletion(strict) over HTTP, direct aiohttp (the proxy's path)
  taught, LiteLLM      Atlas(strict) over HTTP, every backend call through litellm.completion
  middleware only      Atlas(strict) with in-process backends that do no work: the loop's own work
                       (also through acompletion on one event loop; with the learned gate and
                       family reuse on, in process memory; and with OpenTelemetry imported but
                       no provider, then traced with the SDK's)

    python bench/overhead.py            # full: 300 calls per variant
    python bench/overhead.py --quick    # seconds: 20 calls per variant (CI runs this)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).parent))

from _servers import servers  # noqa: E402

QUESTION = [{"role": "user", "content": "What is 20 + 22?"}]


def measure(fn: Callable[[], object], n: int, rounds: int = 5) -> tuple[float, float]:
    """(median wall ms, CPU ms per call: the best of ``rounds`` rounds) after two warm-up calls."""
    fn()
    fn()
    walls: list[float] = []
    cpus = []
    per_round = max(1, n // rounds)
    for _ in range(rounds):
        cpu0 = time.process_time()
        for _ in range(per_round):
            t0 = time.perf_counter()
            fn()
            walls.append((time.perf_counter() - t0) * 1000)
        cpus.append((time.process_time() - cpu0) * 1000 / per_round)
    return statistics.median(walls), min(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 calls per variant")
    parser.add_argument("-n", type=int, default=None)
    args = parser.parse_args()
    n = args.n or (20 if args.quick else 300)

    import httpx
    import litellm
    import openai

    from atlas_middleware import Atlas, ChatResponse, Usage
    from atlas_middleware.testing import teacher_reply

    litellm.suppress_debug_info = True
    rows: list[tuple[str, float, float]] = []
    with servers() as (student_url, teacher_url):
        client = httpx.Client()
        body = {"model": "student", "messages": QUESTION}
        rows.append(("raw httpx", *measure(lambda: client.post(student_url + "/chat/completions", json=body), n)))
        oai = openai.OpenAI(base_url=student_url, api_key="k", max_retries=0)
        rows.append(("openai client", *measure(lambda: oai.chat.completions.create(model="student", messages=QUESTION), n)))  # type: ignore[arg-type]
        rows.append(("litellm.completion", *measure(lambda: litellm.completion(
            model="openai/student", api_base=student_url, api_key="k", messages=QUESTION), n)))
        loop = asyncio.new_event_loop()  # one loop for every async variant, as in a server
        rows.append(("litellm.acompletion", *measure(lambda: loop.run_until_complete(litellm.acompletion(
            model="openai/student", api_base=student_url, api_key="k", messages=QUESTION)), n)))
        atlas = Atlas(teacher="openai/teacher", teacher_api_base=teacher_url, teacher_api_key="k",
                      policy="strict", ledger="none")
        rows.append(("taught async, lean path", *measure(lambda: loop.run_until_complete(atlas.acompletion(
            model="openai/student", api_base=student_url, api_key="k", messages=QUESTION)), n)))
        loop.run_until_complete(atlas.aclose())
        loop.close()
        for label, lean in (("taught, lean path", True), ("taught, LiteLLM path", False)):
            atlas = Atlas(teacher="openai/teacher", teacher_api_base=teacher_url, teacher_api_key="k",
                          policy="strict", ledger="none", lean_http=lean)
            rows.append((label, *measure(lambda a=atlas: a.completion(  # type: ignore[misc]
                model="openai/student", api_base=student_url, api_key="k", messages=QUESTION), n)))
            atlas.close()

    class Constant:
        """A backend that does no work at all, so what is timed is the middleware alone."""

        def __init__(self, text: str) -> None:
            self.response = ChatResponse(content=text, finish_reason="stop",
                                         usage=Usage(prompt_tokens=10, completion_tokens=5, calls=1))

        def complete(self, request: object) -> ChatResponse:
            return self.response

        async def acomplete(self, request: object) -> ChatResponse:
            return self.response

    student, teacher = Constant("The answer is 42"), Constant(teacher_reply("Check the carry."))
    learned = {"gate": "learned", "reuse": "family", "gate_explore": 1.0}  # every call taught: the gate's cost
    for label, ledger, extra in (("middleware only", "none", {}), ("middleware + SQLite ledger", None, {}),
                                 ("middleware only, gate learned + reuse family", "none", learned)):
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            atlas = Atlas(teacher="t", student_backend=student, teacher_backend=teacher, policy="strict",
                          ledger=ledger or f"sqlite:///{tmp}/l.db", **extra)
            rows.append((label, *measure(lambda a=atlas: a.completion(model="s", messages=QUESTION), n)))  # type: ignore[misc]
            if label == "middleware only":
                own_loop = asyncio.new_event_loop()
                rows.append(("middleware only, async", *measure(lambda a=atlas, lp=own_loop: lp.run_until_complete(  # type: ignore[misc]
                    a.acompletion(model="s", messages=QUESTION)), n)))
                own_loop.close()
            atlas.close()

    rows += _tracing_rows(student, teacher, n)

    base = dict((r[0], r) for r in rows)
    one_litellm = base["litellm.completion"][2]
    print(f"\n{n} sequential calls per variant; servers in a child process, answering instantly\n")
    print("| variant | wall p50 ms | client CPU ms/call | CPU vs one litellm.completion |")
    print("|---|---:|---:|---:|")
    for label, wall, cpu in rows:
        print(f"| {label} | {wall:.2f} | {cpu:.2f} | {cpu / one_litellm:.2f}x |")
    lean_cpu = base["taught, lean path"][2]
    lean_async = base["taught async, lean path"][2]
    one_async = base["litellm.acompletion"][2]
    own, own_async = base["middleware only"][2], base["middleware only, async"][2]
    print(f"\nmiddleware's own work: {own:.2f} ms CPU per taught call, {own_async:.2f} ms async "
          f"(target < 0.3 ms): {'met' if max(own, own_async) < 0.3 else 'NOT met'}")
    print(f"taught call on the lean path: {lean_cpu:.2f} ms CPU vs {one_litellm:.2f} ms for one "
          f"litellm.completion (target: below): {'met' if lean_cpu < one_litellm else 'NOT met'}")
    print(f"async taught call on the lean path: {lean_async:.2f} ms CPU vs {one_async:.2f} ms for one "
          f"litellm.acompletion (target: below): {'met' if lean_async < one_async else 'NOT met'}")


def _tracing_rows(student: object, teacher: object, n: int) -> list[tuple[str, float, float]]:
    """The middleware alone, traced (``tracing.py``): OpenTelemetry imported with no provider
    set (spans are skipped after one look-up), then with the SDK's provider (spans made and
    ended, none exported: what the spans themselves cost). Last: the provider is global."""
    from atlas_middleware import Atlas

    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError:  # the otel extra and the SDK are not installed: nothing to time
        return []
    rows = []
    for label in ("middleware only, OpenTelemetry imported, no provider", "middleware only, traced (SDK provider)"):
        if "traced" in label:
            trace.set_tracer_provider(TracerProvider())
        atlas = Atlas(teacher="t", student_backend=student, teacher_backend=teacher, policy="strict", ledger="none")
        rows.append((label, *measure(lambda a=atlas: a.completion(model="s", messages=QUESTION), n)))  # type: ignore[misc]
        atlas.close()
    return rows


if __name__ == "__main__":
    main()
