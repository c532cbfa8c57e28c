"""One parameter contract: the lean path sends what ``litellm.completion`` sends.

The differential test sends the same request through LiteLLM and through the student
router (lean path where it is sure, LiteLLM otherwise) to one capturing test server, for a
matrix of models and parameter sets, and compares the request bodies. The other tests pin
the contract's own rules: what it learns once, what it is not sure of, and the cap of the
probe and the teacher in the field each model takes.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import QUESTION, STUDENT_SCRIPT, TEACHER_SCRIPT
from pydantic import BaseModel

from atlas_middleware import Atlas, ChatRequest
from atlas_middleware.backends.http.param_contract import ParamContract, capture_litellm_body
from atlas_middleware.backends.routing import ModelRouter
from atlas_middleware.testing import OpenAITestServer, ScriptedBackend
from atlas_middleware.testing.wire import guess_context

litellm = pytest.importorskip("litellm")

MODELS = [
    "openai/gpt-4o-mini",  # OpenAI chat
    "openai/o3-mini",  # o-series: max_completion_tokens, system -> user, no sampling
    "openai/gpt-5-mini",  # gpt-5 family: max_completion_tokens, reasoning gates
    "hosted_vllm/Qwen/Qwen3-8B",  # vLLM: no `user`, tool schemas without strict
    "openai/my-local-model",  # a plain OpenAI-compatible server LiteLLM knows nothing of
]
TOOLS = [{"type": "function", "function": {
    "name": "lookup", "description": "Look a word up.", "strict": True,
    "parameters": {"type": "object", "properties": {"q": {"type": "string", "pattern": "^[a-z]+$"}},
                   "required": ["q"], "additionalProperties": False}}}]
SCHEMA = {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": {
    "type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"], "additionalProperties": False}}}
PARAMS: dict[str, dict[str, Any]] = {
    "none": {},
    "probe cap": {"max_tokens": 50},
    "sampling": {"max_tokens": 300, "temperature": 0.2, "seed": 7, "user": "end-user-1"},
    # The same names, a value reasoning models accept: the value is part of the key.
    "temperature 1": {"max_tokens": 300, "temperature": 1.0, "seed": 7, "user": "end-user-1"},
    "drop_params": {"max_tokens": 64, "temperature": 0.2, "top_p": 0.9, "drop_params": True},
    "reasoning": {"reasoning_effort": "low", "max_completion_tokens": 100},
    "response_format": {"response_format": SCHEMA},
    "tools": {"tools": TOOLS, "tool_choice": "auto", "parallel_tool_calls": False},
    "tool_choice alone": {"tool_choice": "none"},
    "extra_body": {"extra_body": {"top_k": 20, "chat_template_kwargs": {"enable_thinking": False}}, "stop": ["\n\n"]},
    "logprobs": {"n": 1, "logprobs": True, "top_logprobs": 2, "presence_penalty": 0.1,
                 "frequency_penalty": 0.1, "logit_bias": {"50256": -100}},
    "newer": {"service_tier": "auto", "store": False, "verbosity": "low", "prompt_cache_key": "k",
              "safety_identifier": "s"},
}
CHAT = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 20 + 22?"}]
AGENT = [
    {"role": "user", "content": [{"type": "text", "text": "What is on the card?"},
                                 {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
    {"role": "assistant", "content": None,
     "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{\"q\": \"card\"}"}}]},
    {"role": "tool", "tool_call_id": "c1", "content": "a red card"},
    {"role": "user", "content": "And its colour?"},
]
# Requests LiteLLM sends differently from how they are given, which the lean path leaves to
# LiteLLM: an o-series model gets its system message as a user message.
NOT_LEAN = {("openai/o3-mini", "chat")}


@pytest.fixture(scope="module")
def server() -> Iterator[OpenAITestServer]:
    with OpenAITestServer(ScriptedBackend({"baseline": "The answer is 42"})) as srv:
        yield srv


@pytest.fixture(scope="module")
def router() -> Iterator[ModelRouter]:
    r = ModelRouter(lean=True)
    yield r
    r.close()


def _sent(server: OpenAITestServer, send: Any) -> Any:
    """The body ``send()`` put on the wire, or the type of the exception it raised."""
    before = len(server.requests)
    try:
        send()
    except Exception as exc:
        assert len(server.requests) == before, "a request that failed must fail before it is sent"
        return type(exc)
    assert len(server.requests) == before + 1
    return server.requests[-1]["body"]


@pytest.mark.parametrize("conversation", ["chat", "agent"])
@pytest.mark.parametrize("params", list(PARAMS))
@pytest.mark.parametrize("model", MODELS)
def test_lean_path_sends_what_litellm_sends(server, router, model, params, conversation) -> None:
    messages = CHAT if conversation == "chat" else AGENT
    extra = {"api_base": server.url, "api_key": "sk-test", **PARAMS[params]}

    expected = _sent(server, lambda: litellm.completion(model=model, messages=copy.deepcopy(messages),
                                                        **copy.deepcopy(extra)))
    request = ChatRequest(model=model, messages=copy.deepcopy(messages), params=copy.deepcopy(extra))
    lean = router.backend(request) is router.lean
    got = _sent(server, lambda: router.complete(request))

    assert got == expected
    # Not vacuous: every request LiteLLM sends, the lean path serves, except the ones it
    # knows LiteLLM rewrites; LiteLLM's refusals (an o-series temperature, reasoning_effort
    # for gpt-4o-mini, ...) stay LiteLLM's, with LiteLLM's exception.
    assert lean == (isinstance(expected, dict) and (model, conversation) not in NOT_LEAN)
    # The request itself is never changed by either path.
    assert request.messages == messages and request.params == extra


@pytest.mark.parametrize("model", ["openai/o3-mini", "hosted_vllm/Qwen/Qwen3-8B"])
def test_async_lean_transport_sends_the_same_body(server, router, model) -> None:
    extra = {"api_base": server.url, "api_key": "sk-test", "max_tokens": 50, "seed": 3}
    request = ChatRequest(model=model, messages=QUESTION, params=extra)
    assert router.backend(request) is router.lean
    sync_body = _sent(server, lambda: router.complete(request))
    async_body = _sent(server, lambda: asyncio.run(router.acomplete(request)))
    assert sync_body == async_body == _sent(server, lambda: litellm.completion(model=model, messages=QUESTION, **extra))


# -- the contract's own rules ---------------------------------------------------------------


class _Counting:
    """LiteLLM's capture, counted."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        return capture_litellm_body(model, messages, params)


