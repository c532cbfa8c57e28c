"""Shared state against a real Redis (``TEST_REDIS_URL``, from ``scripts/ci-services.sh``):
two ``Atlas`` instances are two replicas of one fleet. A session taught on one is reused on
the other, the breaker opens for both and lets one trial through for both, entries expire,
and a Redis outage costs the calls nothing and heals by itself.

Run locally with ``eval "$(scripts/ci-services.sh)"`` first; the outage test stops and
restarts that server with ``TEST_REDIS_STOP`` / ``TEST_REDIS_START``."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from atlas_middleware._tenants import DEFAULT_TENANT, scoped
from atlas_middleware.report import Reason
from atlas_middleware.state import FallbackState, open_state
from atlas_middleware.testing import teacher_reply

REDIS_URL = os.environ.get("TEST_REDIS_URL", "")
pytestmark = pytest.mark.skipif(
    not REDIS_URL, reason='TEST_REDIS_URL is not set: eval "$(scripts/ci-services.sh)" starts a throwaway Redis')
redis = pytest.importorskip("redis", reason="redis-py is not installed: pip install 'atlas-middleware[redis]'")
GUIDANCE = "Carry the one."


def raw() -> Any:
    return redis.Redis.from_url(REDIS_URL, decode_responses=True, socket_timeout=2)


def session_key(prefix: str, session_id: str) -> str:
    """The Redis key of a session of the default tenant (these calls send no key and name none)."""
    return f"{prefix}session:{scoped(DEFAULT_TENANT, session_id)}"


@pytest.fixture
def prefix() -> Iterator[str]:
    """A key prefix of this test's own, removed after it."""
    p = f"atlas-test:{uuid.uuid4().hex}:"
    yield p
    try:
        client = raw()
        for key in client.scan_iter(p + "*"):
            client.delete(key)
        client.close()
    except redis.RedisError:
        pass


@pytest.fixture
def fleet(make_atlas, prefix: str) -> Callable[..., list[Any]]:
    """``n`` replicas (``Atlas``, student, teacher) sharing the test's Redis and prefix."""

    def build(n: int = 2, student: dict[str, Any] | None = None, teacher: dict[str, Any] | None = None,
              **kwargs: Any) -> list[Any]:
        kwargs.update(state=REDIS_URL, state_prefix=prefix)
        replicas = [make_atlas(student, teacher, **kwargs) for _ in range(n)]
        for atlas, *_ in replicas:
            assert isinstance(atlas.state, FallbackState)
        return replicas

    return build


def test_a_session_taught_on_one_replica_is_reused_on_the_other(fleet, call, prefix: str) -> None:
    (a, _, ta), (b, sb, tb) = fleet(student={"guided": "The answer is 41"}, session_ttl=120)
    first = call(a, atlas={"session_id": "task-1"}).atlas
    assert not first.guidance_reused and first.guidance == GUIDANCE
    second = call(b, atlas={"session_id": "task-1"}).atlas
    assert second.guidance_reused and second.guidance == GUIDANCE
    assert tb.roles().count("teacher") == 0 and sb.roles().count("probe") == 0  # no second diagnosis
    assert ta.roles().count("teacher") == 1
    client = raw()
    assert client.get(session_key(prefix, "task-1")) == GUIDANCE
    assert 0 < client.pttl(session_key(prefix, "task-1")) <= 120_000
    assert not a.state.status().degraded and a.state.status().fallbacks == {}


def test_a_strong_student_verdict_is_shared_too(fleet, call, prefix: str) -> None:
    (a, *_), (b, _, tb) = fleet(teacher={"teacher": teacher_reply("Nothing to add.", level=5)})
    assert call(a, atlas={"session_id": "easy"}).atlas.reason == Reason.STRONG_STUDENT
    assert raw().get(session_key(prefix, "easy")) == ""
    r = call(b, atlas={"session_id": "easy"}).atlas
    assert r.reason == Reason.STRONG_STUDENT and tb.roles().count("teacher") == 0


def test_session_guidance_expires_after_its_ttl(fleet, call, prefix: str) -> None:
    (a, *_), (b, _, tb) = fleet(student={"guided": "The answer is 41"}, session_ttl=0.5)
    call(a, atlas={"session_id": "task-1"})
    assert 0 < raw().pttl(session_key(prefix, "task-1")) <= 500
    time.sleep(0.6)
    assert raw().exists(session_key(prefix, "task-1")) == 0
    r = call(b, atlas={"session_id": "task-1"}).atlas
    assert not r.guidance_reused and tb.roles().count("teacher") == 1


def test_the_breaker_opened_on_one_replica_is_open_on_the_other(fleet, call, prefix: str) -> None:
    (a, _, ta), (b, _, tb) = fleet(teacher={"teacher": ConnectionError("down")}, teacher_retries=1,
                                   circuit_failures=2, circuit_cooldown=60)
    assert call(a).atlas.reason == Reason.TEACHER_ERROR
    assert b.breaker.state == "closed"
    assert call(b).atlas.reason == Reason.TEACHER_ERROR  # failures count fleet-wide: 2 of 2
    assert a.breaker.state == "open" and b.breaker.state == "open"
    assert [call(r).atlas.reason for r in (a, b, a, b)] == [Reason.CIRCUIT_OPEN] * 4
    assert ta.roles().count("teacher") == 1 and tb.roles().count("teacher") == 1
    assert raw().hget(prefix + "breaker", "count") == "2"


