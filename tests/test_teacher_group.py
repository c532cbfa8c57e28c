"""Teacher groups: two real teacher servers behind LiteLLM's Router, on both client paths
(the lean path and LiteLLM) and both drivers (sync and async).

A replica is "killed" with ``OpenAITestServer.kill``: its port refuses connections and the
connections it holds open (kept-alive, or in the middle of an answer) are cut, as when the
server process dies. A "hung" replica accepts the request and never answers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import QUESTION, STUDENT_SCRIPT, TEACHER_SCRIPT

from atlas_middleware import Atlas, Reason
from atlas_middleware.backends.compat import router_cooled_down
from atlas_middleware.backends.group import TeacherGroupBackend
from atlas_middleware.errors import ConfigError
from atlas_middleware.testing import OpenAITestServer, ScriptedBackend

litellm = pytest.importorskip("litellm")

STUDENT_KEY = "sk-student-key-123456"
TEACHER_KEY = "sk-teacher-key-abcdef"


@pytest.fixture(params=["lean", "litellm"])
def path(request: pytest.FixtureRequest) -> bool:
    return request.param == "lean"


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest) -> Callable[..., Any]:
    if request.param == "sync":
        return lambda atlas: atlas.completion(messages=QUESTION, **_student(atlas.student_server))
    return lambda atlas: asyncio.run(atlas.acompletion(messages=QUESTION, **_student(atlas.student_server)))


@pytest.fixture
def servers() -> Iterator[tuple[OpenAITestServer, OpenAITestServer, OpenAITestServer]]:
    student = OpenAITestServer(ScriptedBackend(dict(STUDENT_SCRIPT)), api_key=STUDENT_KEY)
    a = OpenAITestServer(ScriptedBackend(dict(TEACHER_SCRIPT)), api_key=TEACHER_KEY)
    b = OpenAITestServer(ScriptedBackend(dict(TEACHER_SCRIPT)), api_key=TEACHER_KEY)
    with student, a, b:
        yield student, a, b


def _student(student: OpenAITestServer) -> dict[str, str]:
    return {"model": "openai/student", "api_base": student.url, "api_key": STUDENT_KEY}


def _atlas(student: OpenAITestServer, teachers: list[OpenAITestServer], lean: bool, **kwargs: Any) -> Atlas:
    """``policy=off`` and the answer judge: the teachers get teacher calls and nothing else."""
    kwargs.setdefault("teacher_timeout", 5)
    atlas = Atlas(teacher=[{"model": "openai/teacher", "api_base": t.url} for t in teachers],
                  teacher_api_key=TEACHER_KEY, policy="off", judge="answer", ledger="none", lean_http=lean,
                  **kwargs)
    atlas.student_server = student  # type: ignore[attr-defined]
    return atlas


def _group(atlas: Atlas) -> TeacherGroupBackend:
    group = atlas.backends["teacher"].inner  # the RetryingBackend's: one attempt, the group retries
    assert isinstance(group, TeacherGroupBackend)
    return group


def _guided(resp: Any) -> None:
    r = resp.atlas
    assert (r.decision, r.reason, r.guidance) == ("guided", Reason.POLICY_OFF, "Carry the one."), r.reason
    assert resp.choices[0].message.content.endswith("42")
    # The teacher's usage is the provider's, for the one call that answered.
    assert r.usage.teacher.calls == 1 and r.usage.teacher.exact and r.usage.teacher.completion_tokens == 5


def _until_hit(atlas: Atlas, server: OpenAITestServer, call: Callable[..., Any], tries: int = 20) -> tuple[Any, float]:
    """Call until one call's teacher request reaches ``server`` (the Router shuffles)."""
    for _ in range(tries):
        before = len(server.requests)
        t0 = time.perf_counter()
        resp = call(atlas)
        wall = time.perf_counter() - t0
        if len(server.requests) > before:
            return resp, wall
    raise AssertionError(f"no call reached {server.url} in {tries} tries")


