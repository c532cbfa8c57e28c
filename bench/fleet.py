"""Taught-call throughput and latency of 1, 2 and 3 proxy replicas behind haproxy, in one run.

The fleet of the fleet test (``tests/test_fleet.py``) without its faults: ``atlas-middleware
proxy`` replicas with one worker each and the recipes' ``integrations/fleet/proxy-config.yaml``,
shared state on Redis, the ledger on PostgreSQL, haproxy round-robin in front, two teacher
replicas and a student, each test server answering in 50 ms from a child process. For each
replica count and each client count, C closed-loop clients run for a fixed time; a row counts
only taught answers (the policy's reasons with the teacher; an answer the student gave alone
because the teacher failed or the circuit was open counts as untaught), and reports
requests/s, p50 and p99, and the ratio of its requests/s to one replica at the same client
count, measured in the same run.

Needs Redis, PostgreSQL and haproxy: ``eval "$(scripts/ci-services.sh)"`` starts them and
exports ``TEST_REDIS_URL`` and ``TEST_POSTGRES_URL``.

    python bench/fleet.py                        # 1/2/3 replicas x 64/256 clients, 10 s each
    python bench/fleet.py --replicas 1 2 4 --seconds 20 --workers 2
    python bench/fleet.py --quick                # 1 and 2 replicas, 8 clients, 3 s (CI runs this)
    python bench/fleet.py --replicas 1 --clients 32 64 --against-proxy-load

``--against-proxy-load`` also starts ``bench/proxy_load.py``'s atlas proxy (SQLite ledger,
state in memory, one teacher, kept-alive connections, no haproxy) on the same test servers
and measures its strict row right after each one-replica row, in the same run: a ratio of
the two is only meaningful within one run on a shared machine. "proxy CPU ms/req" is the
CPU of the replicas' processes while the clients ran, over the answers they got.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
# The fleet's process harness lives with the tests (it is no part of the package's wheel).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests"))

from fleet_harness import (  # noqa: E402
    FLEET_DIR,
    LoadBalancer,
    ServerProcess,
    closed_loop,
    fleet_env,
)

from atlas_middleware.testing.proxy import ProxyProcess, free_port  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import proxy_load  # noqa: E402

MASTER_KEY = "sk-fleet-bench"
UNTAUGHT = {"teacher_error", "teacher_timeout", "circuit_open", "teacher_unparseable", "teacher_truncated"}


@dataclass
class Row:
    replicas: int
    clients: int
    req_s: float
    """Taught answers per second."""
    p50: float
    p99: float
    untaught: int
    errors: int
    reasons: dict[str, int] = field(default_factory=dict)
    cpu_ms: float = float("nan")
    """The replicas' CPU per answer while the clients ran."""
    label: str = "fleet"


def _proxy_load_row(target: proxy_load.Target, clients: int, seconds: float) -> Row:
    """``bench/proxy_load.py``'s strict row, measured its own way (kept-alive connections)."""
    got = asyncio.run(proxy_load.load(target, clients, seconds, 2.0))
    return Row(1, clients, got.rps, got.pct(0.5) / 1000, got.pct(0.99) / 1000, 0, got.errors, dict(got.reasons),
               got.cpu_ms, "proxy_load strict")


def _lean_proxy(stack: ExitStack, student: ServerProcess, teacher: ServerProcess) -> proxy_load.Target:
    """The atlas proxy of ``bench/proxy_load.py``, started, as its strict row's target."""
    cfg = {"teacher": "openai/teacher", "teacher_api_base": teacher.url, "teacher_api_key": "k", "policy": "strict",
           "ledger": f"sqlite:///{tempfile.mkdtemp(prefix='atlas-bench-')}/ledger.db", "spool": "none"}
    proxy = stack.enter_context(ProxyProcess(student_url=student.url, atlas=cfg, models={"student": "openai/student"}))
    return proxy_load.Target("proxy_load strict", "strict", proxy.url, proxy.master_key, "student", proxy.pid or 0,
                             {"x-atlas-policy": "strict"}, proxy_load.STRICT_TAUGHT)


