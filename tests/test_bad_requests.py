"""Malformed requests are the caller's 400 on every path, named, before any call is made.

The library (``Atlas.completion``), the ``atlas/`` LiteLLM provider, and the proxy's gate and
pre-call hook, without a proxy process (the real proxy: tests/test_proxy.py and the fuzz test
in tests/test_reliability_proxy.py).
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from atlas_middleware import InvalidRequestError
from atlas_middleware.errors import ConfigError
from atlas_middleware.messages import USER_PART_TYPES, validate_messages
from atlas_middleware.proxy.gate import AtlasGate, body_problem, install

QUESTION = [{"role": "user", "content": "What is 20 + 22?"}]


# -- the message check shared by every path -------------------------------------------------


@pytest.mark.parametrize(("messages", "field"), [
    ([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "bogus", "text": "b"}]}],
     "messages[0].content[1].type"),
    ([{"role": "system", "content": "s"}, {"role": "user", "content": [{"text": "no type"}]}],
     "messages[1].content[0].type"),
    ([{"role": "robot", "content": "x"}], "messages[0].role"),
    ([{"role": "user", "content": 3}], "messages[0].content"),
    ([{"role": "user"}], "messages[0]"),
    ([], "messages"),
])
def test_the_message_check_names_the_field(messages: Any, field: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        validate_messages(messages)
    assert str(info.value).startswith(field)


def test_every_part_type_litellm_accepts_is_accepted() -> None:
    litellm_types = pytest.importorskip("litellm.types.llms.openai").ValidUserMessageContentTypes
    assert set(litellm_types) == USER_PART_TYPES  # nothing LiteLLM takes is refused here
    parts = [{"type": kind} for kind in sorted(USER_PART_TYPES)]
    validate_messages([{"role": "user", "content": parts}])
    # LiteLLM checks user messages only; an assistant's own part types are left alone
    validate_messages([*QUESTION, {"role": "assistant", "content": [{"type": "thinking", "thinking": "t"},
                                                                    {"type": "text", "text": "a"}]}])


def test_atlas_refuses_a_bad_part_before_any_call(make_atlas: Any) -> None:
    atlas, student, teacher = make_atlas(ledger="sqlite:///:memory:")
    bad = [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
    with pytest.raises(InvalidRequestError, match=r"messages\[0\]\.content\[0\]\.type .*'input_text'"):
        atlas.completion(model="m", messages=bad)
    with pytest.raises(InvalidRequestError, match=r"messages\[0\]\.content\[0\]\.type"):
        asyncio.run(atlas.acompletion(model="m", messages=bad, stream=True))
    atlas.flush()
    assert student.calls == [] and teacher.calls == [] and atlas.ledger.records() == []


def test_the_provider_answers_litellms_bad_request(make_atlas: Any) -> None:
    litellm = pytest.importorskip("litellm")
    from atlas_middleware.provider import AtlasLLM, register

    atlas, student, teacher = make_atlas(ledger="sqlite:///:memory:")
    register(AtlasLLM(atlas))
    for messages, field in (([{"role": "robot", "content": "x"}], r"messages\[0\]\.role"),
                            ([{"role": "user", "content": None}], r"messages\[0\] \(user\) has no content")):
        with pytest.raises(litellm.BadRequestError, match=field):
            litellm.completion(model="atlas/openai/m", messages=messages)
        with pytest.raises(litellm.BadRequestError, match=field):
            asyncio.run(_consume(litellm.acompletion(model="atlas/openai/m", messages=messages, stream=True)))
    # An unknown part type: LiteLLM's own check runs before any provider and raises a bare
    # Exception, as it does for every model; the proxy's hook answers it with a 400 instead.
    with pytest.raises(Exception, match="Invalid user message at index 0"):  # noqa: B017
        litellm.completion(model="atlas/openai/m", messages=[{"role": "user", "content": [{"type": "bogus"}]}])
    atlas.flush()
    assert student.calls == [] and teacher.calls == [] and atlas.ledger.records() == []


async def _consume(call: Any) -> list[Any]:
    return [chunk async for chunk in await call]  # a stream's error comes with its first chunk


# -- the session id: a state key and a ledger column -------------------------------------------

BAD_SESSION_IDS = [
    ("s" * 10_000, "atlas session_id is 10000 characters long; at most 256 are allowed"),
    ("step\n2", "atlas session_id must not contain control characters"),
    (7, "atlas session_id must be a string, not int"),
]


@pytest.mark.parametrize(("session_id", "message"), BAD_SESSION_IDS)
def test_a_bad_session_id_is_refused_before_any_call(make_atlas: Any, session_id: Any, message: str) -> None:
    atlas, student, teacher = make_atlas(ledger="sqlite:///:memory:")
    with pytest.raises(InvalidRequestError, match=re.escape(message)):
        atlas.completion(model="m", messages=QUESTION, atlas={"session_id": session_id})
    with pytest.raises(InvalidRequestError, match=re.escape(message)):
        asyncio.run(atlas.acompletion(model="m", messages=QUESTION, stream=True,
                                      metadata={"atlas": {"session_id": session_id}}))
    atlas.flush()
    assert student.calls == [] and teacher.calls == [] and atlas.ledger.records() == []


def test_a_session_id_within_the_bounds_is_kept_as_given(make_atlas: Any) -> None:
    atlas, student, teacher = make_atlas(ledger="sqlite:///:memory:")
    sid = "agent 7 / task " + "x" * 241  # 256 characters, spaces and all
    assert atlas.completion(model="m", messages=QUESTION, atlas={"session_id": sid}).atlas.session_id == sid
    assert atlas.completion(model="m", messages=QUESTION, atlas={"session_id": ""}).atlas.session_id is None
    atlas.flush()
    assert [r.session_id for r in atlas.ledger.records()] == [sid, None]


@pytest.mark.parametrize(("session_id", "message"), BAD_SESSION_IDS)
def test_the_provider_answers_a_bad_session_id_with_a_bad_request(make_atlas: Any, session_id: Any,
                                                                   message: str) -> None:
    litellm = pytest.importorskip("litellm")
    from atlas_middleware.provider import AtlasLLM, register

    atlas, student, teacher = make_atlas(ledger="sqlite:///:memory:")
    register(AtlasLLM(atlas))
    with pytest.raises(litellm.BadRequestError, match=re.escape(message)):
        litellm.completion(model="atlas/openai/m", messages=QUESTION, metadata={"atlas": {"session_id": session_id}})
    if isinstance(session_id, str):  # the proxy passes the client's headers in the metadata
        with pytest.raises(litellm.BadRequestError, match=re.escape(message)):
            litellm.completion(model="atlas/openai/m", messages=QUESTION,
                               metadata={"headers": {"x-atlas-session-id": session_id}})
    atlas.flush()
    assert student.calls == [] and teacher.calls == []


# -- the proxy's gate, an ASGI middleware ----------------------------------------------------


@pytest.mark.parametrize(("body", "kind"), [(b"[]", "an array"), (b" null", "null"), (b"1", "a number"),
                                            (b'"s"', "a string"), (b"true", "a boolean"), (b"[{}]", "an array")])
def test_a_body_that_is_not_an_object_is_refused(body: bytes, kind: str) -> None:
    assert body_problem(body) == f"the request body must be a JSON object with 'model' and 'messages', got {kind}"


@pytest.mark.parametrize("body", [b"", b'{"model": "m"}', b"{", b"\xff\xfe<html>", b"not json",
                                  '{"model": "m"}'.encode("utf-16")])
def test_objects_and_non_json_are_litellms_to_read(body: bytes) -> None:
    assert body_problem(body) is None


class _App:
    """An ASGI app that records the body it received and answers 200."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.app = None

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