def _cooled(group: TeacherGroupBackend, dep_id: str, within: float = 3.0) -> bool:
    """Whether the Router has ``dep_id`` in cooldown (its failure hooks may run a moment later)."""
    end = time.monotonic() + within
    while time.monotonic() < end:
        if dep_id in router_cooled_down(group.router, list(group.params)):
            return True
        time.sleep(0.02)
    return False


# -- configuration ---------------------------------------------------------------------------


def test_group_config_forms_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    from atlas_middleware.config import AtlasConfig

    monkeypatch.setenv("ATLAS_TEACHER", '[{"model": "hosted_vllm/Arc-Intelligence/ATLAS-8B-Thinking", '
                                        '"api_base": "http://t0:8000/v1"}, {"model_name": "g", "litellm_params": '
                                        '{"model": "hosted_vllm/Arc-Intelligence/ATLAS-8B-Thinking", '
                                        '"api_base": "http://t1:8000/v1"}}]')
    monkeypatch.setenv("ATLAS_TEACHER_ROUTER", '{"routing_strategy": "least-busy", "cooldown_time": 10}')
    config = AtlasConfig.load()
    assert [d["api_base"] for d in config.teacher.model] == ["http://t0:8000/v1", "http://t1:8000/v1"]  # type: ignore[union-attr]
    assert config.teacher.router == {"routing_strategy": "least-busy", "cooldown_time": 10}
    # The group's first model names the teacher: protocol detection and reports.
    settings = config.loop_settings()
    assert settings.teacher_model == "hosted_vllm/Arc-Intelligence/ATLAS-8B-Thinking"
    assert settings.protocol.name == "atlas"

    for bad, says in [
        ([], "at least one deployment"),
        (["openai/x"], "teacher[0]: a deployment is a mapping"),
        ([{"model": "openai/x"}, {"api_base": "http://h/v1"}], "teacher[1]: a deployment needs a 'model'"),
        ([{"model": "openai/x", "api_base": 8000}], "teacher[0].api_base: must be a string"),
        ([{"model": "local/smollm2"}], "runs in this process"),
        ('[{"model": ', "not a valid JSON list"),
    ]:
        with pytest.raises(ConfigError, match=says.replace("[", r"\[").replace("]", r"\]")):
            AtlasConfig.build({"teacher": bad})
    for bad_router, says in [({"routing_strategy": "round-robin"}, "unknown routing_strategy"),
                             ({"allowed_fails": -1}, "allowed_fails"), ({"timeout": 0}, "timeout"),
                             ("not json", "not a valid JSON mapping")]:
        with pytest.raises(ConfigError, match=says):
            AtlasConfig.build({"teacher": [{"model": "openai/x"}], "teacher_router": bad_router})
    with pytest.raises(ConfigError, match="teacher_router"):  # a setting litellm.Router does not take
        TeacherGroupBackend([{"model": "openai/x", "api_base": "http://h/v1"}], router_settings={"no_such": 1})


# -- behaviour over real HTTP ----------------------------------------------------------------


def test_traffic_spreads_over_both_replicas(servers, path, call) -> None:
    student, a, b = servers
    with _atlas(student, [a, b], path) as atlas:
        from atlas_middleware import ChatRequest

        teacher_like = ChatRequest(model="x", messages=QUESTION, params={"max_tokens": 64, "timeout": 5})
        assert _group(atlas)._lean_ok(teacher_like) == path  # the path under test is the one taken
        for _ in range(12):
            _guided(call(atlas))
    assert len(a.requests) >= 1 and len(b.requests) >= 1 and len(a.requests) + len(b.requests) == 12
    # The teacher's key went to the teachers, each deployment got the teacher's model.
    for r in a.requests + b.requests:
        assert r["headers"]["authorization"] == f"Bearer {TEACHER_KEY}" and r["body"]["model"] == "teacher"


