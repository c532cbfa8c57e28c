"""A fleet on loopback, for the fleet test and ``bench/fleet.py``: every piece a real process.

A process harness, not a test double: it lives with the tests, outside the package (and its
wheel); ``bench/fleet.py`` puts this folder on ``sys.path`` to import it.

* ``ServerProcess``: a student or teacher ``OpenAITestServer`` in a child process of its own,
  so that one teacher replica can be SIGKILLed like a crashed vLLM server;
* ``LoadBalancer``: Debian's haproxy in the foreground with the project's
  ``integrations/fleet/haproxy.cfg`` (round-robin, health checks on ``/health/readiness``),
  one log line per request (which replica served it, its status and ``x-atlas-call-id``) and
  an admin socket for per-replica figures;
* ``closed_loop``: C clients over aiohttp, each sending its next request when the previous
  one is answered, for a bounded time; every request's outcome kept as a ``Sent``.

The proxy replicas themselves are ``testing.proxy.ProxyProcess`` started with the recipes'
``integrations/fleet/proxy-config.yaml``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from atlas_middleware.testing.proxy import free_port

FLEET_DIR = Path(__file__).resolve().parents[1] / "integrations" / "fleet"

# The child answers every call after ``delay`` seconds, as the benchmarks' servers do: the
# student agrees with itself guided or not (strict then needs no judge), the teacher teaches.
_CHILD = r"""
import os, sys, time
from atlas_middleware.testing import HTTPFault, OpenAITestServer, ScriptedBackend, teacher_reply
role, delay, port, flag = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

def teach(request):
    if flag and os.path.exists(flag):  # the test's switch: an overloaded teacher
        raise HTTPFault(503, "teacher overloaded")
    return teacher_reply("Check the carry.")

if role == "student":
    backend = ScriptedBackend({
        "probe": "Add the numbers and check the carry.",
        "baseline": "20 plus 22 is 42. The answer is 42",
        "guided": "The answer is 42",
    }, delays={r: delay for r in ("probe", "baseline", "guided", "judge_pair", "judge_score")})
else:
    backend = ScriptedBackend({"teacher": teach}, delays={"teacher": delay})
backend.calls = _Forgetful()  # a long run must not keep every request in memory
server = OpenAITestServer(backend, port=port).start()
print(server.url, flush=True)
while True:
    time.sleep(3600)
"""
_FORGETFUL = r"""
class _Forgetful(list):
    def append(self, item):
        if len(self) > 64:
            del self[:32]
        super().append(item)
"""


class ServerProcess:
    """A scripted OpenAI-compatible ``student`` or ``teacher`` server in its own process.

    A teacher answers 503 while the file ``failing`` exists (an overloaded teacher, switched
    on and off by the test); ``port`` is kept, so a killed replica can come back on it.
    """

    def __init__(self, role: str, delay: float = 0.05, *, port: int = 0, failing: Path | None = None) -> None:
        if role not in ("student", "teacher"):
            raise ValueError(f"role must be 'student' or 'teacher', not {role!r}")
        self.role, self.delay, self.failing = role, delay, failing
        self.port = port or free_port()
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> ServerProcess:
        code = _FORGETFUL + _CHILD
        args = [self.role, str(self.delay), str(self.port), str(self.failing or "")]
        self.process = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url:
            raise RuntimeError(f"the {self.role} server did not start (exit {self.process.poll()})")
        return self

    def kill(self) -> None:
        """SIGKILL: connections drop mid-answer, as when a GPU server dies."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self._close_pipe()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self._close_pipe()

    def _close_pipe(self) -> None:
        # The pipe the child printed its URL on ends with it: left open, the collector closes
        # it later and warns (ResourceWarning).
        if self.process is not None and self.process.stdout is not None:
            self.process.stdout.close()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


@dataclass(frozen=True)
class Routed:
    """One request as haproxy logged it."""

    accepted: float
    """When haproxy accepted it (UNIX seconds)."""
    server: str
    """The replica that served it (``<NOSRV>`` when none did)."""
    status: int
    total_ms: int
    call_id: str
    termination: str = ""
    """haproxy's session state at the end (``----`` normal; ``SH--`` the server cut it)."""


