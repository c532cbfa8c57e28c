"""Test-wide guards: no network beyond loopback, LiteLLM's cost map from disk."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Nothing in the tests may read a real key or default ledger from the environment.
for _name in list(os.environ):
    if _name.startswith("ATLAS_"):
        del os.environ[_name]

from atlas_middleware.testing import (  # noqa: E402
    OpenAITestServer,
    ScriptedBackend,
    block_network,
    teacher_reply,
)


@pytest.fixture(autouse=True, scope="session")
def _no_network() -> Iterator[None]:
    with block_network():
        yield


@pytest.fixture(autouse=True, scope="session")
def _no_implicit_event_loop() -> None:
    # LiteLLM's leak, not ours: its sync service logger (``ServiceLogging._sync_dispatch_loop``,
    # LiteLLM 1.108-1.110) asks ``asyncio.get_event_loop()`` for a loop. On the main thread of
    # Python < 3.14 with no loop set that makes one, sets it as current and never closes it;
    # the next ``asyncio.run`` replaces it and it is collected as an "unclosed event loop".
    # With the current loop set to None, ``get_event_loop`` raises instead (as it does on
    # Python 3.14) and LiteLLM runs its hook under ``asyncio.run``, which closes its loop.
    asyncio.set_event_loop(None)


@pytest.fixture(autouse=True)
def _isolated_data_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # The default ledger lives in the user's data folder: point it at a temporary one.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path_factory.mktemp("data-home")))


STUDENT_SCRIPT = {
    "probe": "Add the two numbers, watch the carry.",
    "baseline": "20 plus 22 is 41. The answer is 41",
    "guided": "20 + 22 = 42. The answer is 42",
}
TEACHER_SCRIPT = {"teacher": "<thinking>forgets the carry</thinking><level>2</level><teaching>Carry the one.</teaching>"}
QUESTION = [{"role": "user", "content": "What is 20 + 22?"}]


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """One call through ``Atlas`` on either driver (threads or asyncio), background work joined."""

    def run(atlas: Any, /, **kwargs: Any) -> Any:
        kwargs.setdefault("model", "student-model")
        kwargs.setdefault("messages", QUESTION)
        if request.param == "sync":
            out = atlas.completion(**kwargs)
            atlas.flush()
            return out

        async def go() -> Any:
            out = await atlas.acompletion(**kwargs)
            await atlas.aflush()
            return out

        return asyncio.run(go())

    return run


@pytest.fixture
def make_atlas():  # type: ignore[no-untyped-def]
    """Build an ``Atlas`` over scripted student and teacher backends; closes them after."""
    from atlas_middleware import Atlas
    from atlas_middleware.testing import ScriptedBackend

    made = []

    def factory(student=None, teacher=None, *, student_delays=None, teacher_delays=None,  # type: ignore[no-untyped-def]
                teacher_model="scripted-teacher", **kwargs):
        s = ScriptedBackend({**STUDENT_SCRIPT, **(student or {})}, delays=student_delays)
        t = ScriptedBackend({**TEACHER_SCRIPT, **(teacher or {})}, delays=teacher_delays)
        kwargs.setdefault("ledger", "none")
        kwargs.setdefault("teacher", teacher_model)  # the name picks the protocol (``auto``)
        atlas = Atlas(student_backend=s, teacher_backend=t, **kwargs)
        made.append(atlas)
        return atlas, s, t

    yield factory
    for atlas in made:
        atlas.close()


# -- one OpenAI-compatible server as student and teacher, for the LiteLLM adapters ---------
# (test_provider.py and test_proxy.py: ``openai/gpt-4o-mini`` student, ``openai/gpt-4o``
# teacher, both priced by LiteLLM.)

ADDITION_QUESTION = [{"role": "user", "content": "What is 2+2?"}]
ADDITION_GUIDED = "The answer is 4"
ADDITION_BASELINE = "I think the answer is 4 because two and two make four"


def addition_script() -> dict[str, Any]:
    return {"probe": "It is an addition.", "teacher": teacher_reply("Add the two numbers."),
            "guided": ADDITION_GUIDED, "baseline": ADDITION_BASELINE}


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAITestServer]:
    with OpenAITestServer(ScriptedBackend(addition_script()), models=["gpt-4o-mini", "gpt-4o"]) as server:
        yield server


@pytest.fixture
def backend(upstream: OpenAITestServer) -> Iterator[ScriptedBackend]:
    """The upstream's scripted backend, with its script restored and its calls cleared."""
    b = upstream.backend
    b.script = addition_script()
    with b._lock:
        b.calls.clear()
    yield b
    b.script = addition_script()


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """``Atlas`` settings that put the shared state (sessions, family evidence, budgets) in
    process memory or in a throwaway prefix of the test Redis, removed afterwards."""
    if request.param == "memory":
        yield {}
        return
    url = os.environ.get("TEST_REDIS_URL")
    if not url:
        pytest.skip('TEST_REDIS_URL is not set: eval "$(scripts/ci-services.sh)" starts a throwaway Redis')
    redis = pytest.importorskip("redis")
    prefix = f"atlas-test:{uuid.uuid4().hex}:"
    yield {"state": url, "state_prefix": prefix, "state_timeout": 1.0}
    client = redis.Redis.from_url(url, decode_responses=True)
    for key in client.scan_iter(prefix + "*"):
        client.delete(key)
    client.close()
