"""Requests/s and latency through the atlas proxy against the plain LiteLLM proxy, in one run.

Test servers (student and teacher) answer every call in 50 ms from a child process. The
load generator (asyncio + aiohttp, this process: its CPU per request is a tenth of
httpx's, which leaves the proxies more of the machine's two cores) keeps C clients busy for a fixed time, each
sending its next request when the previous one is answered, and reports requests/s and the
p50/p99 latency per row:

  plain LiteLLM    a LiteLLM proxy with ``openai/student`` (1 backend call per request)
  atlas opt-out    the atlas proxy, ``x-atlas-teach: false``: the student alone (1 call)
  atlas off        policy off: probe, teacher, guided (3 calls, all on the critical path)
  atlas strict     policy strict: probe, teacher, guided + baseline in parallel (4 calls,
                   3 on the critical path; the answers agree, so no judge call)

Answers are counted by their ``x-atlas-reason``: an atlas row counts only the answers its
policy produced with the teacher (``policy_off``; for strict a comparison's reasons;
``opted_out`` for opt-out). An answer the student gave alone because the teacher timed out
or the circuit was open is a 200 too, but not a taught call: it counts as an error of the
row (``untaught:<reason>``), the reasons are printed per row, and the script exits 1 when
any row has one.

"proxy CPU ms/req" is the CPU time of the proxy process (and its workers) during the
measured window over the answers completed in it: on a shared machine it is steadier than
requests/s, and it is what bounds throughput once the proxy's core is saturated.

Every proxy runs with the same number of workers (``--workers``); the atlas proxy writes
its SQLite ledger as in production. ``--quick`` starts one proxy only and serves the plain
row from a passthrough model (``openai/student``, no ``atlas/``) of the atlas proxy's own
model_list, so that CI pays for one proxy start-up (~40 s on 2 cores).

    python bench/proxy_load.py                 # 1/16/64/256 clients, 10 s each, 1 worker
    python bench/proxy_load.py --repeat 3      # each row 3 times, rotated, pooled
    python bench/proxy_load.py --workers 2     # the same with 2 workers per proxy
    python bench/proxy_load.py --quick         # 1 and 16 clients, 2 s each (CI runs this)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
sys.path.insert(0, str(Path(__file__).parent))

import aiohttp  # noqa: E402
from _servers import servers  # noqa: E402

from atlas_middleware.testing.proxy import ProxyProcess  # noqa: E402

QUESTION = [{"role": "user", "content": "What is 20 + 22?"}]
DELAY = 0.05


@dataclass
class Row:
    label: str
    policy: str
    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, int] = field(default_factory=dict)
    """``x-atlas-reason`` of every answer in the window (``-`` for the plain proxy)."""
    proxy_cpu: float = 0.0
    """CPU seconds the proxy process (and its workers) used in the measured window."""

    @property
    def cpu_ms(self) -> float:
        return self.proxy_cpu * 1000 / len(self.latencies) if self.latencies else float("nan")

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def merge(self, other: Row) -> None:
        """Pool another measurement of the same row (``--repeat``)."""
        self.seconds += other.seconds
        self.latencies += other.latencies
        self.errors += other.errors
        for kind, n in other.error_kinds.items():
            self.error_kinds[kind] = self.error_kinds.get(kind, 0) + n
        for reason, n in other.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n
        self.proxy_cpu += other.proxy_cpu

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


@dataclass
class Target:
    label: str
    policy: str
    url: str
    key: str
    model: str
    pid: int
    headers: dict[str, str] = field(default_factory=dict)
    expect: frozenset[str] | None = None
    """The ``x-atlas-reason`` values of a taught answer of this row (None: not an atlas row)."""


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants (the proxy's workers), from /proc."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        child = int(stat.parent.name)
        parents[child] = int(fields[1])
        ticks[child] = int(fields[11]) + int(fields[12])
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in parents.items():
            if ppid == parent and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sum(ticks.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


async def load(target: Target, clients: int, seconds: float, warmup: float) -> Row:
    """``clients`` closed-loop clients for ``warmup`` + ``seconds``.

    Requests/s is the number of answers completed inside the measured window over its
    length; latencies are those answers'. Requests still in flight at the end are drained
    and not counted.
    """
    row = Row(target.label, target.policy, clients)
    headers = {"Authorization": f"Bearer {target.key}", "Content-Type": "application/json", **target.headers}
    body = json.dumps({"model": target.model, "messages": QUESTION}).encode()
    url = target.url.rstrip("/") + "/chat/completions"
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:
        start = time.perf_counter()
        measure_from = start + warmup
        stop = measure_from + seconds

        async def one_client() -> None:
            while True:
                t0 = time.perf_counter()
                if t0 >= stop:
                    return
                reason = None  # of a 200 answer
                try:
                    async with client.post(url, data=body, headers=headers) as response:
                        await response.read()
                        ok = response.status == 200
                        kind = str(response.status)
                        if ok:
                            reason = response.headers.get("x-atlas-reason", "-")
                            if target.expect is not None and reason not in target.expect:
                                ok, kind = False, f"untaught:{reason}"  # a 200, but the student alone
                except (aiohttp.ClientError, TimeoutError) as exc:
                    ok, kind = False, type(exc).__name__
                t1 = time.perf_counter()
                if measure_from <= t1 <= stop:  # completions inside the window count
                    if reason is not None:
                        row.reasons[reason] = row.reasons.get(reason, 0) + 1
                    if ok:
                        row.latencies.append(t1 - t0)
                    else:
                        row.errors += 1
                        row.error_kinds[kind] = row.error_kinds.get(kind, 0) + 1

        async def cpu_window() -> None:
            await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
            cpu0 = cpu_seconds(target.pid)
            await asyncio.sleep(max(0.0, stop - time.perf_counter()))
            row.proxy_cpu = cpu_seconds(target.pid) - cpu0

        await asyncio.gather(cpu_window(), *(one_client() for _ in range(clients)))
        row.seconds = seconds
    return row


def _kinds(row: Row) -> str:
    return f" ({', '.join(f'{k}: {v}' for k, v in sorted(row.error_kinds.items()))})" if row.errors else ""


# A strict answer that went through probe, teacher and a comparison.
STRICT_TAUGHT = frozenset({"agreement", "judge_preferred_guided", "judge_preferred_baseline", "judge_tie",
                           "no_evidence", "judge_error", "guided_invalid_tool_call"})


def targets(atlas: ProxyProcess, plain: ProxyProcess | None) -> list[Target]:
    a, p = atlas.pid or 0, (plain or atlas).pid or 0
    base = [
        Target("plain LiteLLM", "-", (plain or atlas).url, (plain or atlas).master_key,
               "student" if plain else "plain-student", p),
        Target("atlas opt-out", "teach=false", atlas.url, atlas.master_key, "student", a, {"x-atlas-teach": "false"},
               frozenset({"opted_out"})),
        Target("atlas off", "off", atlas.url, atlas.master_key, "student", a, {"x-atlas-policy": "off"},
               frozenset({"policy_off"})),
        Target("atlas strict", "strict", atlas.url, atlas.master_key, "student", a, {"x-atlas-policy": "strict"},
               STRICT_TAUGHT),
    ]
    return base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 and 16 clients, 2 s each, one proxy")
    parser.add_argument("--clients", default=None, help="comma-separated client counts (default 1,16,64,256)")
    parser.add_argument("--seconds", type=float, default=None, help="measured seconds per row (default 10)")
    parser.add_argument("--workers", type=int, default=1, help="proxy workers (each proxy)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure every row N times, in a rotated order each round, and pool them")
    args = parser.parse_args()
    clients = [int(c) for c in (args.clients or ("1,16" if args.quick else "1,16,64,256")).split(",")]
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    # Each row starts from idle: warm up for at least one round of every client's first
    # request (at 256 clients on 2 cores that is many seconds), then measure.
    def warmup(n: int) -> float:
        return 0.5 if args.quick else 2.0 + n / 16

    tmp = tempfile.mkdtemp(prefix="atlas-proxy-load-")
    rows: list[Row] = []
    started = time.perf_counter()
    with ExitStack() as stack:
        student_url, teacher_url = stack.enter_context(servers(DELAY))
        atlas_cfg = {"teacher": "openai/teacher", "teacher_api_base": teacher_url, "teacher_api_key": "k",
                     "policy": "strict", "ledger": f"sqlite:///{tmp}/ledger.db", "spool": "none"}
        atlas = stack.enter_context(ProxyProcess(
            student_url=student_url, atlas=atlas_cfg, models={"student": "openai/student"},
            passthrough={"plain-student": "openai/student"} if args.quick else None,
            num_workers=args.workers))
        plain = None if args.quick else stack.enter_context(ProxyProcess(
            student_url=student_url, atlas=None, models={"student": "openai/student"}, num_workers=args.workers))
        boot = time.perf_counter() - started
        for n in clients:
            pooled: dict[str, Row] = {}
            order = targets(atlas, plain)
            for round_ in range(args.repeat):
                # Rotate so that no row always runs first (right after the previous client
                # count) or last: on a shared machine the position alone moves the figures.
                for target in order[round_ % len(order):] + order[:round_ % len(order)]:
                    row = asyncio.run(load(target, n, seconds, warmup(n)))
                    if target.label in pooled:
                        pooled[target.label].merge(row)
                    else:
                        pooled[target.label] = row
            rows += [pooled[t.label] for t in order]

    print(f"\nservers answer in {DELAY * 1000:.0f} ms (child process); {args.workers} worker(s) per proxy; "
          f"{args.repeat} x {seconds:g} s measured per row after a warm-up of {'0.5 s' if args.quick else '2 s + clients/16 s'}; "
          f"proxies started in {boot:.0f} s"
          + ("; quick: the plain row is a passthrough model of the atlas proxy" if args.quick else "") + "\n")
    print("| clients | row | policy | req/s | p50 ms | p99 ms | errors | req/s vs plain | proxy CPU ms/req |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for n in clients:
        group = [r for r in rows if r.clients == n]
        plain_rps = group[0].rps or float("nan")
        for r in group:
            print(f"| {n} | {r.label} | {r.policy} | {r.rps:.1f} | {r.pct(0.5):.0f} | {r.pct(0.99):.0f} | "
                  f"{r.errors}{_kinds(r)} | {r.rps / plain_rps:.2f}x | {r.cpu_ms:.1f} |")
    print("\nAnswers by x-atlas-reason:")
    for r in rows:
        print(f"- {r.clients} clients, {r.label}: " + ", ".join(f"{k} {v}" for k, v in sorted(r.reasons.items())))
    untaught = [f"{r.clients} clients {r.label}" for r in rows if any(k.startswith("untaught") for k in r.error_kinds)]
    by = {(r.label, r.clients): r for r in rows}
    top = max(clients)
    strict, plain_row = by[("atlas strict", top)], by[("plain LiteLLM", top)]
    print(f"\nat {top} clients: strict {strict.rps / plain_row.rps:.2f}x the plain proxy's rate (target >= 0.8x): "
          f"{'met' if strict.rps >= 0.8 * plain_row.rps else 'NOT met'}")
    if 64 in clients:
        p99 = by[("atlas strict", 64)].pct(0.99)
        print(f"strict p99 at 64 clients: {p99:.0f} ms (target < 1000 ms): {'met' if p99 < 1000 else 'NOT met'}")
    if untaught:
        print(f"FAILED: answers the teacher had no part in, in rows: {'; '.join(untaught)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
