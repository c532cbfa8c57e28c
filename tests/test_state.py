"""The state a replica shares (``atlas_middleware/state``) without a Redis server: memory
semantics, the fallback wrapper's back-off and warnings, settings, the metrics, and an
``Atlas`` whose Redis never answers. ``test_state_redis.py`` runs against a real one."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from atlas_middleware.config import AtlasConfig
from atlas_middleware.errors import ConfigError, MissingExtraError
from atlas_middleware.report import Reason
from atlas_middleware.state import FallbackState, MemoryState, SharedState, StateStatus, open_state
from atlas_middleware.state.breaker import CircuitBreaker
from atlas_middleware.state.sessions import SessionCache
from atlas_middleware.testing import teacher_reply


def state_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [rec.getMessage() for rec in caplog.records if rec.name == "atlas_middleware.state"]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# -- memory: today's behaviour, through the protocol -------------------------------------


def test_memory_state_is_the_process_cache_and_breaker() -> None:
    state = open_state("memory", session_ttl=60.0, failures=2, cooldown=30.0)
    assert isinstance(state, MemoryState) and isinstance(state, SharedState)
    assert isinstance(state.sessions, SessionCache) and isinstance(state.breaker, CircuitBreaker)
    assert not state.blocking and state.status() == StateStatus(backend="memory")
    assert state.sessions.lookup("s") is None
    state.sessions.put("s", "")
    assert state.sessions.lookup("s") == ""  # "the student is strong" is remembered, not absent
    state.sessions.put("s", "Carry the one.")
    assert state.sessions.lookup("s") == "Carry the one."
    state.sessions.drop("s")
    assert state.sessions.lookup("s") is None
    state.breaker.failure()
    assert state.breaker.state == "closed" and state.breaker.allow()
    state.breaker.failure()
    assert state.breaker.state == "open" and not state.breaker.allow()


def test_atlas_builds_memory_state_by_default(make_atlas) -> None:
    atlas, *_ = make_atlas(session_ttl=12.0, circuit_failures=3, circuit_cooldown=7.0)
    assert isinstance(atlas.state, MemoryState)
    assert atlas.sessions is atlas.state.sessions and atlas.breaker is atlas.state.breaker
    assert atlas.state.sessions.ttl == 12.0
    assert (atlas.state.breaker.failures, atlas.state.breaker.cooldown) == (3, 7.0)


# -- the fallback wrapper ----------------------------------------------------------------


class Down(ConnectionError):
    pass


class _Flaky:
    def __init__(self, owner: FlakyState, inner: Any) -> None:
        self._owner, self._inner = owner, inner

    def __getattr__(self, name: str) -> Any:
        self._owner.calls += 1
        if self._owner.down:
            time.sleep(self._owner.delay)  # a silent store: the client's timeout
            raise Down("shared state unreachable")
        return getattr(self._inner, name)


class FlakyState:
    """A shared state double: process memory that raises while ``down``, counting calls."""

    blocking = True

    def __init__(self) -> None:
        self.shared = MemoryState(failures=1, cooldown=30.0)
        self.down = False
        self.delay = 0.0
        self.calls = 0
        self.sessions: Any = _Flaky(self, self.shared.sessions)
        self.breaker: Any = _Flaky(self, self.shared.breaker)

    def status(self) -> StateStatus:
        return StateStatus(backend="flaky")

    def close(self) -> None:
        pass


@pytest.fixture
def flaky() -> tuple[FallbackState, FlakyState, Clock]:
    clock = Clock()
    primary = FlakyState()
    return FallbackState(primary, MemoryState(failures=1, cooldown=30.0), backoff=1.0, warn_every=60.0,
                         clock=clock), primary, clock


def test_fallback_serves_from_memory_and_backs_off(flaky, caplog: pytest.LogCaptureFixture) -> None:
    state, primary, clock = flaky
    caplog.set_level(logging.WARNING, "atlas_middleware.state")
    state.sessions.put("a", "shared hint")
    assert state.status() == StateStatus(backend="flaky", degraded=False, fallbacks={})
    primary.down = True
    assert state.sessions.lookup("a") is None  # memory has never seen it
    assert primary.calls == 2 and state.status().degraded
    # During the back-off the shared state is not tried at all: no timeout paid per call.
    state.sessions.put("b", "local hint")
    assert state.sessions.lookup("b") == "local hint"
    state.breaker.failure()
    assert not state.breaker.allow()  # the memory breaker (failures=1) opened
    assert primary.calls == 2
    assert state.status().fallbacks == {"session_lookup": 2, "session_put": 1, "breaker_failure": 1,
                                        "breaker_allow": 1}
    warnings = state_log(caplog)
    assert len(warnings) == 1 and "unreachable" in warnings[0]
    assert "Down: shared state unreachable" in warnings[0]
    # After the back-off it is tried again; still down: one more try, then memory again.
    clock.now += 1.0
    assert state.sessions.lookup("b") == "local hint"
    assert primary.calls == 3
    clock.now += 0.5
    state.sessions.lookup("b")
    assert primary.calls == 3
    # Back: the shared state serves again, and says so once.
    primary.down = False
    clock.now += 1.0
    assert state.sessions.lookup("a") == "shared hint"
    assert state.breaker.allow()  # the shared breaker never saw the failure made in memory
    assert not state.status().degraded
    messages = state_log(caplog)
    assert len(messages) == 2 and "reachable again" in messages[1]


def test_while_lost_one_caller_probes_the_shared_state_and_the_others_keep_to_memory(flaky) -> None:
    state, primary, clock = flaky
    primary.down, primary.delay = True, 0.2
    state.breaker.allow()
    assert primary.calls == 1 and state.status().degraded
    clock.now += 1.0  # the back-off is over: 8 callers at once
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: state.sessions.lookup("x"), range(8)))
    assert primary.calls == 2  # one probe paid the timeout
    assert time.perf_counter() - t0 < 0.4 and state.status().fallbacks["session_lookup"] == 8


def test_fallback_warnings_are_rate_limited(flaky, caplog: pytest.LogCaptureFixture) -> None:
    state, primary, clock = flaky
    caplog.set_level(logging.WARNING, "atlas_middleware.state")
    primary.down = True
    for _ in range(30):  # 30 failed tries, one per back-off period, over 30 s
        state.breaker.allow()
        clock.now += 1.0
    assert primary.calls == 30 and len(state_log(caplog)) == 1
    # 29 of those went unwarned; the next warning, a minute after the first, counts them.
    clock.now += 30.0
    state.breaker.allow()
    assert len(state_log(caplog)) == 2 and "still unreachable: 30" in state_log(caplog)[1]
    assert state.status().fallbacks == {"breaker_allow": 31}


def test_fallback_close_survives_a_dead_primary() -> None:
    class Dead(FlakyState):
        def close(self) -> None:
            raise Down("gone")

    FallbackState(Dead(), MemoryState()).close()


# -- settings ------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["memory", "MEMORY", " memory ", "redis://127.0.0.1:6379/0",
                                   "rediss://user:pw@cache.example:6380/2"])
def test_state_setting_accepts_memory_and_redis_urls(value: str) -> None:
    config = AtlasConfig.build({"state": value})
    assert config.state.url == ("memory" if value.strip().lower() == "memory" else value)


@pytest.mark.parametrize(("value", "expected"), [
    ("postgresql://u:secret@h/db", "got a postgresql:// URL"),
    ("redis-cache", "must be 'memory' or a redis:// or rediss:// URL"),
    ("redis://u:secret@h:port/0", "not a valid Redis URL"),
])
def test_bad_state_setting_is_a_config_error_without_the_password(value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match="state") as info:
        AtlasConfig.build({"state": value})
    assert expected in str(info.value) and "secret" not in str(info.value)


def test_state_settings_from_the_environment() -> None:
    config = AtlasConfig.load(env={"ATLAS_STATE": "redis://r:6379/1", "ATLAS_STATE_TIMEOUT": "0.05",
                                   "ATLAS_STATE_PREFIX": "litellm-atlas:"})
    assert (config.state.url, config.state.timeout, config.state.prefix) == ("redis://r:6379/1", 0.05, "litellm-atlas:")
    assert AtlasConfig.build({}).state.url == "memory" and AtlasConfig.build({}).state.prefix == "atlas:"
    for bad in ({"state_timeout": 0}, {"state_timeout": -1}, {"state_prefix": ""}):
        with pytest.raises(ConfigError):
            AtlasConfig.build(bad)


def test_redis_state_without_redis_py_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(MissingExtraError, match=r"atlas-middleware\[redis\]") as info:
        open_state("redis://127.0.0.1:6379/0")
    assert info.value.extra == "redis"


# -- an Atlas whose Redis never answers ----------------------------------------------------


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A TCP port that accepts connections (the kernel's backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    try:
        yield f"redis://127.0.0.1:{sock.getsockname()[1]}/0"
    finally:
        sock.close()


def test_a_silent_redis_costs_one_bounded_timeout_then_nothing(make_atlas, call, black_hole: str,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "atlas_middleware.state")
    atlas, _, teacher = make_atlas(state=black_hole, state_timeout=0.1, student={"guided": "The answer is 41"})
    assert isinstance(atlas.state, FallbackState) and atlas.state.blocking
    walls = []
    for _ in range(4):
        t0 = time.perf_counter()
        report = call(atlas, atlas={"session_id": "task-1"}).atlas
        walls.append(time.perf_counter() - t0)
        assert report.reason == Reason.AGREEMENT
    # The first call pays one timed-out operation; the back-off spares the others.
    assert walls[0] < 0.5, walls  # state_timeout is 0.1 s: one or two operations time out
    assert max(walls[1:]) < 0.25, walls
    # Sessions still work, from this process's memory: one diagnosis for the four calls.
    assert teacher.roles().count("teacher") == 1
    status = atlas.state.status()
    assert status.backend == "redis" and status.degraded
    assert status.fallbacks["session_lookup"] == 4 and status.fallbacks["breaker_allow"] == 1
    assert len(state_log(caplog)) == 1 and "TimeoutError" in state_log(caplog)[0]


def test_async_calls_leave_the_event_loop_free_while_redis_is_silent(make_atlas, black_hole: str) -> None:
    atlas, *_ = make_atlas(state=black_hole, state_timeout=0.3, student={"guided": "The answer is 41"})

    async def go() -> float:
        gaps: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not done.is_set():
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.02)
        t0 = time.perf_counter()
        r = await atlas.acompletion(model="m", messages=[{"role": "user", "content": "What is 20 + 22?"}])
        assert r.atlas.reason == Reason.AGREEMENT and time.perf_counter() - t0 >= 0.3  # it did wait
        done.set()
        await task
        return max(gaps)

    # The state's timed-out operation ran in a thread: the loop kept ticking meanwhile.
    assert asyncio.run(go()) < 0.15


def test_a_refused_redis_connection_falls_back_at_once(make_atlas) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        atlas, *_ = make_atlas(state=f"redis://127.0.0.1:{port}/0", state_timeout=5.0,
                               student={"guided": "The answer is 41"})

        async def go() -> Any:
            return await atlas.acompletion(model="m", messages=[{"role": "user", "content": "What is 20 + 22?"}])

        t0 = time.perf_counter()
        assert asyncio.run(go()).atlas.reason == Reason.AGREEMENT
        assert time.perf_counter() - t0 < 1.0  # a refusal does not wait for state_timeout
        assert atlas.state.status().degraded


# -- metrics -------------------------------------------------------------------------------


def test_metrics_export_the_state_fallbacks_and_health(flaky) -> None:
    pytest.importorskip("prometheus_client")
    from atlas_middleware.proxy.metrics import AtlasMetrics

    state, primary, _ = flaky
    metrics = AtlasMetrics(replica="r1")
    current: dict[str, Any] = {"state": None}
    metrics.watch_state(lambda: current["state"].status() if current["state"] else None)
    text = metrics.render().decode()
    assert "# TYPE atlas_state_fallbacks_total counter" in text and "atlas_state_degraded{" not in text
    current["state"] = state
    state.breaker.allow()
    assert 'atlas_state_degraded{backend="flaky",replica="r1"} 0.0' in metrics.render().decode()
    primary.down = True
    state.breaker.allow()
    state.sessions.lookup("x")
    text = metrics.render().decode()
    assert 'atlas_state_degraded{backend="flaky",replica="r1"} 1.0' in text
    assert 'atlas_state_fallbacks_total{op="breaker_allow",replica="r1"} 1.0' in text
    assert 'atlas_state_fallbacks_total{op="session_lookup",replica="r1"} 1.0' in text


# -- half-open: one trial, also in one process ---------------------------------------------


def test_half_open_lets_one_trial_through_while_others_are_refused(make_atlas, call) -> None:
    """A call refused by the breaker must not free the trial slot it never held (it did,
    before shared state: every refused call released the slot and let another trial go)."""
    atlas, _, teacher = make_atlas(teacher={"teacher": ConnectionError("down")}, teacher_delays={"teacher": 0.4},
                                   teacher_retries=1, circuit_failures=1, circuit_cooldown=0.3,
                                   student={"guided": "The answer is 41"})
    assert call(atlas).atlas.reason == Reason.TEACHER_ERROR
    teacher.script["teacher"] = teacher_reply("Carry the one.")
    time.sleep(0.35)
    with ThreadPoolExecutor(8) as pool:
        reasons = [r.atlas.reason for r in pool.map(lambda _: call(atlas), range(8))]
    assert reasons.count(Reason.CIRCUIT_OPEN) == 7, reasons
    assert teacher.roles().count("teacher") == 2 and atlas.breaker.state == "closed"