def _request(app: Any, method: str, path: str, chunks: list[bytes]) -> tuple[int, bytes]:
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return pending.pop(0) if pending else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "method": method, "path": path}, receive, send))
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def _ready(problem: BaseException | None) -> Any:
    async def ready() -> BaseException | None:
        return problem

    return ready


def test_gate_answers_400_for_a_non_object_and_replays_other_bodies() -> None:
    inner = _App()
    gate = AtlasGate(inner, _ready(None))
    status, body = _request(gate, "POST", "/v1/chat/completions", [b"[", b"]"])
    assert status == 400 and inner.bodies == []
    error = json.loads(body)["error"]
    assert error["param"] == "body" and "got an array" in error["message"] and error["code"] == "400"
    whole = b'{"model": "m", "messages": []}'
    assert _request(gate, "POST", "/openai/deployments/m/chat/completions", [whole[:5], whole[5:]])[0] == 200
    assert inner.bodies == [whole]  # the app reads what the client sent, unchanged
    assert _request(gate, "POST", "/v1/embeddings", [b"[]"])[0] == 200  # not ours to judge


def test_gate_fails_readiness_while_atlas_cannot_be_built() -> None:
    inner = _App()
    gate = AtlasGate(inner, _ready(ConfigError("invalid atlas-middleware configuration: bogus: extra")))
    status, body = _request(gate, "GET", "/health/readiness", [b""])
    assert status == 503 and inner.bodies == []
    report = json.loads(body)
    assert report["status"] == "unhealthy" and "ConfigError" in report["atlas"]
    assert "bogus" not in report["atlas"]  # public and unauthenticated: the log has the message
    assert _request(gate, "GET", "/health/liveliness", [b""])[0] == 200  # the process is alive
    gate.ready = _ready(None)
    assert _request(gate, "GET", "/health/readiness", [b""]) == (200, b"ok")