def test_a_killed_replica_moves_its_traffic_to_the_other(servers, path, call) -> None:
    student, a, b = servers
    with _atlas(student, [a, b], path) as atlas:
        _until_hit(atlas, a, call)  # A holds a kept-alive connection now
        a.kill()
        served_by_b = len(b.requests)
        walls = []
        for _ in range(8):
            t0 = time.perf_counter()
            _guided(call(atlas))  # no user-visible failure, guidance every time
            walls.append(time.perf_counter() - t0)
    assert len(b.requests) == served_by_b + 8
    # A refused connection costs milliseconds, far inside the 5 s teacher timeout.
    assert max(walls) < 1.5, walls


@pytest.mark.parametrize("retries", [1, 3])
def test_a_replica_killed_mid_answer_never_breaks_the_call(servers, path, call, retries) -> None:
    student, a, b = servers
    a.backend.delays["teacher"] = 1.0  # A is still writing its answer when it dies

    def kill_when_a_answers() -> None:
        while not a.requests:
            time.sleep(0.01)
        time.sleep(0.3)
        a.kill()

    killer = threading.Thread(target=kill_when_a_answers, daemon=True)
    killer.start()
    with _atlas(student, [a, b], path, teacher_retries=retries) as atlas:
        resp, wall = _until_hit(atlas, a, call)
        if retries == 1:
            # No second attempt: the call fails open, the student answers alone.
            assert (resp.atlas.decision, resp.atlas.reason) == ("student_only", Reason.TEACHER_ERROR)
            assert resp.choices[0].message.content.endswith("41")
        else:
            _guided(resp)  # the next attempt went to B
            assert b.requests and wall < 3.0
            for _ in range(4):
                _guided(call(atlas))
    killer.join(5)


def test_a_hung_replica_fails_that_call_open_and_is_cooled_down(servers, path, call) -> None:
    student, a, b = servers
    a.backend.delays["teacher"] = 30  # accepts, never answers in time
    with _atlas(student, [a, b], path, teacher_timeout=1.0, teacher_retries=1) as atlas:
        resp, wall = _until_hit(atlas, a, call)
        assert (resp.atlas.decision, resp.atlas.reason) == ("student_only", Reason.TEACHER_TIMEOUT)
        assert resp.choices[0].message.content.endswith("41") and wall < 2.5
        assert _cooled(_group(atlas), "atlas-teacher-0")  # the Router saw the timeout
        on_a = len(a.requests)
        for _ in range(6):
            _guided(call(atlas))  # every later call goes to B while A cools down
    assert len(a.requests) == on_a


def test_a_hung_replica_is_failed_over_within_the_call(servers, path, call) -> None:
    student, a, b = servers
    a.backend.delays["teacher"] = 30
    # teacher_router.timeout caps each attempt: a hung replica costs 0.5 s, not the budget.
    with _atlas(student, [a, b], path, teacher_timeout=3.0, teacher_router={"timeout": 0.5}) as atlas:
        resp, wall = _until_hit(atlas, a, call)
        _guided(resp)
        assert 0.5 <= wall < 2.0, wall
        on_a = len(a.requests)
        for _ in range(4):
            _guided(call(atlas))
    assert len(a.requests) == on_a  # cooled down after its timeout


def test_least_busy_counts_the_lean_paths_calls_in_flight(servers) -> None:
    """least-busy routing sees the lean path's calls (reported to its logger): with A busy,
    calls go to B. (LiteLLM's own path is LiteLLM's accounting; with 1.108.7 it did not
    count an in-flight call in this setting, see docs/teacher.md.)"""
    student, a, b = servers
    a.backend.delays["baseline"] = 1.0  # a plain "hi" plays the baseline's role
    with _atlas(student, [a, b], True, teacher_router={"routing_strategy": "least-busy"}) as atlas:
        group = _group(atlas)
        from atlas_middleware import ChatRequest

        request = ChatRequest(model="x", messages=[{"role": "user", "content": "hi"}], params={"timeout": 5})
        slow = threading.Thread(target=lambda: _until_busy(group, request, a))
        slow.start()
        deadline = time.monotonic() + 3
        while not a.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        on_b = len(b.requests)
        for _ in range(4):
            group.complete(request)  # A is busy with one call: least-busy picks B
        slow.join(5)
    assert len(b.requests) == on_b + 4


