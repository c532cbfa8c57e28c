"""What a fleet replica pays per taught call that ``bench/proxy_load.py``'s proxy does not.

``bench/fleet.py``'s replica differs from ``bench/proxy_load.py``'s atlas proxy in five
ways: shared state on Redis (the breaker's ``allow`` before a call, its ``success`` and the
family's measured baseline after it, each a Lua script, from a worker thread), the ledger on
PostgreSQL instead of SQLite, a group of two teachers behind LiteLLM's Router instead of one
teacher, haproxy in front, and a new connection per request. This script prices each.

Default: the CPU of this process per operation (``time.process_time``, the best of 5 rounds),
each measured on its own against the test Redis and PostgreSQL and a loopback test server:

  redis breaker.allow / success / baselines.add   one Lua script each (redis-py, EVALSHA)
  to_thread hop                                   asyncio.to_thread of a no-op: the hop itself
  ledger append, PostgreSQL / SQLite              one record, committed
  teacher call, one / a group of two              acomplete on the lean path, test server answering at once

``--proxies`` also starts ``bench/proxy_load.py``'s atlas proxy and fleet replicas (one
worker each, the recipes' config), each with one difference from the fleet undone, and
measures each with C closed-loop clients in one run: taught requests/s and the proxy's CPU
per request (its process tree, from /proc), the steadier figure on a shared machine.

Needs Redis and PostgreSQL: ``eval "$(scripts/ci-services.sh)"``.

    python bench/fleet_costs.py                 # component costs (about a minute)
    python bench/fleet_costs.py --proxies       # and the end-to-end rows (5 proxies; minutes)
    python bench/fleet_costs.py --quick         # fewer rounds (CI runs this)
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "tests")]  # the fleet's harness lives with the tests

TEACHER = "hosted_vllm/Arc-Intelligence/ATLAS-8B-Thinking"


def cpu_us(fn: Callable[[], object], n: int, rounds: int = 5) -> float:
    """The best of ``rounds`` of ``n`` calls: CPU microseconds per call."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        best = min(best, (time.process_time() - t0) * 1e6 / n)
    return best


