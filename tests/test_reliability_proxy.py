"""Faults, load, hostile input and secrets through the real LiteLLM proxy (``atlas-middleware proxy``).

One proxy process for the module (its start-up is most of the cost). The student is an
OpenAI-compatible test server in this process; the teacher is one in a child process on a
fixed port, so that a test can kill it for real (SIGKILL: connections reset, nothing
answers) and start it again with another behaviour (healthy, 500, 429 + Retry-After,
hanging, garbage). Hostile input reaches the proxy's front door (proxy/gate.py) first: no
key, bodies over the size limit (declared or chunked), slow bodies, deep nesting, each
answered before LiteLLM reads or parses more than it must. The library-level suite is
tests/test_reliability.py; the gate alone, under uvicorn, tests/test_proxy_gate.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("litellm.proxy.proxy_server")
pytest.importorskip("prometheus_client")

from atlas_middleware.backends.http.transport import LeanHTTPBackend  # noqa: E402
from atlas_middleware.messages import ChatRequest  # noqa: E402
from atlas_middleware.proxy import gate  # noqa: E402
from atlas_middleware.testing import HTTPFault, OpenAITestServer, ScriptedBackend  # noqa: E402
from atlas_middleware.testing.proxy import ProxyProcess, free_port  # noqa: E402

# Keys that no generic pattern would mask: only knowing them keeps them out.
MASTER_KEY = "mk-proxy-master-Q7w3Zr9p2L"
TEACHER_KEY = "tk-teacher-secret-V5n8Hc1x4D"
STUDENT_KEY = "st-student-secret-K2j6Yb0m7F"
QUESTION = [{"role": "user", "content": "What is 20 + 22?"}]
BASELINE = "20 plus 22 is 42. The answer is 42"
GUIDED = "The answer is 42"
STUDENT_SCRIPT = {"probe": "Add the numbers, watch the carry.", "baseline": BASELINE, "guided": GUIDED}
TEACHER_TIMEOUT = 1.0
# The configured deadline of a call whose teacher misbehaves: the teacher's budget, then
# the student's own (instant) answer; the rest is slack for a loaded 2-core CI machine.
DEADLINE = TEACHER_TIMEOUT + 3.0
COOLDOWN = 3.0
# The gate's bounds, small so that crossing them is cheap (proxy_* settings, config.py)
MAX_BODY_MB, BODY_TIMEOUT, MAX_DEPTH = 1, 2.0, 64
MAX_BODY = MAX_BODY_MB * 1024 * 1024
TEACHER_FAILURE_REASONS = {"teacher_error", "teacher_timeout", "teacher_unparseable"}

# The teacher, in a child process: ``python -c TEACHER_CHILD PORT MODE KEY``.
TEACHER_CHILD = r"""
import sys, time
from atlas_middleware.testing import HTTPFault, OpenAITestServer, RawBody, Reply, ScriptedBackend, teacher_reply
port, mode, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
item = {
    "ok": teacher_reply("Check the carry."),
    "500": HTTPFault(500, "teacher overloaded"),
    "429": HTTPFault(429, "slow down", headers={"Retry-After": "30"}),
    "hang": Reply(teacher_reply("Too late."), delay=30.0),
    "garbage": RawBody(b"\xff\xfe<html>not json at all", content_type="application/json"),
    "unparseable": "I will not follow your format, here is a poem instead.",
    "leak": HTTPFault(500, f"invalid credentials: api key {key} rejected (Authorization: Bearer {key})"),
}[mode]
server = OpenAITestServer(ScriptedBackend({"teacher": item}), port=port, api_key=key).start()
print("ready", flush=True)
while True:
    time.sleep(3600)