def run(replicas: list[int], clients: list[int], seconds: float, workers: int,
        against: bool = False) -> list[Row]:
    import psycopg

    redis_url, pg_base = os.environ.get("TEST_REDIS_URL"), os.environ.get("TEST_POSTGRES_URL")
    if not (redis_url and pg_base):
        sys.exit('needs Redis and PostgreSQL: eval "$(scripts/ci-services.sh)" first')
    rows: list[Row] = []
    with ExitStack() as stack:
        student = stack.enter_context(ServerProcess("student"))
        teachers = [stack.enter_context(ServerProcess("teacher")) for _ in range(2)]
        lean = _lean_proxy(stack, student, teachers[0]) if against else None
        for count in replicas:
            database = f"atlas_bench_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(pg_base, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{database}"')
            env = fleet_env(student_url=student.url, teacher_urls=[t.url for t in teachers], state=redis_url,
                            ledger=pg_base.rsplit("/", 1)[0] + "/" + database,
                            state_prefix=f"atlas-bench-{uuid.uuid4().hex[:8]}:", master_key=MASTER_KEY)
            proxies = []
            for _ in range(count):
                proxy = ProxyProcess(student_url=student.url, atlas={}, master_key=MASTER_KEY,
                                     num_workers=workers, config_file=FLEET_DIR / "proxy-config.yaml",
                                     env={**env, "XDG_DATA_HOME": tempfile.mkdtemp(prefix="atlas-bench-")})
                proxy.port = free_port()
                proxies.append(proxy)
            try:
                for proxy in proxies:
                    proxy.launch()
                for proxy in proxies:
                    proxy.wait_started()
                with LoadBalancer([p.port for p in proxies]) as lb:
                    asyncio.run(closed_loop(lb.url, MASTER_KEY, clients=8, duration=2.0))  # warm-up
                    for c in clients:
                        cpu0 = sum(proxy_load.cpu_seconds(p.pid or 0) for p in proxies)
                        load = asyncio.run(closed_loop(lb.url, MASTER_KEY, clients=c, duration=seconds))
                        cpu = sum(proxy_load.cpu_seconds(p.pid or 0) for p in proxies) - cpu0
                        # Answers within the window (the drain after it would understate the rate).
                        in_window = [s for s in load.answered if s.ended <= load.started + load.window]
                        taught = [s for s in in_window if s.reason and s.reason not in UNTAUGHT]
                        times = sorted(s.ended - s.started for s in taught)
                        rows.append(Row(count, c, len(taught) / load.window, _quantile(times, 0.5),
                                        _quantile(times, 0.99), len(in_window) - len(taught),
                                        len(load.sent) - len(load.answered),
                                        dict(Counter(s.reason for s in load.answered)),
                                        cpu * 1000 / max(1, len(load.answered))))
                        print(rows[-1], flush=True)
                        if lean is not None and count == 1:
                            rows.append(_proxy_load_row(lean, c, seconds))
                            print(rows[-1], flush=True)
            finally:
                for proxy in proxies:
                    proxy.stop()
                    proxy.cleanup()
                with psycopg.connect(pg_base, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    return rows


def _quantile(times: list[float], q: float) -> float:
    return times[min(len(times) - 1, int(q * len(times)))] if times else float("nan")


def table(rows: list[Row]) -> str:
    one = {r.clients: r.req_s for r in rows if r.replicas == 1 and r.label == "fleet"}
    lines = ["| replicas | clients | taught req/s | vs 1 replica | p50 s | p99 s | untaught | errors | proxy CPU ms/req |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = one.get(r.clients)
        ratio = f"{r.req_s / base:.2f}x" if base else "-"
        name = r.replicas if r.label == "fleet" else r.label
        lines.append(f"| {name} | {r.clients} | {r.req_s:.1f} | {ratio} | {r.p50:.2f} | {r.p99:.2f} | "
                     f"{r.untaught} | {r.errors} | {r.cpu_ms:.1f} |")
    lean = {r.clients: r.req_s for r in rows if r.label == "proxy_load strict"}
    for c, rate in lean.items():
        if one.get(c):
            lines.append(f"\n{c} clients: one replica serves {one[c] / rate:.2f}x proxy_load strict's taught req/s "
                         f"(target >= 0.85x): {'met' if one[c] >= 0.85 * rate else 'NOT met'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--clients", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=1, help="workers per replica")
    parser.add_argument("--quick", action="store_true", help="1 and 2 replicas, 8 clients, 3 s")
    parser.add_argument("--against-proxy-load", action="store_true",
                        help="also measure bench/proxy_load.py's strict row after each one-replica row")
    args = parser.parse_args()
    if args.quick:
        args.replicas, args.clients, args.seconds = [1, 2], [8], 3.0
    started = time.monotonic()
    rows = run(args.replicas, args.clients, args.seconds, args.workers, args.against_proxy_load)
    print(f"\n{platform.node()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, "
          f"{time.monotonic() - started:.0f} s; command: python bench/fleet.py {' '.join(sys.argv[1:])}\n")
    print(table(rows))


if __name__ == "__main__":
    main()