def components(redis_url: str, pg: str, n: int) -> list[tuple[str, float]]:
    import psycopg
    from _servers import servers

    from atlas_middleware import Atlas, ChatRequest, Usage
    from atlas_middleware.ledger import open_ledger
    from atlas_middleware.ledger.record import LedgerRecord
    from atlas_middleware.report import CallReport
    from atlas_middleware.state import open_state

    rows: list[tuple[str, float]] = []
    loop = asyncio.new_event_loop()
    state = open_state(redis_url, prefix=f"atlas-bench-{uuid.uuid4().hex[:8]}:")
    usage = Usage(prompt_tokens=10, completion_tokens=5, calls=1)
    rows.append(("redis breaker.allow (before a call)", cpu_us(state.breaker.allow, n)))
    rows.append(("redis breaker.success (after)", cpu_us(state.breaker.success, n)))
    rows.append(("redis baselines.add (after)", cpu_us(lambda: state.baselines.add("s|f:bench", usage), n)))
    rows.append(("asyncio.to_thread hop of a no-op", cpu_us(lambda: loop.run_until_complete(asyncio.to_thread(int)), n)))
    state.close()

    def record() -> LedgerRecord:
        report = CallReport(student_model="s", teacher_model="t", policy="strict", protocol="structured")
        return LedgerRecord.from_report(report, '[{"role": "user", "content": "q"}]', "a", False)

    database = f"atlas_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{database}"')
    try:
        ledger = open_ledger(pg.rsplit("/", 1)[0] + "/" + database)
        rows.append(("ledger append, PostgreSQL", cpu_us(lambda: ledger.append(record()), max(20, n // 3))))
        ledger.close()
    finally:
        with psycopg.connect(pg, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    with tempfile.TemporaryDirectory() as tmp:
        sqlite = open_ledger(f"sqlite:///{tmp}/ledger.db")
        rows.append(("ledger append, SQLite", cpu_us(lambda: sqlite.append(record()), max(20, n // 3))))
        sqlite.close()

    with servers() as (_, teacher_url):
        request = ChatRequest(model=TEACHER, messages=[{"role": "user", "content": "q"}],
                              params={"max_tokens": 100, "timeout": 30.0})
        for label, spec in (("teacher call, one teacher",
                             {"teacher": TEACHER, "teacher_api_base": teacher_url, "teacher_api_key": "k"}),
                            ("teacher call, a group of two", {"teacher": [{"model": TEACHER, "api_base": teacher_url}] * 2})):
            atlas = Atlas(**spec, policy="strict", ledger="none")  # type: ignore[arg-type]
            backend = atlas.backends["teacher"]
            rows.append((label, cpu_us(lambda b=backend: loop.run_until_complete(b.acomplete(request)),  # type: ignore[misc]
                                       max(20, n // 3))))
            loop.run_until_complete(atlas.aclose())
    loop.close()
    return rows


def end_to_end(redis_url: str, pg: str, clients: int, seconds: float) -> list[tuple[str, float, float]]:
    """(row, taught req/s, proxy CPU ms/req) of the proxies, each difference undone alone."""
    import aiohttp
    import proxy_load
    import psycopg
    from fleet_harness import FLEET_DIR, LoadBalancer, ServerProcess, fleet_env

    from atlas_middleware.testing.proxy import ProxyProcess, free_port

    key, plain = "sk-fleet-bench", aiohttp.TCPConnector
    rows: list[tuple[str, float, float]] = []

    def row(label: str, url: str, pid: int, model: str, secret: str, new_connection: bool) -> None:
        # proxy_load's own client, with a new connection per request where the fleet's has one
        aiohttp.TCPConnector = functools.partial(plain, force_close=True) if new_connection else plain  # type: ignore[misc]
        try:
            target = proxy_load.Target(label, "strict", url, secret, model, pid, {}, proxy_load.STRICT_TAUGHT)
            got = asyncio.run(proxy_load.load(target, clients, seconds, 2.0))
        finally:
            aiohttp.TCPConnector = plain  # type: ignore[misc]
        rows.append((label, got.rps, got.cpu_ms))
        print(f"{label}: {got.rps:.1f} req/s, {got.cpu_ms:.1f} ms CPU/req, errors {got.error_kinds}", flush=True)

    with ExitStack() as stack:
        student = stack.enter_context(ServerProcess("student"))
        teachers = [stack.enter_context(ServerProcess("teacher")) for _ in range(2)]
        database = f"atlas_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(pg, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')

        def drop() -> None:
            with psycopg.connect(pg, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

        stack.callback(drop)
        tmp = tempfile.mkdtemp(prefix="atlas-bench-")
        env = fleet_env(student_url=student.url, teacher_urls=[t.url for t in teachers], state=redis_url,
                        ledger=pg.rsplit("/", 1)[0] + "/" + database,
                        state_prefix=f"atlas-bench-{uuid.uuid4().hex[:8]}:", master_key=key)
        undone = {"fleet": {}, "state in memory": {"ATLAS_STATE": "memory"},
                  "SQLite ledger": {"ATLAS_LEDGER": f"sqlite:///{tmp}/fleet.db"},
                  "one teacher": {"ATLAS_TEACHER": TEACHER, "ATLAS_TEACHER_API_BASE": teachers[0].url}}
        lean = ProxyProcess(student_url=student.url, models={"student": "openai/student"}, atlas={
            "teacher": "openai/teacher", "teacher_api_base": teachers[0].url, "teacher_api_key": "k",
            "policy": "strict", "ledger": f"sqlite:///{tmp}/proxy_load.db", "spool": "none"})
        fleet = {}
        for name, extra in undone.items():
            fleet[name] = ProxyProcess(student_url=student.url, atlas={}, master_key=key,
                                       config_file=FLEET_DIR / "proxy-config.yaml",
                                       env={**env, **extra, "XDG_DATA_HOME": tempfile.mkdtemp(prefix="atlas-bench-")})
            fleet[name].port = free_port()
        for proxy in (lean, *fleet.values()):  # side by side: the start-up is most of the time
            proxy.startup_timeout = 900.0
            proxy.launch()
            stack.callback(proxy.cleanup)
            stack.callback(proxy.stop)
        for proxy in (lean, *fleet.values()):
            proxy.wait_started()
        f = fleet["fleet"]
        row("proxy_load strict: SQLite, memory, one teacher, kept-alive", lean.url, lean.pid or 0, "student",
            lean.master_key, False)
        with LoadBalancer([f.port]) as lb:
            row("fleet replica: haproxy, a new connection per request", lb.url, f.pid or 0, "gpt-4o-mini", key, True)
            row("fleet replica: haproxy, kept-alive", lb.url, f.pid or 0, "gpt-4o-mini", key, False)
        row("fleet replica: direct, a new connection per request", f.url, f.pid or 0, "gpt-4o-mini", key, True)
        row("fleet replica: direct, kept-alive", f.url, f.pid or 0, "gpt-4o-mini", key, False)
        for name, proxy in fleet.items():
            if name != "fleet":
                row(f"fleet replica with {name}: direct, kept-alive", proxy.url, proxy.pid or 0, "gpt-4o-mini", key,
                    False)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer calls per component")
    parser.add_argument("--proxies", action="store_true", help="also the end-to-end rows (5 proxies)")
    parser.add_argument("--clients", type=int, default=32, help="closed-loop clients of the end-to-end rows")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per end-to-end row")
    args = parser.parse_args()
    redis_url, pg = os.environ.get("TEST_REDIS_URL"), os.environ.get("TEST_POSTGRES_URL")
    if not (redis_url and pg):
        sys.exit('needs Redis and PostgreSQL: eval "$(scripts/ci-services.sh)" first')
    started = time.monotonic()
    rows = components(redis_url, pg, 60 if args.quick else 500)
    print(f"\nCPU of this process per operation, best of 5 rounds ({time.strftime('%Y-%m-%d')}, "
          f"{os.cpu_count()} cores)\n")
    print("| operation | CPU µs |\n|---|---:|")
    for label, us in rows:
        print(f"| {label} | {us:.1f} |")
    if args.proxies:
        e2e = end_to_end(redis_url, pg, args.clients, args.seconds)
        print(f"\n{args.clients} closed-loop clients, {args.seconds:g} s per row, one run\n")
        print("| proxy | taught req/s | proxy CPU ms/req |\n|---|---:|---:|")
        for label, rps, cpu in e2e:
            print(f"| {label} | {rps:.1f} | {cpu:.1f} |")
    print(f"\n{time.monotonic() - started:.0f} s; command: python bench/fleet_costs.py {' '.join(sys.argv[1:])}")


if __name__ == "__main__":
    main()
