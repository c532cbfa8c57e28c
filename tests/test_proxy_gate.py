"""The proxy's front door (atlas_middleware/proxy/gate.py, proxy/auth.py) without the proxy.

The gate is driven as the ASGI server drives it: a scope, a ``receive`` that hands out the
body in chunks (and records how much of it was read) and a ``send`` that collects the
answer; then under a real uvicorn server on loopback, through raw sockets, for what only a
socket shows (an answer before the body is sent, a client that sends a byte a second).
The same bounds through the real LiteLLM proxy: tests/test_reliability_proxy.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from atlas_middleware.proxy import auth
from atlas_middleware.proxy.gate import MIB, AtlasGate, GateLimits, body_problem, install, too_deep

MASTER = "sk-gate-master"
CHAT = "/v1/chat/completions"
GOOD = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode()


async def _ready() -> None:
    return None


def _master_only(headers: Any) -> str | None:
    """A key check like ``auth.key_problem`` on a proxy with a master key and no database."""
    key = auth.presented_key(headers)
    return None if key == MASTER else (auth.NO_KEY if key is None else auth.WRONG_KEY)


class Inner:
    """The app behind the gate: records the body it was handed."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


class Client:
    """One request through the gate: its body in ``chunk``-byte pieces, ``delay`` s apart."""

    def __init__(self, body: bytes, *, chunk: int = 64 * 1024, delay: float = 0.0) -> None:
        self.pieces = [body[i:i + chunk] for i in range(0, len(body), chunk)] or [b""]
        self.delay = delay
        self.read = 0  # bytes of the body the gate asked for
        self.sent: list[Any] = []

    async def receive(self) -> dict[str, Any]:
        if self.delay:
            await asyncio.sleep(self.delay)
        if not self.pieces:
            return {"type": "http.disconnect"}
        piece = self.pieces.pop(0)
        self.read += len(piece)
        return {"type": "http.request", "body": piece, "more_body": bool(self.pieces)}

    async def send(self, message: Any) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def error(self) -> dict[str, Any]:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))["error"]  # type: ignore[no-any-return]


def _call(gate: AtlasGate, body: bytes, headers: dict[str, str] | None = None, *, path: str = CHAT,
          declare_length: bool = True, **client: Any) -> Client:
    head = {"authorization": f"Bearer {MASTER}", "content-type": "application/json", **(headers or {})}
    if declare_length:
        head["content-length"] = str(len(body))
    scope = {"type": "http", "method": "POST", "path": path,
             "headers": [(k.encode(), v.encode()) for k, v in head.items() if v is not None]}
    c = Client(body, **client)
    asyncio.run(gate(scope, c.receive, c.send))
    return c


def _gate(limits: GateLimits | None = None) -> tuple[AtlasGate, Inner]:
    inner = Inner()
    return AtlasGate(inner, _ready, limits or GateLimits(max_body_bytes=MIB, body_timeout=2.0), _master_only), inner


# -- keys: before a byte of the body -----------------------------------------------------------------


@pytest.mark.parametrize("path", [CHAT, "/chat/completions", "/openai/deployments/m/chat/completions",
                                  "/v1/completions", "/v1/messages", "/v1/responses"])
def test_no_key_is_a_401_before_the_body_is_read(path: str) -> None:
    gate, inner = _gate()
    c = _call(gate, b"[" * 100_000, {"authorization": None}, path=path)  # type: ignore[dict-item]
    assert c.status == 401 and c.read == 0 and inner.bodies == []
    assert c.error == {"message": auth.NO_KEY, "type": "auth_error", "param": "api_key", "code": "401"}


def test_a_wrong_key_is_a_401_and_the_master_key_in_any_header_passes() -> None:
    gate, inner = _gate()
    wrong = _call(gate, GOOD, {"authorization": "Bearer sk-guess"})
    assert wrong.status == 401 and wrong.read == 0 and wrong.error["message"] == auth.WRONG_KEY
    for header in ({"authorization": f"Bearer {MASTER}"}, {"authorization": None, "x-api-key": MASTER},
                   {"authorization": None, "api-key": MASTER}, {"authorization": None, "x-litellm-api-key": MASTER}):
        assert _call(gate, GOOD, header).status == 200, header  # type: ignore[arg-type]
    assert inner.bodies == [GOOD] * 4


def test_other_paths_and_methods_pass_untouched() -> None:
    gate, inner = _gate()
    for path in ("/key/generate", "/v1/models", "/v1/embeddings"):
        assert _call(gate, b"[" * 100_000, {"authorization": None}, path=path).status == 200
    assert len(inner.bodies) == 3


# -- size, time, depth -------------------------------------------------------------------------------


def test_a_declared_oversized_body_is_a_413_unread() -> None:
    gate, inner = _gate()
    c = _call(gate, b"x" * (MIB + 1))
    assert c.status == 413 and c.read == 0 and inner.bodies == []
    assert "1048576 bytes" in c.error["message"] and c.error["param"] == "body"