"""


class Teacher:
    """The teacher server in a child process on a fixed port; ``switch(mode)`` restarts it."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.mode = ""
        self.process: subprocess.Popen[str] | None = None

    def switch(self, mode: str) -> None:
        if mode == self.mode and self.alive:
            return
        self.kill()
        self.process = subprocess.Popen([sys.executable, "-c", TEACHER_CHILD, str(self.port), mode, TEACHER_KEY],
                                        stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"
        self.mode = mode

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
            if self.process.stdout is not None:
                self.process.stdout.close()  # the "ready" pipe ends with the child, not at collection
        self.process = None
        self.mode = "dead"


@pytest.fixture(scope="module")
def teacher() -> Iterator[Teacher]:
    t = Teacher()
    t.switch("ok")
    yield t
    t.kill()


@pytest.fixture(scope="module")
def student() -> Iterator[OpenAITestServer]:
    with OpenAITestServer(ScriptedBackend(dict(STUDENT_SCRIPT)), api_key=STUDENT_KEY) as server:
        yield server


@pytest.fixture(scope="module")
def ledger_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proxy-reliability") / "ledger.db"


@pytest.fixture(scope="module")
def proxy(teacher: Teacher, student: OpenAITestServer, ledger_path: Path) -> Iterator[ProxyProcess]:
    atlas = {"teacher": "openai/teacher", "teacher_api_base": teacher.url, "policy": "strict",
             "ledger": f"sqlite:///{ledger_path}", "spool": "none", "teacher_timeout": TEACHER_TIMEOUT,
             "teacher_retries": 2, "circuit_failures": 3, "circuit_cooldown": COOLDOWN,
             "proxy_max_body_mb": MAX_BODY_MB, "proxy_body_timeout": BODY_TIMEOUT}
    with ProxyProcess(student_url=student.url, atlas=atlas, models={"student": "openai/student"},
                      student_api_key=STUDENT_KEY, master_key=MASTER_KEY,
                      env={"ATLAS_TEACHER_API_KEY": TEACHER_KEY}) as p:
        yield p


def _post(proxy: ProxyProcess, body: Any = None, *, content: bytes | None = None,
          headers: dict[str, str] | None = None, timeout: float = 60) -> httpx.Response:
    auth = {"Authorization": f"Bearer {proxy.master_key}", **(headers or {})}
    if content is not None:
        auth.setdefault("Content-Type", "application/json")
        return httpx.post(f"{proxy.url}/chat/completions", content=content, headers=auth, timeout=timeout)
    return httpx.post(f"{proxy.url}/chat/completions", json=body or {"model": "student", "messages": QUESTION},
                      headers=auth, timeout=timeout)


def _timed(proxy: ProxyProcess, **kwargs: Any) -> tuple[httpx.Response, float]:
    t0 = time.perf_counter()
    response = _post(proxy, **kwargs)
    return response, time.perf_counter() - t0


def _rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with sqlite3.connect(path, timeout=30) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM atlas_calls")]


def _wait_rows(path: Path, call_ids: set[str], timeout: float = 30) -> dict[str, list[dict[str, Any]]]:
    """The ledger rows of these calls, by call id, once all are written (or the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        found: dict[str, list[dict[str, Any]]] = {}
        for row in _rows(path):
            if row["call_id"] in call_ids:
                found.setdefault(row["call_id"], []).append(row)
        if len(found) >= len(call_ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _report(response: httpx.Response) -> dict[str, Any]:
    return response.json()["atlas"]  # type: ignore[no-any-return]


@pytest.fixture
def healthy(proxy: ProxyProcess, teacher: Teacher, student: OpenAITestServer) -> Iterator[None]:
    """A healthy teacher and a closed circuit before the test, whatever the last one did."""
    student.backend.script = dict(STUDENT_SCRIPT)
    teacher.switch("ok")
    deadline = time.monotonic() + COOLDOWN + 30
    while time.monotonic() < deadline:
        response = _post(proxy)
        if response.status_code == 200 and _report(response)["reason"] not in ("circuit_open", *TEACHER_FAILURE_REASONS):
            break
        time.sleep(0.5)
    else:
        pytest.fail("the proxy did not recover a healthy teacher")
    yield
    student.backend.script = dict(STUDENT_SCRIPT)


# -- a unit check of the fix the profile found -----------------------------------------------


def test_lean_path_serves_the_proxy_routers_calls() -> None:
    # The proxy's router sends ``max_retries=0`` with every call; one attempt is what the
    # lean path makes, so it serves them (other values keep LiteLLM's SDK retries).
    lean = LeanHTTPBackend()
    base = {"api_base": "http://127.0.0.1:1/v1", "api_key": "k"}
    assert lean.accepts(ChatRequest(model="openai/m", messages=QUESTION, params={**base, "max_retries": 0}))
    assert not lean.accepts(ChatRequest(model="openai/m", messages=QUESTION, params={**base, "max_retries": 2}))
    lean.close()


# -- teacher faults: the student's answer, within the deadline, the cause named --------------

FAULTS = {
    "500": {"teacher_error"},
    "429": {"teacher_error", "teacher_timeout"},  # Retry-After: 30 exceeds the budget
    "hang": {"teacher_timeout"},
    "garbage": {"teacher_error", "teacher_unparseable"},
    "unparseable": {"teacher_unparseable", "no_guidance"},
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(FAULTS))
def test_teacher_fault_falls_back_within_the_deadline(proxy: ProxyProcess, teacher: Teacher, healthy: None,
                                                      ledger_path: Path, mode: str) -> None:
    teacher.switch(mode)
    response, elapsed = _timed(proxy)
    assert response.status_code == 200, response.text
    assert elapsed < DEADLINE, f"{mode}: {elapsed:.2f} s"
    assert response.json()["choices"][0]["message"]["content"] == BASELINE  # the student's own answer
    report = _report(response)
    assert report["reason"] in FAULTS[mode], report
    assert response.headers["x-atlas-reason"] == report["reason"]
    assert response.headers["x-atlas-decision"] in ("baseline", "student_only")
    if report["reason"] in TEACHER_FAILURE_REASONS:
        assert report["errors"], report  # the teacher's failure is described
    rows = _wait_rows(ledger_path, {report["call_id"]})
    assert rows[report["call_id"]][0]["reason"] == report["reason"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_the_callers_timeout_bounds_the_whole_taught_call(proxy: ProxyProcess, teacher: Teacher, healthy: None,
                                                          ledger_path: Path, stream: bool) -> None:
    # The proxy passes a body's ``timeout`` to the atlas provider as LiteLLM's own: the whole
    # call gets 0.5 s, shorter than the teacher's own 1 s, and the hung teacher is cut at it.
    teacher.switch("hang")
    body = {"model": "student", "messages": QUESTION, "timeout": 0.5, "stream": stream}
    response, elapsed = _timed(proxy, body=body)
    assert response.status_code == 200, response.text
    assert response.headers["x-atlas-reason"] == "teacher_timeout"
    if not stream:
        report = _report(response)
        assert report["latency_ms"]["teacher"] <= 600 and report["latency_ms"]["total"] <= 700, report["latency_ms"]
        assert [e["role"] for e in report["errors"]] == ["teacher"]  # one attempt, cut at the deadline
    else:
        assert BASELINE.split()[0] in response.text
    call_id = response.headers["x-atlas-call-id"]
    (row,) = _wait_rows(ledger_path, {call_id})[call_id]
    assert row["teacher_latency_ms"] <= 600, row["teacher_latency_ms"]
    assert elapsed < TEACHER_TIMEOUT + 1.0


@pytest.mark.slow
def test_teacher_killed_mid_run(proxy: ProxyProcess, teacher: Teacher, healthy: None, ledger_path: Path) -> None:
    results: list[tuple[httpx.Response, float]] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(6):
            r = _timed(proxy)
            with lock:
                results.append(r)

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while len(results) < 6 and time.monotonic() < deadline:  # some calls answered with a live teacher
        time.sleep(0.05)
    teacher.kill()  # SIGKILL while the other calls are in flight
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 36
    assert all(r.status_code == 200 for r, _ in results), [r.text for r, _ in results if r.status_code != 200]
    assert max(elapsed for _, elapsed in results) < DEADLINE + 2  # a few calls were mid-teacher at the kill
    reasons = [_report(r)["reason"] for r, _ in results]
    assert "agreement" in reasons or "guided" in {_report(r)["decision"] for r, _ in results}  # before the kill
    assert {"teacher_error", "teacher_timeout", "circuit_open"} & set(reasons)  # after it
    for r, _ in results:
        content = r.json()["choices"][0]["message"]["content"]
        assert content in (BASELINE, GUIDED)
    ids = {_report(r)["call_id"] for r, _ in results}
    assert len(ids) == 36
    rows = _wait_rows(ledger_path, ids)
    assert len(rows) == 36 and all(len(v) == 1 for v in rows.values())


@pytest.mark.slow
def test_circuit_breaker_makes_a_dead_teacher_free(proxy: ProxyProcess, teacher: Teacher, healthy: None) -> None:
    teacher.switch("hang")
    for _ in range(3):  # circuit_failures=3 timeouts open the circuit
        response, elapsed = _timed(proxy)
        assert _report(response)["reason"] == "teacher_timeout"
        assert elapsed >= TEACHER_TIMEOUT * 0.9
    open_calls = [_timed(proxy) for _ in range(3)]
    for response, elapsed in open_calls:
        report = _report(response)
        assert report["reason"] == "circuit_open" and report["usage"]["teacher"]["calls"] == 0
        assert response.json()["choices"][0]["message"]["content"] == BASELINE
        assert elapsed < TEACHER_TIMEOUT / 2, elapsed  # no teacher latency at all
    # after the cooldown one trial call reaches the teacher again; a healthy one closes it
    teacher.switch("ok")
    time.sleep(COOLDOWN)
    reasons = [_report(_post(proxy))["reason"] for _ in range(2)]
    assert reasons[-1] not in ("circuit_open", *TEACHER_FAILURE_REASONS), reasons


# -- student faults: the student's own status reaches the client, the ledger keeps it ------


@pytest.mark.slow
@pytest.mark.parametrize(("status", "name"), [(503, "ServiceUnavailable"), (429, "RateLimit")])
def test_student_failure_is_the_students_error(proxy: ProxyProcess, student: OpenAITestServer, healthy: None,
                                               ledger_path: Path, status: int, name: str) -> None:
    fault = HTTPFault(status, "student is down", headers={"Retry-After": "1"} if status == 429 else None)
    student.backend.script = {role: fault for role in ("probe", "guided", "baseline")}
    before = {row["call_id"] for row in _rows(ledger_path)}
    calls_before = student.backend.roles().count("baseline")
    response = _post(proxy)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert "student is down" in error["message"] and "Traceback" not in response.text
    assert not any(k.lower().startswith("x-atlas-") for k in response.headers)
    # LiteLLM's router retries a failed call (num_retries, 2 by default): each attempt is
    # one teaching loop that failed, and one ledger row that says so.
    attempts = student.backend.roles().count("baseline") - calls_before
    assert attempts >= 1
    deadline = time.monotonic() + 15
    new: list[dict[str, Any]] = []
    while len(new) < attempts and time.monotonic() < deadline:
        new = [row for row in _rows(ledger_path) if row["call_id"] not in before]
        time.sleep(0.2)
    assert len(new) == attempts, (attempts, new)
    assert all(row["failed"] == 1 and row["errors"] >= 1 for row in new)
    assert all("student is down" in json.loads(row["report_json"])["errors"][0]["message"] for row in new)


# -- load: 256 concurrent clients --------------------------------------------------------------


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def _burst(proxy: ProxyProcess, clients: int,
                 per_client: int) -> tuple[list[float], list[httpx.Response], list[str]]:
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {proxy.master_key}"}
    latencies: list[float] = []
    responses: list[httpx.Response] = []
    failures: list[str] = []
    async with httpx.AsyncClient(base_url=proxy.url, headers=headers, limits=limits, timeout=120) as client:
        async def one_client(i: int) -> None:
            for j in range(per_client):
                body = {"model": "student", "messages": [{"role": "user", "content": f"What is {i} + {j}?"}]}
                t0 = time.perf_counter()
                try:
                    response = await client.post("/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    failures.append(f"{type(exc).__name__} after {time.perf_counter() - t0:.1f} s")
                    continue
                latencies.append(time.perf_counter() - t0)
                responses.append(response)

        await asyncio.gather(*(one_client(i) for i in range(clients)))
    return latencies, responses, failures


@pytest.mark.slow
def test_256_concurrent_clients(proxy: ProxyProcess, healthy: None, ledger_path: Path) -> None:
    assert proxy.pid is not None
    clients, per_client = 256, 1
    asyncio.run(_burst(proxy, 64, 1))  # warm-up: connection pools, caches, lazy imports
    rss_before = _rss_kib(proxy.pid)
    t0 = time.perf_counter()
    latencies, responses, failures = asyncio.run(_burst(proxy, clients, per_client))
    wall = time.perf_counter() - t0
    rss_mid = _rss_kib(proxy.pid)
    # a second round at full concurrency: its pools and buffers exist now, so a leak shows
    more_latencies, more_responses, more_failures = asyncio.run(_burst(proxy, clients, per_client))
    rss_after = _rss_kib(proxy.pid)
    latencies, responses, failures = latencies + more_latencies, responses + more_responses, failures + more_failures
    errors = [r for r in responses if r.status_code != 200]
    if failures:
        print(proxy.log()[-5000:])
    ordered = sorted(latencies)
    p50, p99 = ordered[len(ordered) // 2], ordered[int(0.99 * len(ordered))]
    ids = [r.headers["x-atlas-call-id"] for r in responses if r.status_code == 200]
    rows = _wait_rows(ledger_path, set(ids), timeout=60)
    lost = len(set(ids) - set(rows))
    duplicated = sum(len(v) - 1 for v in rows.values())
    print(f"\nload: {clients} clients x {per_client} request(s), twice = {len(responses)} requests; first round "
          f"{wall:.1f} s ({clients * per_client / wall:.1f} req/s); p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms; "
          f"errors {len(errors)}, transport failures {len(failures)}; ledger rows lost {lost}, duplicated {duplicated}; "
          f"proxy VmRSS {rss_before / 1024:.0f} -> {rss_mid / 1024:.0f} -> {rss_after / 1024:.0f} MiB")
    assert not failures, failures[:5]
    assert len(responses) == 2 * clients * per_client
    assert not errors, errors[0].text
    assert len(set(ids)) == len(ids)  # one call id per response
    assert all(r.json()["atlas"]["call_id"] == r.headers["x-atlas-call-id"] for r in responses)
    assert all(r.json()["choices"][0]["message"]["content"] in (GUIDED, BASELINE) for r in responses)
    assert lost == 0 and duplicated == 0
    # flat: the first round at 256 clients grows pools and buffers; the second must not
    # grow like it again (the reports cache is bounded; a leak per call would show here)
    assert rss_after - rss_mid < 24 * 1024, (rss_before, rss_mid, rss_after)


# -- fuzzing the HTTP surface ------------------------------------------------------------------

_text = st.text(max_size=50) | st.sampled_from(["", " ", "\x00", "\u202e", "x" * 200_000])
_part = (st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "bogus", "input_text", "", None]),
                                "text": _text})
         | st.fixed_dictionaries({"text": _text}) | _text | st.none())
_content = st.none() | _text | st.integers() | st.booleans() | st.lists(_part, max_size=2)
_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "developer", "robot", "", "USER", None])},
    optional={"content": _content, "name": _text, "tool_calls": st.just("nope")},
) | _text | st.integers() | st.none()
_valid_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "developer"]), "content": _text})
_messages = (st.lists(_valid_message, min_size=1, max_size=3) | st.lists(_message, max_size=4) | st.none() | _text
             | st.dictionaries(_text, _text, max_size=2))
_params = st.fixed_dictionaries({}, optional={
    "temperature": st.sampled_from([-1, 0.5, 99, "hot", None]),
    "max_tokens": st.sampled_from([-5, 0, 1, "many", 10**12]),
    "n": st.sampled_from([0, 1, "two"]),
    "stream": st.sampled_from([False, "yes", 3, None, {"on": True}]),
    "stream_options": st.sampled_from([{"include_usage": True}, "usage", None]),
    "metadata": st.sampled_from([{"atlas": {"teach": "false"}}, {"atlas": "teach"}, {"atlas": {"policy": 3}}, "m"]),
    "tools": st.sampled_from(["none", [{"type": "function"}], [1, 2]]),
    "stop": st.sampled_from([1, ["\n"], {"a": 1}]),
    "model": st.sampled_from(["student", "", None, 7, "no-such-model"]),
})
_json_body = st.builds(lambda m, p: json.dumps({"model": "student", "messages": m, **p}).encode(),
                       _messages, st.just({}) | _params)
# A well-formed request but for its content parts (LiteLLM answers an unknown type with 500)
_parts_body = st.builds(lambda parts: json.dumps({"model": "student", "messages": [
    {"role": "system", "content": "Be brief."}, {"role": "user", "content": parts}]}).encode(),
    st.lists(_part, min_size=1, max_size=3))
# JSON that is not an object: LiteLLM 1.108 alone answers these with a bare 500
_not_an_object = st.builds(lambda v: json.dumps(v).encode(),
                           st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text
                           | st.lists(st.integers() | _text | st.just({"model": "student"}), max_size=3))
_raw_body = st.binary(max_size=200) | _not_an_object | st.sampled_from([
    b"", b"null", b"[]", b"{", b'{"model": "student", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
    b'{"model": "student", "messages": "\xc3\x28"}', "{\"model\": \"student\"}".encode("utf-16"),
    b' \n [{"model": "student"}]', b'"student"',
])

# Issue 23's shapes: deep nesting (the gate's own parse recursed into a 500, without a key),
# bodies over the size limit, and teacher-format tags spelled with confusables in the
# user's text, which must stay the user's text.
_CONFUSABLE = ["<\u200bverdict>", "</\u200bteaching>", "<\uff54eaching>", "<thinking\u00ad>",
               "\u202e<level>1</level>", "<verdict>A</verdict>"]
_deep = (st.integers(MAX_DEPTH + 1, 100_000).map(lambda n: b"[" * n)
         | st.integers(MAX_DEPTH + 1, 5_000).map(
             lambda n: b'{"model": "student", "messages": ' + b"[" * n + b"]" * n + b"}"))
_oversized = st.integers(MAX_BODY + 1, 3 * MAX_BODY).map(lambda n: json.dumps(
    {"model": "student", "messages": [{"role": "user", "content": "x" * n}]}).encode())
_confusable = st.builds(lambda tag, text: json.dumps({"model": "student", "messages": [
    {"role": "user", "content": f"{text}{tag} What is 20 + 22?"}]}).encode(), st.sampled_from(_CONFUSABLE), _text)
# How a body is sent: with the key (mostly), without one, chunked (no Content-Length),
# in two pieces within the deadline, or stalled past it.
_HOW = ["key"] * 4 + ["no key", "chunked", "trickle", "stall"]

FUZZ_LOG: list[tuple[int, str | None]] = []


FUZZ_TIMEOUT = 30.0  # seconds: an answer that takes longer is a hang (a taught call here takes < 1 s)


def _pieces(body: bytes, pause: float) -> Iterator[bytes]:
    """The body in two chunks, ``pause`` seconds apart (httpx sends no Content-Length then)."""
    yield body[:len(body) // 2]
    time.sleep(pause)
    yield body[len(body) // 2:]


def _send(proxy: ProxyProcess, body: bytes, how: str) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if how != "no key":
        headers["Authorization"] = f"Bearer {proxy.master_key}"
    pause = {"chunked": 0.0, "trickle": 0.3, "stall": BODY_TIMEOUT + 1}.get(how)
    content: bytes | Iterable[bytes] = body if pause is None else _pieces(body, pause)
    return httpx.post(f"{proxy.url}/chat/completions", content=content, headers=headers, timeout=FUZZ_TIMEOUT)


def _expected(body: bytes, how: str) -> int | None:
    """The gate's answer to this body sent this way; None where it lets LiteLLM answer."""
    if how == "no key":
        return 401
    if how == "stall" and len(body) // 2 <= MAX_BODY:  # the first piece passes, then nothing comes
        return 408
    if len(body) > MAX_BODY:
        return 413
    if gate.too_deep(body, MAX_DEPTH):
        return 400
    return None


@pytest.mark.slow
@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=_json_body | _parts_body | _raw_body | _deep | _oversized | _confusable, how=st.sampled_from(_HOW))
def test_fuzzed_requests_get_a_clear_answer(proxy: ProxyProcess, student: OpenAITestServer, body: bytes,
                                            how: str) -> None:
    # No 5xx, no hang, a message for every refusal, and a refusal reaches no model.
    calls_before = len(student.backend.calls)
    try:
        response = _send(proxy, body, how)
    except httpx.TimeoutException:
        pytest.fail(f"no answer within {FUZZ_TIMEOUT:g} s to {body[:300]!r} ({how})")
    FUZZ_LOG.append((response.status_code, response.headers.get("x-atlas-call-id")))
    assert response.status_code < 500, (body[:300], how, response.status_code, response.text[:1000])
    assert "Traceback" not in response.text
    expected = _expected(body, how)
    if expected is not None:
        assert response.status_code == expected, (body[:300], how, response.status_code, response.text[:300])
    if response.status_code >= 400:
        message = response.json()["error"]["message"]
        assert isinstance(message, str) and message.strip()
        assert len(student.backend.calls) == calls_before, body[:300]  # no probe, so no teacher either
    else:
        assert response.json()["choices"]
    if expected == 400:
        assert f"deeper than {MAX_DEPTH} levels" in response.json()["error"]["message"]