def test_half_open_lets_exactly_one_trial_through_for_the_whole_fleet(fleet, call) -> None:
    replicas = fleet(3, teacher={"teacher": ConnectionError("down")}, teacher_delays={"teacher": 0.4},
                     teacher_retries=1, circuit_failures=1, circuit_cooldown=0.5,
                     student={"guided": "The answer is 41"})
    assert call(replicas[0][0]).atlas.reason == Reason.TEACHER_ERROR  # opens the fleet's circuit
    for _, _, teacher in replicas:
        teacher.script["teacher"] = teacher_reply(GUIDANCE)
    time.sleep(0.6)
    assert {atlas.breaker.state for atlas, *_ in replicas} == {"half-open"}
    with ThreadPoolExecutor(12) as pool:  # 12 calls at once, 4 on each replica
        reports = list(pool.map(lambda i: call(replicas[i % 3][0]).atlas, range(12)))
    reasons = [r.reason for r in reports]
    assert reasons.count(Reason.CIRCUIT_OPEN) == 11, reasons
    assert sum(teacher.roles().count("teacher") for _, _, teacher in replicas) == 2  # the opener + one trial
    assert {atlas.breaker.state for atlas, *_ in replicas} == {"closed"}  # the trial succeeded


def test_one_trial_slot_under_a_race_of_two_clients(prefix: str) -> None:
    states = [open_state(REDIS_URL, failures=1, cooldown=0.2, prefix=prefix) for _ in range(2)]
    try:
        states[0].breaker.failure()
        assert states[1].breaker.state == "open" and not states[1].breaker.allow()
        time.sleep(0.25)
        start = threading.Barrier(16)

        def race(i: int) -> bool:
            start.wait()
            return states[i % 2].breaker.allow()

        with ThreadPoolExecutor(16) as pool:
            assert sum(pool.map(race, range(16))) == 1
        states[1].breaker.release()  # the trial never reached the teacher: the next one may
        assert states[0].breaker.allow() and not states[1].breaker.allow()
        states[1].breaker.failure()  # that trial failed: open again, for a full cool-down
        assert states[0].breaker.state == "open" and not states[0].breaker.allow()
        assert all(s.status().fallbacks == {} for s in states)
    finally:
        for s in states:
            s.close()


def test_a_trial_whose_replica_died_frees_its_slot_after_the_lease(prefix: str) -> None:
    from atlas_middleware.state.redis import RedisBreaker

    client = raw()
    breakers = [RedisBreaker(client, prefix, failures=1, cooldown=0.1, trial_lease=0.3) for _ in range(2)]
    breakers[0].failure()
    time.sleep(0.15)
    assert breakers[0].allow()  # the trial; its replica never reports back
    fields = client.hgetall(prefix + "breaker")
    assert set(fields) == {"count", "opened_at", "trial_until"} and fields["count"] == "1"
    assert not breakers[1].allow()
    time.sleep(0.35)
    assert breakers[1].allow() and not breakers[0].allow()  # a new trial, still only one
    breakers[1].success()
    assert client.exists(prefix + "breaker") == 0 and breakers[0].state == "closed"


def state_log(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [rec.getMessage() for rec in caplog.records if rec.name == "atlas_middleware.state"]


def _redis(script: str) -> None:
    subprocess.run([os.environ[script]], check=True, timeout=30)


def test_redis_stopped_mid_run_then_restarted(fleet, call, prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    if not (os.environ.get("TEST_REDIS_STOP") and os.environ.get("TEST_REDIS_START")):
        pytest.skip("TEST_REDIS_STOP / TEST_REDIS_START are not set (scripts/ci-services.sh sets them)")
    caplog.set_level(logging.WARNING, "atlas_middleware.state")
    (a, _, ta), (b, _, tb) = fleet(student={"guided": "The answer is 41"}, state_timeout=0.1)
    for atlas in (a, b):
        atlas.state.backoff = 0.3
    call(a, atlas={"session_id": "before"})
    _redis("TEST_REDIS_STOP")
    try:
        walls = []
        for _ in range(4):
            t0 = time.perf_counter()
            r = call(b, atlas={"session_id": "during"}).atlas
            walls.append(time.perf_counter() - t0)
            assert r.reason == Reason.AGREEMENT
        assert max(walls) < 1.0, walls  # a refused connection costs nothing (test_state.py times a silent one)
        status = b.state.status()
        assert status.degraded and status.backend == "redis"
        assert status.fallbacks["session_lookup"] == 4 and status.fallbacks["session_put"] == 1
        # Process memory stands in: one diagnosis for the four calls, on this replica.
        assert tb.roles().count("teacher") == 1
        warnings = state_log(caplog)
        assert len(warnings) == 1 and "shared state (redis) unreachable" in warnings[0], warnings
    finally:
        _redis("TEST_REDIS_START")
    time.sleep(0.35)  # the back-off
    r = call(b, atlas={"session_id": "after"}).atlas
    assert not r.guidance_reused and not b.state.status().degraded
    assert "reachable again" in state_log(caplog)[-1], state_log(caplog)
    assert raw().get(session_key(prefix, "after")) == GUIDANCE  # in Redis again, for the fleet
    reused = call(a, atlas={"session_id": "after"}).atlas
    assert reused.guidance_reused and ta.roles().count("teacher") == 1