def test_learnt_once_per_model_and_parameter_set_then_replayed() -> None:
    capture = _Counting()
    contract = ParamContract(capture)
    base = {"api_base": "http://127.0.0.1:1/v1", "api_key": "k", "timeout": 5.0}

    first = contract.body("openai/o3-mini", QUESTION, {**base, "max_tokens": 50, "seed": 1, "user": "a"})
    assert first is not None and first["max_completion_tokens"] == 50 and "max_tokens" not in first
    learnt = capture.calls
    assert learnt >= 1
    # Other values of the by-name parameters, other text: the same plan, no new capture.
    other = [{"role": "user", "content": "Something else entirely"}]
    again = contract.body("openai/o3-mini", other, {**base, "max_tokens": 7, "seed": 99, "user": "b", "timeout": 1.0})
    assert again == {"model": "o3-mini", "messages": other, "max_completion_tokens": 7, "seed": 99, "user": "b"}
    assert capture.calls == learnt
    # A value that may change the mapping is part of the key: a new capture.
    assert contract.body("openai/o3-mini", QUESTION, {**base, "max_tokens": 50, "reasoning_effort": "high"}) is not None
    assert capture.calls > learnt
    assert contract.body("openai/o3-mini", QUESTION, {**base, "temperature": 1.0})["temperature"] == 1.0
    assert contract.body("openai/o3-mini", QUESTION, {**base, "temperature": 0.2}) is None  # LiteLLM refuses it