def test_install_wraps_a_started_app_once() -> None:
    class App:
        def __init__(self) -> None:
            self.middleware_stack: Any = None

        def build_middleware_stack(self) -> Any:
            return _App()

    app = App()
    first = install(app, _ready(None))
    assert app.middleware_stack is first and isinstance(first.app, _App)
    again = _ready(ValueError("x"))
    assert install(app, again) is first and first.ready is again


# -- the proxy's pre-call hook and readiness check, without a proxy ----------------------------


class _Provider:
    """Stands in for ``AtlasLLM``: ``atlas`` raises the scripted errors, then builds."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.builds = 0

    @property
    def atlas(self) -> object:
        self.builds += 1
        if self.errors:
            raise self.errors.pop(0)
        return object()


def _pre_call(hooks: Any, call_type: str = "acompletion", **data: Any) -> Any:
    return asyncio.run(hooks.async_pre_call_hook(None, None, data, call_type))


def test_pre_call_hook_refuses_with_the_field_named() -> None:
    pytest.importorskip("prometheus_client")
    litellm = pytest.importorskip("litellm")
    from atlas_middleware.proxy.hooks import AtlasProxyHooks

    provider = _Provider()
    hooks = AtlasProxyHooks(provider)  # type: ignore[arg-type]
    taught, plain = "atlas/openai/m", "openai/m"
    bogus = [{"role": "user", "content": [{"type": "bogus", "text": "x"}]}]
    cases = [({"model": taught, "messages": bogus}, r"messages\[0\]\.content\[0\]\.type"),
             ({"model": taught, "messages": QUESTION, "stream": "yes"}, "stream must be a boolean"),
             ({"model": taught, "messages": [{"role": "robot", "content": "x"}]}, r"messages\[0\]\.role"),
             ({"model": taught, "messages": None}, "messages must be"),
             ({"model": plain, "messages": bogus}, r"messages\[0\]\.content\[0\]\.type")]  # LiteLLM: a 500
    for data, field in cases:
        with pytest.raises(litellm.BadRequestError, match=field):
            _pre_call(hooks, **data)
    assert provider.builds == 0  # a bad request never gets as far as the provider
    # A model atlas does not teach keeps LiteLLM's own rules; so do other endpoints' shapes.
    assert _pre_call(hooks, model=plain, messages=[{"role": "robot", "content": "x"}])["model"] == plain
    assert _pre_call(hooks, "anthropic_messages", model=taught, messages=[
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "4"}]}])
    assert _pre_call(hooks, model=taught, messages=QUESTION, stream=True)["stream"] is True
    assert provider.builds == 1


def test_a_provider_that_cannot_be_built_is_a_503_that_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("prometheus_client")
    litellm = pytest.importorskip("litellm")
    from atlas_middleware.proxy import hooks as hooks_module

    now = [1000.0]
    monkeypatch.setattr(hooks_module.time, "monotonic", lambda: now[0])
    provider = _Provider(ConfigError("invalid atlas-middleware configuration: bogus_key: Extra inputs"))
    hooks = hooks_module.AtlasProxyHooks(provider)  # type: ignore[arg-type]
    for _ in range(3):
        with pytest.raises(litellm.ServiceUnavailableError, match="cannot be built: .*bogus_key"):
            _pre_call(hooks, model="atlas/openai/m", messages=QUESTION)
        assert isinstance(asyncio.run(hooks.acheck()), ConfigError)
        now[0] += hooks_module.RETRY_SECONDS
    assert provider.builds == 1  # a configuration error is final: never built again

    # Anything else (a volume not mounted yet, say) is tried again, at most every RETRY_SECONDS.
    provider = _Provider(OSError("no such file"), OSError("still none"))
    hooks = hooks_module.AtlasProxyHooks(provider)  # type: ignore[arg-type]
    assert isinstance(hooks.check(), OSError) and isinstance(hooks.check(), OSError)
    assert provider.builds == 1
    now[0] += hooks_module.RETRY_SECONDS
    assert isinstance(hooks.check(), OSError) and provider.builds == 2
    now[0] += hooks_module.RETRY_SECONDS
    assert hooks.check() is None and asyncio.run(hooks.acheck()) is None
    assert _pre_call(hooks, model="atlas/openai/m", messages=QUESTION)["messages"] == QUESTION
    assert provider.builds == 3