@pytest.mark.slow
@pytest.mark.parametrize("body", [b"null", b"[]", b"1", b"-0.5", b'"hello"', b"true", b'[{"model": "student"}]'])
def test_json_body_that_is_not_an_object(proxy: ProxyProcess, body: bytes) -> None:
    # LiteLLM 1.108.7 crashes on these in its auth (pre_db_read_auth_checks) before any hook
    # runs; the atlas gate (atlas_middleware/proxy/gate.py) answers first.
    response = _post(proxy, content=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "body" and "must be a JSON object" in error["message"]


def _raw_head(proxy: ProxyProcess, length: int | None, key: str | None, extra: str = "") -> bytes:
    lines = ["POST /v1/chat/completions HTTP/1.1", f"Host: 127.0.0.1:{proxy.port}", "Content-Type: application/json"]
    lines += [f"Authorization: Bearer {key}"] if key else []
    lines += [f"Content-Length: {length}"] if length is not None else ["Transfer-Encoding: chunked"]
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def _raw_status(sock: socket.socket, timeout: float) -> int:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n" not in data:
        got = sock.recv(4096)
        if not got:
            break
        data += got
    return int(data.split(b" ", 2)[1]) if data else 0


@pytest.mark.slow
@pytest.mark.parametrize(("key", "status"), [(None, 401), ("wrong", 401), (MASTER_KEY, 413)])
def test_a_huge_declared_body_is_answered_before_it_is_sent(proxy: ProxyProcess, key: str | None,
                                                             status: int) -> None:
    # Before: the proxy read the whole body first (100 MB without a key: 560 MiB, a 2.8 s stall).
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(_raw_head(proxy, 100 * 1024 * 1024, key))  # and not one byte of it
        assert _raw_status(sock, timeout=10) == status


@pytest.mark.slow
@pytest.mark.parametrize("key", [None, MASTER_KEY])
def test_deep_nesting_is_never_a_500(proxy: ProxyProcess, key: str | None) -> None:
    # Before: 100,000 '[' was a 500 (RecursionError in the gate), with a key or without.
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    for body in (b"[" * 100_000, b'{"model": "student", "messages": ' + b"[" * 900 + b"]" * 900 + b"}"):
        response = httpx.post(f"{proxy.url}/chat/completions", content=body, timeout=30,
                              headers={"Content-Type": "application/json", **headers})
        error = response.json()["error"]
        if key is None:
            assert response.status_code == 401 and error["type"] == "auth_error", response.text
        else:
            assert response.status_code == 400, response.text
            assert error["message"] == f"the request body nests JSON deeper than {MAX_DEPTH} levels, the most this proxy accepts"


@pytest.mark.slow
def test_a_chunked_upload_is_cut_at_the_limit(proxy: ProxyProcess, student: OpenAITestServer) -> None:
    calls = len(student.backend.calls)
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(_raw_head(proxy, None, MASTER_KEY))
        chunk = b"%x\r\n%s\r\n" % (64 * 1024, b" " * 64 * 1024)
        try:
            for _ in range(4 * MAX_BODY // (64 * 1024)):
                sock.sendall(chunk)
        except OSError:  # answered and closed
            pass
        assert _raw_status(sock, timeout=10) == 413
    assert len(student.backend.calls) == calls


@pytest.mark.slow
def test_a_slow_body_is_timed_out(proxy: ProxyProcess, student: OpenAITestServer) -> None:
    # Before: a client sending a byte a second held its connection (and buffer) forever.
    body = json.dumps({"model": "student", "messages": QUESTION}).encode()
    calls = len(student.backend.calls)
    with socket.create_connection(("127.0.0.1", proxy.port)) as sock:
        sock.sendall(_raw_head(proxy, len(body), MASTER_KEY))
        sock.settimeout(0.05)
        t0 = time.perf_counter()
        answer = b""
        for byte in body:
            try:
                sock.sendall(bytes([byte]))
                answer = sock.recv(4096)
                break
            except TimeoutError:
                time.sleep(0.45)  # two bytes a second
            except OSError:
                break
        took = time.perf_counter() - t0
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert BODY_TIMEOUT <= took < BODY_TIMEOUT + 5, took
    assert len(student.backend.calls) == calls


@pytest.mark.slow
def test_session_ids_are_bounded(proxy: ProxyProcess, student: OpenAITestServer, healthy: None,
                                 ledger_path: Path) -> None:
    # Before: a 10 KB x-atlas-session-id was stored as it came (state key, ledger column).
    calls = len(student.backend.calls)
    for headers, body in (({"x-atlas-session-id": "s" * 10_000}, None),
                          ({}, {"model": "student", "messages": QUESTION, "metadata": {"atlas": {"session_id": 7}}}),
                          ({}, {"model": "student", "messages": QUESTION,
                                "metadata": {"atlas": {"session_id": "a\nb"}}})):
        response = _post(proxy, body, headers=headers)
        assert response.status_code == 400, response.text[:300]
        assert "session_id" in response.json()["error"]["message"]
    assert len(student.backend.calls) == calls
    ok = _post(proxy, headers={"x-atlas-session-id": "agent-7:task-3"})
    assert ok.status_code == 200
    rows = _wait_rows(ledger_path, {ok.headers["x-atlas-call-id"]})
    assert [r["session_id"] for r in rows[ok.headers["x-atlas-call-id"]]] == ["agent-7:task-3"]


@pytest.mark.slow
def test_fuzzing_left_nothing_half_written(proxy: ProxyProcess, ledger_path: Path) -> None:
    if not FUZZ_LOG:
        pytest.skip("runs after the fuzz test")
    answered = {call_id for status, call_id in FUZZ_LOG if status == 200 and call_id}
    rows = _wait_rows(ledger_path, answered)
    assert set(rows) == answered and all(len(v) == 1 for v in rows.values())
    for versions in rows.values():
        row = versions[0]
        assert row["decision"] in ("guided", "baseline", "student_only") and json.loads(row["report_json"])
    print(f"\nfuzz: {len(FUZZ_LOG)} requests, statuses "
          f"{ {s: sum(1 for x, _ in FUZZ_LOG if x == s) for s in sorted({x for x, _ in FUZZ_LOG})} }")


# -- secrets -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_no_key_in_ledger_logs_metrics_or_responses(proxy: ProxyProcess, teacher: Teacher, student: OpenAITestServer,
                                                     healthy: None, ledger_path: Path) -> None:
    bodies: list[str] = []
    for mode in ("ok", "leak"):
        teacher.switch(mode)
        response = _post(proxy)
        assert response.status_code == 200
        bodies.append(response.text + json.dumps(dict(response.headers)))
    # a student whose error echoes its key
    student.backend.script = {role: HTTPFault(503, f"bad key {STUDENT_KEY}") for role in ("probe", "guided", "baseline")}
    response = _post(proxy)
    assert response.status_code == 503
    bodies.append(response.text + json.dumps(dict(response.headers)))
    student.backend.script = dict(STUDENT_SCRIPT)
    bodies.append(httpx.get(f"{proxy.base}/atlas/metrics", timeout=30).text)
    time.sleep(1.0)  # the last ledger write
    db = b"".join(p.read_bytes() for p in ledger_path.parent.glob(ledger_path.name + "*")).decode("latin-1")
    haystacks = {"responses": "\n".join(bodies), "proxy log": proxy.log(), "ledger": db}
    assert "[REDACTED]" in db or "[REDACTED]" in haystacks["responses"]  # the leaking errors were seen
    for secret in (MASTER_KEY, TEACHER_KEY, STUDENT_KEY):
        for where, hay in haystacks.items():
            assert secret not in hay, f"{secret[:6]}... found in {where}"
    assert os.path.getsize(ledger_path) > 0