def test_an_undeclared_oversized_body_is_a_413_at_the_limit() -> None:
    gate, inner = _gate()
    c = _call(gate, b"x" * (5 * MIB), declare_length=False, chunk=64 * 1024)
    assert c.status == 413 and inner.bodies == []
    assert MIB < c.read <= MIB + 64 * 1024  # the limit and one chunk, not the 5 MiB sent


def test_a_body_at_the_limit_passes_whole() -> None:
    gate, inner = _gate()
    body = GOOD + b" " * (MIB - len(GOOD))
    assert _call(gate, body, declare_length=False).status == 200 and inner.bodies == [body]


def test_a_slow_body_is_a_408_at_the_deadline() -> None:
    gate, inner = _gate(GateLimits(body_timeout=0.5))
    t0 = time.perf_counter()
    c = _call(gate, GOOD, chunk=1, delay=0.05)  # 20 bytes a second
    assert c.status == 408 and inner.bodies == []
    assert 0.5 <= time.perf_counter() - t0 < 2.0
    assert "within 0.5 s" in c.error["message"]


@pytest.mark.parametrize("body", [
    b"[" * 100_000,  # the 500 of issue 23: RecursionError in the gate's parse
    b"[" * 65 + b"]" * 65,
    b'{"model": "m", "messages": ' + b"[" * 65 + b"]" * 65 + b"}",  # an object: LiteLLM's parse, then ours, would recurse
    b'{"model": "m", "tools": ' + b'{"a":' * 70 + b"1" + b"}" * 70 + b"}",
])
def test_deep_nesting_is_a_400_naming_the_limit(body: bytes) -> None:
    gate, inner = _gate()
    c = _call(gate, body)
    assert c.status == 400 and inner.bodies == []
    assert c.error["message"] == "the request body nests JSON deeper than 64 levels, the most this proxy accepts"


def test_depth_counts_brackets_outside_strings_only() -> None:
    text = json.dumps({"model": "m", "messages": [{"role": "user", "content": "[" * 5000 + '\\"{' * 100}]}).encode()
    assert not too_deep(text, 64)
    assert not too_deep(b"[" * 64 + b"]" * 64, 64) and too_deep(b"[" * 65 + b"]" * 65, 64)
    assert too_deep(b'"unterminated \\" [' + b"[" * 70, 64) is False  # all of it is one string
    assert too_deep(b'"a" ' + b"{" * 70, 64)
    gate, inner = _gate()
    assert _call(gate, text).status == 200 and inner.bodies == [text]


def test_non_object_bodies_are_400_and_never_500() -> None:
    for body, kind in ((b"[]", "an array"), (b"null", "null"), (b" 42", "a number"), (b'"hi"', "a string"),
                       (b"[" + b"1," * 300_000 + b"1]", "an array"), (b"[1, 2", "an array")):
        problem = body_problem(body)
        assert problem is not None and problem.endswith(f"got {kind}"), (body[:20], problem)
    for body in (b"", b"{", GOOD, b"\xff\xfe\x00garbage", '{"model": "m"}'.encode("utf-16"), b"nul"):
        assert body_problem(body) is None, body  # LiteLLM reads it (its own 400 for non-JSON)