class LoadBalancer:
    """haproxy in the foreground over the given replica ports (``FLEET_PROXY_<n>``)."""

    def __init__(self, ports: list[int], config: Path = FLEET_DIR / "haproxy.cfg",
                 startup_timeout: float = 60.0) -> None:
        self.ports, self.config, self.startup_timeout = ports, config, startup_timeout
        self.port = 0
        self.folder: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def socket_path(self) -> Path:
        assert self.folder is not None
        return self.folder / "admin.sock"

    @property
    def log_path(self) -> Path:
        assert self.folder is not None
        return self.folder / "haproxy.log"

    def env(self) -> dict[str, str]:
        env = {"FLEET_LB_PORT": str(self.port), "FLEET_LB_SOCKET": str(self.socket_path)}
        env.update({f"FLEET_PROXY_{i}": f"127.0.0.1:{port}" for i, port in enumerate(self.ports, 1)})
        return env

    def start(self) -> LoadBalancer:
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        if not Path(binary).exists():
            raise RuntimeError("haproxy is not installed (scripts/ci-services.sh installs it)")
        self.folder = Path(tempfile.mkdtemp(prefix="atlas-lb-"))
        self.port = free_port()
        env = {**os.environ, **self.env()}
        subprocess.run([binary, "-c", "-q", "-f", str(self.config)], env=env, check=True)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([binary, "-db", "-f", str(self.config)], stdout=log,
                                            stderr=subprocess.STDOUT, env=env)
        self.wait_up(len(self.ports))
        return self

    def admin(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.socket_path))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while data := sock.recv(65536):
                chunks.append(data)
        return b"".join(chunks).decode()

    def servers(self) -> dict[str, dict[str, str]]:
        """``show stat`` for the replicas: name -> fields (status, scur, stot, hrsp_5xx, ...)."""
        lines = self.admin("show stat").splitlines()
        header = lines[0].lstrip("# ").split(",")
        rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
        return {r["svname"]: r for r in rows if r["svname"] not in ("FRONTEND", "BACKEND")}

    def wait_up(self, count: int, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        up: list[str] = []
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                up = [n for n, s in self.servers().items() if s.get("status", "").startswith("UP")]
            except OSError:
                up = []
            if len(up) >= count:
                return
            time.sleep(0.2)
        raise TimeoutError(f"only {up} of {count} replicas came up behind haproxy")

    def routed(self) -> list[Routed]:
        """Every request logged so far (the format is set in haproxy.cfg's ``log-format``)."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            parts = line.split()
            if len(parts) < 5 or parts[0] != "atlas-lb":
                continue
            _, accepted, server, status, total = parts[:5]
            call_id = parts[5].strip("{}|") if len(parts) > 5 else ""
            termination = parts[6] if len(parts) > 6 else ""
            out.append(Routed(float(accepted), server.split("/")[-1], int(status), int(total), call_id, termination))
        return out

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def __enter__(self) -> LoadBalancer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)


TEACHER_MODEL = "hosted_vllm/Arc-Intelligence/ATLAS-8B-Thinking"


def fleet_env(*, student_url: str, teacher_urls: list[str], state: str, ledger: str, master_key: str,
              state_prefix: str = "atlas:", **atlas: Any) -> dict[str, str]:
    """The environment ``integrations/fleet/proxy-config.yaml`` reads, as a recipe sets it:
    the student, a teacher group of ``teacher_urls`` (one deployment each), Redis state, the
    PostgreSQL ledger; ``atlas`` adds ``ATLAS_<FIELD>`` settings (``circuit_failures=3``)."""
    group = [{"model": TEACHER_MODEL, "api_base": url} for url in teacher_urls]
    env = {
        "LITELLM_MASTER_KEY": master_key,
        "STUDENT_MODEL": "atlas/openai/gpt-4o-mini",
        "STUDENT_API_BASE": student_url,
        "STUDENT_API_KEY": "sk-student-fleet",
        "ATLAS_TEACHER": json.dumps(group),
        "ATLAS_STATE": state,
        "ATLAS_STATE_PREFIX": state_prefix,
        "ATLAS_LEDGER": ledger,
    }
    env.update({f"ATLAS_{name.upper()}": v if isinstance(v, str) else json.dumps(v) for name, v in atlas.items()})
    return env


@dataclass
class Sent:
    """One request of a closed-loop client, as the client saw it."""

    started: float
    ended: float
    status: int
    """HTTP status; 0 when the connection failed before any answer."""
    call_id: str = ""
    reason: str = ""
    session_id: str | None = None
    error: str = ""
    """With status 0: the client's exception (type and message)."""


@dataclass
class LoadResult:
    sent: list[Sent] = field(default_factory=list)
    duration: float = 0.0
    """Until the last client's last answer (past the window by up to one request's time)."""
    started: float = 0.0
    window: float = 0.0
    """The load's nominal length: clients send nothing new after it."""

    @property
    def answered(self) -> list[Sent]:
        return [s for s in self.sent if s.status == 200]

    def throughput(self) -> float:
        """Answers per second within the window: the drain after it, when fewer and fewer
        clients are still waiting, would lower the rate by up to one request's time."""
        end = self.started + self.window
        return sum(1 for s in self.answered if s.ended <= end) / self.window if self.window else 0.0

    def percentile(self, q: float) -> float:
        times = sorted(s.ended - s.started for s in self.answered)
        if not times:
            return float("nan")
        return times[min(len(times) - 1, int(q * len(times)))]


Body = Callable[[int, int], tuple[dict[str, Any], dict[str, str]]]
"""(client index, request index) -> (JSON body, extra headers)."""


def question_body(client: int, n: int) -> tuple[dict[str, Any], dict[str, str]]:
    return ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "What is 20 + 22?"}]}, {})


