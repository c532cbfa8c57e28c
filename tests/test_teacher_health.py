"""Misconfiguration is not silent (issue 25, item 6): the teacher checked at start, its state
on ``/health/readiness`` (never failing it), and the circuit breaker's opening and closing
logged at WARNING."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
import uuid
from typing import Any

import httpx
import pytest

from atlas_middleware.config import AtlasConfig
from atlas_middleware.proxy.gate import AtlasGate
from atlas_middleware.proxy.teacher import TeacherWatch, check_teacher
from atlas_middleware.state.breaker import CircuitBreaker
from atlas_middleware.testing import OpenAITestServer, ScriptedBackend

REDIS_URL = os.environ.get("TEST_REDIS_URL", "")


def _dead_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


def _opened(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "teacher circuit" in r.getMessage()]


# -- the breaker says when it opens and closes ------------------------------------------------

def test_the_breaker_logs_opening_and_closing_once_each(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    breaker = CircuitBreaker(failures=2, cooldown=10, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, "atlas_middleware"):
        breaker.failure()
        assert _opened(caplog) == []
        breaker.failure()
        breaker.failure()  # already open: not again
        now[0] = 11
        assert breaker.allow()
        breaker.failure()  # the trial failed: re-opened, not logged again
        now[0] = 22
        assert breaker.allow()
        breaker.success()
        breaker.success()  # closed already: not again
    messages = _opened(caplog)
    assert len(messages) == 2 and "opened after 2" in messages[0] and "closed" in messages[1]


@pytest.mark.skipif(not REDIS_URL, reason="TEST_REDIS_URL is not set (scripts/ci-services.sh)")
def test_the_fleet_breaker_logs_on_the_replica_that_changed_it(caplog: pytest.LogCaptureFixture) -> None:
    import redis

    from atlas_middleware.state.redis import RedisBreaker

    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"atlas-test:{uuid.uuid4().hex}:"
    a, b = (RedisBreaker(client, prefix, failures=2, cooldown=0.2) for _ in range(2))
    try:
        with caplog.at_level(logging.WARNING, "atlas_middleware"):
            a.failure()
            b.failure()  # opens it: this replica logs
            a.failure()  # open already
            time.sleep(0.25)
            assert a.allow()
            a.success()  # closes it
            b.success()  # closed already
        assert [m.split(":")[0] for m in _opened(caplog)] == ["teacher circuit opened after 2 consecutive teacher "
                                                              "failures", "teacher circuit closed"]
    finally:
        client.delete(prefix + "breaker")
        client.close()


# -- the start-up check -----------------------------------------------------------------------

def test_the_teacher_check_names_what_is_wrong() -> None:
    dead = _dead_url()
    unprefixed = check_teacher(AtlasConfig.build({"teacher": "ATLAS-8B-Thinking", "teacher_api_base": dead}))
    assert unprefixed.state == "misconfigured" and "hosted_vllm/ATLAS-8B-Thinking" in unprefixed.detail
    down = check_teacher(AtlasConfig.build({"teacher": "hosted_vllm/teacher", "teacher_api_base": dead}), timeout=1)
    assert down.state == "unreachable" and "teacher_api_base" in down.detail and "teacher_error" in down.detail
    with OpenAITestServer() as up:
        live = check_teacher(AtlasConfig.build({"teacher": "hosted_vllm/teacher", "teacher_api_base": up.url}))
    assert live.state == "reachable"
    hosted = check_teacher(AtlasConfig.build({"teacher": "openai/gpt-4o"}))  # nothing to ask without a URL
    assert hosted.state == "unchecked"


def test_the_watch_warns_once_in_the_background(caplog: pytest.LogCaptureFixture) -> None:
    watch = TeacherWatch()
    config = AtlasConfig.build({"teacher": "hosted_vllm/teacher", "teacher_api_base": _dead_url()})
    with caplog.at_level(logging.WARNING, "atlas_middleware"):
        thread = watch.start(config, timeout=1)
        assert thread is not None and watch.start(config) is None  # once
        thread.join(5)
    assert watch.result.state == "unreachable"
    assert sum("atlas teacher unreachable" in r.getMessage() for r in caplog.records) == 1


# -- readiness shows the teacher without failing ------------------------------------------------

def test_readiness_carries_the_teacher_state_beside_litellms_answer() -> None:
    async def litellm_readiness(scope: Any, receive: Any, send: Any) -> None:
        body = json.dumps({"status": "healthy", "db": "connected"}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def ready() -> None:
        return None

    async def status() -> dict[str, str]:
        return {"teacher": "unreachable", "teacher_circuit": "open"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    gate = AtlasGate(litellm_readiness, ready, status=status)
    asyncio.run(gate({"type": "http", "method": "GET", "path": "/health/readiness"}, receive, send))
    body = b"".join(m.get("body", b"") for m in sent[1:])
    assert sent[0]["status"] == 200  # calls fail open: readiness does not fail
    assert json.loads(body) == {"status": "healthy", "db": "connected",
                                "atlas": {"teacher": "unreachable", "teacher_circuit": "open"}}
    assert dict(sent[0]["headers"])[b"content-length"] == str(len(body)).encode()


# -- the real proxy, with the official openai client ------------------------------------------

@pytest.mark.slow
def test_a_proxy_with_its_teacher_down_warns_at_start_shows_it_and_serves_untaught() -> None:
    openai = pytest.importorskip("openai")
    from atlas_middleware.testing.proxy import ProxyProcess

    student = ScriptedBackend({"probe": "Add them.", "baseline": "The answer is 42", "guided": "The answer is 42"})
    atlas = {"teacher": "hosted_vllm/teacher", "teacher_api_base": _dead_url(), "teacher_api_key": "k",
             "policy": "strict", "circuit_failures": 2, "circuit_cooldown": 300, "ledger": "none"}
    with OpenAITestServer(student) as upstream, ProxyProcess(student_url=upstream.url, atlas=atlas) as proxy:
        client = openai.OpenAI(base_url=proxy.url, api_key=proxy.master_key, max_retries=0)
        answers = [client.chat.completions.create(model="gpt-4o-mini",
                                                  messages=[{"role": "user", "content": "What is 20 + 22?"}])
                   for _ in range(3)]
        ready = httpx.get(f"{proxy.base}/health/readiness", timeout=30)
        deadline = time.monotonic() + 20
        while "teacher circuit opened" not in proxy.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        log = proxy.log()
    assert [a.choices[0].message.content for a in answers] == ["The answer is 42"] * 3  # fail-open
    assert ready.status_code == 200
    assert ready.json()["atlas"] == {"teacher": "unreachable", "teacher_circuit": "open"}
    assert "atlas teacher unreachable" in log and "teacher_api_base" in log
    assert log.count("teacher circuit opened after 2") == 1


# -- a misspelled litellm_settings key is named before the proxy starts --------------------------

def test_the_launcher_warns_of_a_misspelled_litellm_setting(tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from atlas_middleware.proxy import launcher

    config = tmp_path / "config.yaml"
    config.write_text(
        "model_list: []\n"
        "litellm_settings:\n"
        "  custom_provider_mapp:\n"
        "    - {provider: atlas, custom_handler: atlas_hooks.atlas_provider}\n"
        "  callbacks: [atlas_hooks.proxy_handler_instance]\n"
        "  drop_params: true\n"
        "  num_retries: 2\n", encoding="utf-8")
    started: list[list[str]] = []
    monkeypatch.setattr(launcher.os, "execve", lambda path, cmd, env: started.append(cmd))
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-master")
    launcher.exec_proxy(launcher.ProxySettings(config=config))
    err = capsys.readouterr().err
    assert started  # a warning, not a refusal: LiteLLM itself accepts the file
    assert err.count("warning: ") == 1
    assert "litellm_settings.custom_provider_mapp" in err and "did you mean 'custom_provider_map'" in err


def test_an_in_process_teacher_is_not_misread_as_unroutable() -> None:
    for model in ("local/HuggingFaceTB/SmolLM2-135M-Instruct", "vllm/Arc-Intelligence/ATLAS-8B-Thinking"):
        assert check_teacher(AtlasConfig.build({"teacher": model})).state == "unchecked"