def test_the_depth_scan_is_linear() -> None:
    # A string that cannot end would be retried from every later quote: quadratic. CPU time
    # of this thread, not wall time: the other tests' processes share the cores.
    def took(body: bytes) -> float:
        best = float("inf")
        for _ in range(5):
            t0 = time.thread_time()
            too_deep(body, 64)
            best = min(best, time.thread_time() - t0)
        return best

    for unit in (b'\\"', b"[]", b"[" * 60 + b"]" * 60 + b",", b'{"a":"\\\\",'):
        small, large = took(unit * (50_000 // len(unit))), took(unit * (500_000 // len(unit)))
        assert large <= 15 * small + 0.001, (unit[:10], small, large)


def test_limits_come_from_the_config_and_are_checked() -> None:
    from atlas_middleware.config import AtlasConfig

    limits = GateLimits.of(AtlasConfig(proxy_max_body_mb=0.5, proxy_body_timeout=5, proxy_max_json_depth=10))
    assert limits == GateLimits(max_body_bytes=MIB // 2, body_timeout=5.0, max_json_depth=10)
    assert GateLimits.of(AtlasConfig()) == GateLimits(max_body_bytes=10 * MIB, body_timeout=60.0, max_json_depth=64)
    with pytest.raises(ValueError):
        GateLimits(max_body_bytes=0)


def test_install_again_updates_the_limits_and_the_key_check() -> None:
    app = SimpleNamespace(middleware_stack=Inner())
    first = install(app, _ready)
    second = install(app, _ready, GateLimits(max_body_bytes=10), _master_only)
    assert first is second and second.limits.max_body_bytes == 10 and second.key_problem is _master_only


# -- the key check against LiteLLM's proxy state -----------------------------------------------------


@pytest.fixture
def litellm_proxy(monkeypatch: pytest.MonkeyPatch) -> Any:
    state = SimpleNamespace(master_key=MASTER, prisma_client=None, user_custom_auth=None, general_settings={})
    monkeypatch.setattr(auth, "_proxy", lambda: state)
    return state


def test_key_problem_follows_litellms_rules(litellm_proxy: Any) -> None:
    assert auth.key_problem({}) == auth.NO_KEY
    assert auth.key_problem({"authorization": "", "x-api-key": " "}) == auth.NO_KEY
    assert auth.key_problem({"authorization": "Bearer sk-other"}) == auth.WRONG_KEY
    assert auth.key_problem({"authorization": f"bearer {MASTER}"}) is None
    assert auth.key_problem({"x-goog-api-key": MASTER}) is None
    # LiteLLM takes x-litellm-api-key over Authorization: a wrong one there is wrong
    assert auth.key_problem({"x-litellm-api-key": "sk-other", "authorization": MASTER}) == auth.WRONG_KEY
    litellm_proxy.general_settings = {"litellm_key_header_name": "X-My-Key"}
    assert auth.key_problem({"x-my-key": MASTER}) is None
    # a database: virtual keys are LiteLLM's to check, after the size bounds
    litellm_proxy.prisma_client = object()
    assert auth.key_problem({"authorization": "Bearer sk-virtual"}) is None
    assert auth.key_problem({}) == auth.NO_KEY


def test_key_problem_stands_aside_where_litellm_checks_no_key_or_another_does(litellm_proxy: Any) -> None:
    litellm_proxy.general_settings = {"enable_jwt_auth": True}
    assert auth.key_problem({"authorization": "Bearer eyJ.token"}) is None  # a JWT, no database needed
    litellm_proxy.general_settings = {"enable_oauth2_proxy_auth": True}
    assert auth.key_problem({}) is None
    litellm_proxy.general_settings = {}
    litellm_proxy.user_custom_auth = lambda request, api_key: None  # the operator's own rules
    assert auth.key_problem({}) is None
    litellm_proxy.user_custom_auth = auth.user_api_key_auth  # ours: the gate's rules hold
    assert auth.key_problem({}) == auth.NO_KEY
    litellm_proxy.master_key = None  # LiteLLM without auth
    assert auth.key_problem({}) is None


# -- a real server, raw sockets --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[int, Inner]]:
    uvicorn = pytest.importorskip("uvicorn")
    from atlas_middleware.testing.proxy import free_port

    inner = Inner()
    gate = AtlasGate(inner, _ready, GateLimits(max_body_bytes=MIB, body_timeout=1.5), _master_only)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(gate, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive()
        time.sleep(0.05)
    yield port, inner
    server.should_exit = True
    thread.join(timeout=10)


def _head(length: int | None, key: str | None = MASTER) -> bytes:
    lines = [f"POST {CHAT} HTTP/1.1", "Host: gate", "Content-Type: application/json"]
    lines += [f"Authorization: Bearer {key}"] if key else []
    lines += [f"Content-Length: {length}"] if length is not None else ["Transfer-Encoding: chunked"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _status(sock: socket.socket, timeout: float) -> int:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n" not in data:
        got = sock.recv(4096)
        if not got:
            break
        data += got
    return int(data.split(b" ", 2)[1])


@pytest.mark.parametrize(("key", "status"), [(None, 401), (MASTER, 413)])
def test_socket_answer_comes_before_the_body_is_sent(served: tuple[int, Inner], key: str | None, status: int) -> None:
    port, _ = served
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(100 * MIB, key))  # and not one byte of the 100 MiB
        assert _status(sock, timeout=5) == status


def test_socket_chunked_upload_is_cut_at_the_limit(served: tuple[int, Inner]) -> None:
    port, inner = served
    before = len(inner.bodies)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(None))
        chunk = b"%x\r\n%s\r\n" % (64 * 1024, b"[" * 64 * 1024)
        sent = 0
        try:
            for _ in range(64):  # 4 MiB offered
                sock.sendall(chunk)
                sent += 1
        except OSError:  # the server answered and closed
            pass
        assert _status(sock, timeout=5) == 413
    assert len(inner.bodies) == before


def test_socket_slow_body_is_timed_out(served: tuple[int, Inner]) -> None:
    # Before the gate had a deadline, a client at one byte a second held the connection forever.
    port, inner = served
    before = len(inner.bodies)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(_head(len(GOOD)))
        sock.settimeout(0.05)
        t0 = time.perf_counter()
        answer = b""
        for byte in GOOD:
            sock.sendall(bytes([byte]))
            try:
                answer = sock.recv(4096)
                break
            except TimeoutError:
                time.sleep(0.2)
        took = time.perf_counter() - t0
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]
    assert 1.5 <= took < 4, took
    assert len(inner.bodies) == before