def _until_busy(group: TeacherGroupBackend, request: Any, a: OpenAITestServer) -> None:
    # least-busy with nothing in flight picks the first deployment: A.
    group.complete(request)


@pytest.mark.parametrize("retries", [1, 3])
def test_attempts_are_teacher_retries_in_all(servers, path, call, retries) -> None:
    """One retry loop: ``teacher_retries`` HTTP attempts per teacher call over the whole group,
    not ours times the Router's times the SDK's."""
    from atlas_middleware.testing import HTTPFault

    student, a, b = servers
    for t in (a, b):
        t.backend.script["teacher"] = HTTPFault(500, "boom")
    # No cooldown, so that every attempt reaches a server and is counted.
    with _atlas(student, [a, b], path, teacher_retries=retries, teacher_router={"disable_cooldowns": True}) as atlas:
        resp = call(atlas)
    assert (resp.atlas.decision, resp.atlas.reason) == ("student_only", Reason.TEACHER_ERROR)
    assert len(a.requests) + len(b.requests) == retries
    if retries == 3:
        assert a.requests and b.requests  # the attempt after a failure went to the other replica


def test_streams_of_a_group(servers, path) -> None:
    from atlas_middleware import ChatRequest

    student, a, b = servers
    with _atlas(student, [a, b], path) as atlas:
        group = _group(atlas)
        request = ChatRequest(model="x", messages=[{"role": "user", "content": "hi there"}], params={"timeout": 5})
        chunks = list(group.stream(request))

        async def collect() -> list[Any]:
            return [c async for c in group.astream(request)]

        for got in (chunks, asyncio.run(collect())):
            assert "".join(c.content or "" for c in got) == "ok"  # the scripted default answer
            assert got[-1].usage is not None and got[-1].usage.completion_tokens == 1 and got[-1].usage.exact


def test_the_proxy_launcher_reads_and_checks_a_teacher_group(tmp_path) -> None:
    import yaml

    from atlas_middleware.proxy.launcher import ProxySettings, check_atlas_config, proxy_env

    def check(atlas_section: dict[str, Any]) -> Any:
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump({
            "model_list": [{"model_name": "m", "litellm_params": {"model": "atlas/openai/m"}}],
            "litellm_settings": {"custom_provider_map": [
                {"provider": "atlas", "custom_handler": "atlas_hooks.atlas_provider"}]},
            "atlas": atlas_section}))
        settings = ProxySettings(config=path)
        return check_atlas_config(settings, proxy_env(settings, {"LITELLM_MASTER_KEY": "sk-m"}))

    group = [{"model": "hosted_vllm/Arc-Intelligence/ATLAS-8B-Thinking", "api_base": f"http://teacher-{i}:8000/v1"}
             for i in range(2)]
    config = check({"teacher": group, "teacher_router": {"routing_strategy": "least-busy", "allowed_fails": 1,
                                                          "cooldown_time": 20}, "ledger": "none"})
    assert [d["api_base"] for d in config.teacher.model] == ["http://teacher-0:8000/v1", "http://teacher-1:8000/v1"]
    assert config.loop_settings().protocol.name == "atlas"
    with pytest.raises(ConfigError, match=r"teacher\[1\]: a deployment needs a 'model'"):
        check({"teacher": [group[0], {"api_base": "http://teacher-1:8000/v1"}], "ledger": "none"})
    with pytest.raises(ConfigError, match="teacher_router"):
        check({"teacher": group, "teacher_router": {"not_a_router_setting": 1}, "ledger": "none"})
