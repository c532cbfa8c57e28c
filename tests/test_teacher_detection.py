"""``teacher_protocol: auto`` asks a self-hosted teacher's server what it serves (issue 25, item 5)."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import QUESTION, STUDENT_SCRIPT

from atlas_middleware import Atlas
from atlas_middleware.backends import served
from atlas_middleware.testing import AtlasStyleTeacher, OpenAITestServer, ScriptedBackend

SERVED_AS = "my-served-atlas"  # vllm serve Arc-Intelligence/ATLAS-8B-Thinking --served-model-name my-served-atlas


@pytest.fixture(autouse=True)
def _fresh_answers() -> Iterator[None]:
    served.forget()
    yield
    served.forget()


def _atlas(teacher_url: str, **kwargs: object) -> Atlas:
    return Atlas(f"hosted_vllm/{SERVED_AS}", teacher_api_base=teacher_url, teacher_api_key="k",
                 ledger="none", policy="off", **kwargs)


def _call(atlas: Atlas, student_url: str) -> object:
    return atlas.completion(model="openai/student", api_base=student_url, api_key="k", messages=QUESTION).atlas


def _servers(roots: dict[str, str] | None) -> tuple[OpenAITestServer, OpenAITestServer]:
    teacher = ScriptedBackend({"teacher": AtlasStyleTeacher("Carry the one.")})
    return OpenAITestServer(ScriptedBackend(dict(STUDENT_SCRIPT))), OpenAITestServer(teacher, roots=roots)


def test_an_atlas_teacher_served_under_another_name_is_spoken_to_as_atlas(caplog: pytest.LogCaptureFixture) -> None:
    s, t = _servers({SERVED_AS: "Arc-Intelligence/ATLAS-8B-Thinking"})
    with s, t, _atlas(t.url) as atlas, caplog.at_level(logging.WARNING, "atlas_middleware"):
        reports = [_call(atlas, s.url) for _ in range(3)]
        # the judge grades with the resolved protocol's caps too (ATLAS-8B-Thinking reasons first)
        assert (atlas.judge.max_tokens, atlas.judge.timeout) == (2048, 60.0)  # type: ignore[attr-defined]
        second = _atlas(t.url)  # another client on the same teacher: the answer is remembered
        _call(second, s.url)
        second.close()
    assert [(r.protocol, r.reason) for r in reports] == [("atlas", "policy_off")] * 3
    assert reports[0].guidance == "Carry the one."
    assert t.listings == 1  # asked once for the process, not per call or per client
    assert "served as Arc-Intelligence/ATLAS-8B-Thinking" in caplog.text


async def test_the_async_client_asks_too() -> None:
    s, t = _servers({SERVED_AS: "/models/ATLAS-8B-Thinking"})  # loaded from a path
    with s, t:
        async with _atlas(t.url) as atlas:
            report = (await atlas.acompletion(model="openai/student", api_base=s.url, api_key="k",
                                              messages=QUESTION)).atlas
    assert (report.protocol, report.reason) == ("atlas", "policy_off") and t.listings == 1


def test_a_server_that_cannot_say_keeps_the_name_rule_and_one_warning_names_teacher_protocol(
        caplog: pytest.LogCaptureFixture) -> None:
    s, t = _servers(None)  # the served name is all the server reports (root = id)
    with s, t, _atlas(t.url) as atlas, caplog.at_level(logging.WARNING, "atlas_middleware"):
        reports = [_call(atlas, s.url) for _ in range(3)]
    assert [(r.protocol, r.reason) for r in reports] == [("structured", "teacher_unparseable")] * 3
    warnings = [r for r in caplog.records if "teacher_protocol" in r.getMessage()]
    assert len(warnings) == 1 and "teacher_protocol: atlas" in warnings[0].getMessage()


def test_an_explicit_protocol_or_an_atlas_name_never_asks() -> None:
    s, t = _servers({SERVED_AS: "Arc-Intelligence/ATLAS-8B-Thinking"})
    with s, t:
        with _atlas(t.url, teacher_protocol="structured") as atlas:
            assert _call(atlas, s.url).protocol == "structured"
        with Atlas("hosted_vllm/Arc-Intelligence/ATLAS-8B-Thinking", teacher_api_base=t.url, teacher_api_key="k",
                   ledger="none", policy="off") as atlas:
            assert _call(atlas, s.url).protocol == "atlas"
    assert t.listings == 0


def test_a_silent_server_costs_one_bounded_wait_and_fails_open() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections, never answers
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1"
    check = served.ServedModelCheck(url, f"hosted_vllm/{SERVED_AS}", None, timeout=0.3)
    start = time.monotonic()
    assert check.resolve() is None
    first = time.monotonic() - start
    start = time.monotonic()
    assert check.resolve() is None  # remembered: no second wait
    assert first < 3 and time.monotonic() - start < first / 10
    listener.close()
    for conn in accepted:
        conn.close()