def test_a_by_name_value_that_litellm_looks_at_is_not_replayed() -> None:
    # A LiteLLM that clamped max_tokens would make the by-name replay wrong: the second
    # capture (other sentinels, the dropped value left out) shows it, and the contract
    # leaves the request to LiteLLM.
    def clamping(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        body = {"model": model.split("/", 1)[1], "messages": copy.deepcopy(messages)}
        if "max_tokens" in params:
            body["max_tokens"] = min(params["max_tokens"], 4096)
        return body

    contract = ParamContract(clamping)
    assert contract.body("openai/m", QUESTION, {"api_base": "http://x/v1", "max_tokens": 50}) is None
    # Without the clamp the same contract replays it.
    plain = ParamContract(lambda m, msgs, p: {"model": "m", "messages": copy.deepcopy(msgs), **{
        k: v for k, v in p.items() if k == "max_tokens"}})
    assert plain.body("openai/m", QUESTION, {"api_base": "http://x/v1", "max_tokens": 50})["max_tokens"] == 50


class Answer(BaseModel):
    x: int


@pytest.mark.parametrize(
    ("why", "model", "messages", "params"),
    [
        ("a parameter the contract does not know", "openai/m", QUESTION, {"num_retries": 2}),
        ("SDK retries", "openai/m", QUESTION, {"max_retries": 3}),
        ("a value it cannot key", "openai/m", QUESTION, {"response_format": Answer}),
        ("LiteLLM refuses it", "openai/o3-mini", QUESTION, {"temperature": 0.2}),
        ("LiteLLM rewrites the message", "openai/o3-mini", CHAT, {}),
        ("a part LiteLLM may fetch", "openai/m", [{"role": "user", "content": [
            {"type": "file", "file": {"file_id": "https://example.com/a.pdf"}}]}], {}),
        ("no api_base: LiteLLM's environment", "openai/gpt-4o-mini", QUESTION, {"api_base": None}),
        ("another provider", "anthropic/claude-3-5-haiku-latest", QUESTION, {}),
    ],
)
def test_what_the_contract_is_not_sure_of_goes_through_litellm(router, why, model, messages, params) -> None:
    request = ChatRequest(model=model, messages=messages,
                          params={"api_base": "http://127.0.0.1:1/v1", "api_key": "k", **params})
    assert router.backend(request) is router.fallback, why


def test_null_fields_are_removed_as_litellm_removes_them(server, router) -> None:
    extra = {"api_base": server.url, "api_key": "sk-test"}
    request = ChatRequest(model="hosted_vllm/m", messages=copy.deepcopy(AGENT), params=extra)
    assert router.backend(request) is router.lean
    body = _sent(server, lambda: router.complete(request))
    assert body["messages"][1] == {"role": "assistant", "tool_calls": AGENT[1]["tool_calls"]}
    assert request.messages == AGENT  # the caller's message keeps its null content


# -- the probe's and the teacher's caps ---------------------------------------------------

CAPS = [
    # (student, teacher, the field each cap must use)
    ("openai/o3-mini", "openai/gpt-5-mini", "max_completion_tokens"),
    ("hosted_vllm/Qwen/Qwen3-8B", "hosted_vllm/Arc-Intelligence/ATLAS-8B-Thinking", "max_tokens"),
    ("openai/my-local-model", "openai/teacher", "max_tokens"),
]


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "litellm"])
@pytest.mark.parametrize(("student_model", "teacher_model", "field"), CAPS)
def test_probe_and_teacher_caps_use_the_field_each_model_takes(lean, student_model, teacher_model, field) -> None:
    other = "max_tokens" if field == "max_completion_tokens" else "max_completion_tokens"
    with OpenAITestServer(ScriptedBackend(dict(STUDENT_SCRIPT))) as student, \
            OpenAITestServer(ScriptedBackend(dict(TEACHER_SCRIPT))) as teacher, \
            Atlas(teacher=teacher_model, teacher_api_base=teacher.url, teacher_api_key="sk-t", judge="answer",
                  policy="off", probe_max_tokens=50, teacher_max_tokens=700, ledger="none", lean_http=lean) as atlas:
        resp = atlas.completion(model=student_model, messages=QUESTION, api_base=student.url, api_key="sk-s")
        assert (resp.atlas.decision, resp.atlas.guidance) == ("guided", "Carry the one.")
    probes = [r for r in student.requests if guess_context(r["body"]["messages"]).role == "probe"]  # the wire
    assert len(probes) == 1 and len(student.requests) == 2 and len(teacher.requests) == 1
    for sent, cap in ((probes[0], 50), (teacher.requests[0], 700)):
        assert sent["body"][field] == cap and other not in sent["body"]
        # Which client sent it: the lean transport (httpx) or LiteLLM (the openai SDK or
        # LiteLLM's own handler); the lean path took the probe and the teacher call.
        assert sent["headers"]["user-agent"].startswith("python-httpx") == lean