async def closed_loop(url: str, key: str, *, clients: int, duration: float, body: Body = question_body,
                      schedule: Mapping[float, Callable[[], Any]] | None = None,
                      request_timeout: float = 60.0) -> LoadResult:
    """``clients`` closed-loop clients for ``duration`` seconds; ``schedule`` maps seconds
    after the start to a blocking action (a fault), run in a thread while the load goes on."""
    import aiohttp

    result = LoadResult(started=time.time(), window=duration)
    start = time.monotonic()
    stop_at = start + duration
    headers = {"Authorization": f"Bearer {key}"}

    async def client(index: int, session: aiohttp.ClientSession) -> None:
        n = 0
        while time.monotonic() < stop_at:
            payload, extra = body(index, n)
            n += 1
            began = time.time()
            sent = Sent(began, began, 0, session_id=extra.get("x-atlas-session-id"))
            try:
                async with session.post(f"{url}/chat/completions", json=payload,
                                        headers={**headers, **extra}) as resp:
                    await resp.read()
                    sent.status = resp.status
                    sent.call_id = resp.headers.get("x-atlas-call-id", "")
                    sent.reason = resp.headers.get("x-atlas-reason", "")
            except (TimeoutError, aiohttp.ClientError) as exc:
                sent.status, sent.error = 0, f"{type(exc).__name__}: {exc}"
            sent.ended = time.time()
            result.sent.append(sent)

    async def faults() -> None:
        for at, action in sorted((schedule or {}).items()):
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            await asyncio.to_thread(action)

    # A new connection per request. With kept-alive connections, some requests failed as
    # connections dropped without an answer that haproxy never logged (seen in the fleet
    # test under load; the cause is not established): the test could not say which replica
    # they were on. Closed after each answer, every failure shows in haproxy's log.
    connector = aiohttp.TCPConnector(limit=clients, force_close=True)
    timeout = aiohttp.ClientTimeout(total=request_timeout)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(faults(), *(client(i, session) for i in range(clients)))
    result.duration = time.monotonic() - start
    return result
