"""An Anthropic student (and teacher) through LiteLLM's real translation, on every surface.

One ``AnthropicTestServer`` speaks the Messages API (``POST /v1/messages``: top-level
``system``, content blocks, ``tool_use`` / ``tool_result``, ``stop_reason``, usage with the
cache fields, Anthropic's error shape) and plays the student
(``anthropic/claude-haiku-4-5``) and the teacher (``anthropic/claude-sonnet-4-5``), both
priced in LiteLLM's cost map. The whole loop (probe, teacher, guided, baseline) runs through
``Atlas.completion`` / ``acompletion``, ``litellm.completion(model="atlas/anthropic/...")``
and the real proxy with such a model in its config. Each surface is checked against what the
server reported: per-role usage and price, the guidance in the guided request, tool calls
both ways, and the student's errors as the exception LiteLLM raises for them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

litellm = pytest.importorskip("litellm")

from atlas_middleware import Atlas, CallReport, Reason  # noqa: E402
from atlas_middleware.messages import ToolCall  # noqa: E402
from atlas_middleware.teaching.protocols.base import GUIDANCE_PREFIX  # noqa: E402
from atlas_middleware.testing import (  # noqa: E402
    AnthropicTestServer,
    HTTPFault,
    Reply,
    ScriptedBackend,
    guidance_of,
    teacher_reply,
)

STUDENT = "anthropic/claude-haiku-4-5"
TEACHER = "anthropic/claude-sonnet-4-5"
STUDENT_KEY = "sk-ant-student-0001"
TEACHER_KEY = "sk-ant-teacher-0002"
ROLES = ("probe", "teacher", "guided", "baseline")

QUESTION = [{"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": "What is 2+2?"}]
GUIDANCE = "Add the two numbers."
GUIDED = "The answer is 4"
BASELINE = "I think the answer is 4 because two and two make four"

WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
WEATHER_QUESTION = [{"role": "user", "content": "Should I take an umbrella in Paris?"}]
PARIS = ToolCall(id="toolu_paris01", name="get_weather", arguments='{"city": "Paris"}')


def script() -> dict[str, Any]:
    # Cache reads on the baseline, cache writes (server option) on guided and teacher.
    return {"probe": "It is an addition.", "teacher": teacher_reply(GUIDANCE),
            "guided": GUIDED, "baseline": Reply(BASELINE, cached_tokens=2)}


def tool_script() -> dict[str, Any]:
    return {"probe": "I will look the weather up.", "teacher": teacher_reply("Ask the weather tool for the city."),
            "guided": Reply(None, [PARIS]),
            "baseline": Reply("Let me check the weather for you.", [PARIS])}


@pytest.fixture(scope="module")
def server() -> Iterator[AnthropicTestServer]:
    with AnthropicTestServer(ScriptedBackend(script()), cache_creation={"guided": 2, "teacher": 5}) as s:
        yield s


@pytest.fixture
def backend(server: AnthropicTestServer) -> Iterator[ScriptedBackend]:
    b = server.backend
    b.script = script()
    with b._lock:
        b.calls.clear()
    server.clear()
    yield b
    b.script = script()


def price(model: str, usage: dict[str, int]) -> float:
    """What Anthropic bills for one reported usage, from LiteLLM's cost map."""
    entry = litellm.model_cost[model.split("/", 1)[1]]
    return (usage["input_tokens"] * entry["input_cost_per_token"]
            + usage["cache_creation_input_tokens"] * entry["cache_creation_input_token_cost"]
            + usage["cache_read_input_tokens"] * entry["cache_read_input_token_cost"]
            + usage["output_tokens"] * entry["output_cost_per_token"])


def check_usage(report: dict[str, Any], server: AnthropicTestServer) -> None:
    """Each role's usage in the report (as JSON) is the sum of what the server reported."""
    answered = [r for r in server.requests if r.get("status") == 200]
    for role in ROLES:
        sent = [r["usage"] for r in answered if r["role"] == role]
        got = report["usage"][role]
        assert got["calls"] == len(sent) >= 1, role
        assert got["prompt_tokens"] == sum(u["input_tokens"] + u["cache_read_input_tokens"]
                                           + u["cache_creation_input_tokens"] for u in sent), role
        assert got["completion_tokens"] == sum(u["output_tokens"] for u in sent), role
        assert got["cached_tokens"] == sum(u["cache_read_input_tokens"] for u in sent), role
        model = TEACHER if role == "teacher" else STUDENT
        assert got["cost_usd"] == pytest.approx(sum(price(model, u) for u in sent)), role
        assert got["counted_by"] == "provider"
    assert any(r["usage"]["cache_creation_input_tokens"] for r in answered)  # writes were priced
    assert report["cost_usd"] == pytest.approx(sum(report["usage"][role]["cost_usd"] for role in ROLES))


def check_translation(server: AnthropicTestServer, guidance: str) -> None:
    """The requests were Anthropic's, the guidance reached the guided call, and each key
    went to its own role."""
    requests = server.requests
    assert sorted(r["role"] for r in requests) == sorted(ROLES)
    for r in requests:
        assert "system" in r["body"] and all(m["role"] in ("user", "assistant") for m in r["body"]["messages"])
        assert r["headers"]["x-api-key"] == (TEACHER_KEY if r["role"] == "teacher" else STUDENT_KEY)
        assert r["headers"]["anthropic-version"]
    guided = next(r for r in requests if r["role"] == "guided")
    assert guidance_of(guided["openai"]) == guidance
    # structured protocol: the guidance is a system note, i.e. in Anthropic's top-level system
    assert any(GUIDANCE_PREFIX + guidance == block["text"] for block in guided["body"]["system"])
    for r in requests:
        if r["role"] != "guided":
            assert guidance_of(r["openai"]) is None


def as_dict(report: CallReport) -> dict[str, Any]:
    return json.loads(report.model_dump_json())


# -- the library ---------------------------------------------------------------------------


@pytest.fixture
def atlas(server: AnthropicTestServer) -> Iterator[Atlas]:
    a = Atlas(teacher=TEACHER, teacher_api_base=server.url, teacher_api_key=TEACHER_KEY,
              policy="strict", ledger="none")
    yield a
    a.close()


@pytest.fixture(params=["sync", "async"])
def complete(request: pytest.FixtureRequest, atlas: Atlas, server: AnthropicTestServer) -> Any:
    def run(**kwargs: Any) -> Any:
        kwargs = {"model": STUDENT, "api_base": server.url, "api_key": STUDENT_KEY, **kwargs}
        if request.param == "sync":
            return atlas.completion(**kwargs)
        return asyncio.run(atlas.acompletion(**kwargs))

    return run


def test_library_runs_the_whole_loop(complete: Any, server: AnthropicTestServer, backend: ScriptedBackend) -> None:
    response = complete(messages=QUESTION, temperature=0.2)
    report = response.atlas
    assert report.decision == "guided" and report.reason == Reason.AGREEMENT
    assert report.protocol == "structured"
    assert response.choices[0].message.content == GUIDED
    assert response.usage.prompt_tokens == report.usage.guided.prompt_tokens
    assert response.usage.completion_tokens == report.usage.guided.completion_tokens
    check_usage(as_dict(report), server)
    check_translation(server, GUIDANCE)
    guided = next(r for r in server.requests if r["role"] == "guided")
    assert guided["body"]["temperature"] == 0.2


def test_library_tool_use_round_trips(complete: Any, server: AnthropicTestServer, backend: ScriptedBackend) -> None:
    backend.script = tool_script()
    response = complete(messages=WEATHER_QUESTION, tools=[WEATHER_TOOL])
    report = response.atlas
    assert report.decision == "guided" and report.reason == Reason.AGREEMENT  # same call, fewer tokens
    message = response.choices[0].message
    assert response.choices[0].finish_reason == "tool_calls"
    assert [(tc.id, tc.type, tc.function.name, json.loads(tc.function.arguments)) for tc in message.tool_calls] == [
        ("toolu_paris01", "function", "get_weather", {"city": "Paris"})]
    check_usage(as_dict(report), server)
    # the tools went out in Anthropic's shape, to every student answer call
    for r in server.requests:
        if r["role"] in ("guided", "baseline"):
            assert r["body"]["tools"][0]["name"] == "get_weather"
            assert r["body"]["tools"][0]["input_schema"] == WEATHER_TOOL["function"]["parameters"]
    assert guidance_of(next(r["openai"] for r in server.requests if r["role"] == "guided")) == (
        "Ask the weather tool for the city.")

    # the next turn carries the call and its result: tool_use and tool_result blocks
    server.clear()
    backend.script = {**tool_script(), "guided": "Yes, take one: rain.", "baseline": "Rain is expected: yes."}
    follow_up = [*WEATHER_QUESTION, message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": "toolu_paris01", "content": "rain, 12 C"}]
    response = complete(messages=follow_up, tools=[WEATHER_TOOL])
    baseline = next(r for r in server.requests if r["role"] == "baseline")
    turns = baseline["body"]["messages"]
    assert turns[1]["role"] == "assistant"
    assert [b for b in turns[1]["content"] if b["type"] == "tool_use"] == [
        {"type": "tool_use", "id": "toolu_paris01", "name": "get_weather", "input": {"city": "Paris"}}]
    result = [b for b in turns[2]["content"] if b["type"] == "tool_result"]
    assert result and result[0]["tool_use_id"] == "toolu_paris01"
    assert baseline["openai"].messages[-1] == {"role": "tool", "tool_call_id": "toolu_paris01",
                                                "content": "rain, 12 C"}
    assert response.choices[0].message.content in ("Yes, take one: rain.", "Rain is expected: yes.")


def test_library_stream(atlas: Atlas, server: AnthropicTestServer, backend: ScriptedBackend) -> None:
    stream = atlas.completion(model=STUDENT, messages=QUESTION, api_base=server.url, api_key=STUDENT_KEY,
                              stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == GUIDED
    report = stream.atlas
    assert report.decision == "guided"
    check_usage(as_dict(report), server)
    usage = next(c.usage for c in reversed(chunks) if c.usage is not None)
    assert usage["completion_tokens"] == report.usage.guided.completion_tokens


def test_teacher_overloaded_fails_open(complete: Any, server: AnthropicTestServer, backend: ScriptedBackend) -> None:
    backend.script["teacher"] = HTTPFault(529, "Overloaded")
    response = complete(messages=QUESTION)
    assert response.atlas.reason == Reason.TEACHER_ERROR
    assert response.choices[0].message.content == BASELINE


def _plain_error(server: AnthropicTestServer, **kwargs: Any) -> BaseException:
    with pytest.raises(Exception) as info:
        litellm.completion(model=STUDENT, api_base=server.url, api_key=STUDENT_KEY, messages=QUESTION, **kwargs)
    return info.value


@pytest.mark.parametrize(("status", "kind"), [(400, litellm.BadRequestError), (529, litellm.InternalServerError)])
def test_student_errors_are_litellms(complete: Any, server: AnthropicTestServer, backend: ScriptedBackend,
                                     status: int, kind: type[BaseException]) -> None:
    backend.script = {"*": HTTPFault(status, "student says no")}
    plain = _plain_error(server)  # what litellm.completion itself raises for this answer
    with pytest.raises(kind) as info:
        complete(messages=QUESTION)
    assert type(info.value) is type(plain)
    assert info.value.status_code == plain.status_code  # type: ignore[attr-defined]
    assert "student says no" in str(info.value)
    assert "teacher" not in [r["role"] for r in server.requests]


# -- the atlas/ provider -------------------------------------------------------------------


@pytest.fixture(scope="module")
def provider(server: AnthropicTestServer) -> Iterator[Any]:
    from atlas_middleware.provider import register

    old_map = list(litellm.custom_provider_map)
    prov = register(teacher=TEACHER, teacher_api_base=server.url, teacher_api_key=TEACHER_KEY,
                    policy="strict", ledger="none")
    yield prov
    prov.close()
    litellm.custom_provider_map = old_map


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_provider_runs_the_whole_loop(provider: Any, server: AnthropicTestServer, backend: ScriptedBackend,
                                      mode: str) -> None:
    from atlas_middleware.provider import report_of

    kwargs = {"model": "atlas/" + STUDENT, "messages": QUESTION, "api_base": server.url, "api_key": STUDENT_KEY}
    response = litellm.completion(**kwargs) if mode == "sync" else asyncio.run(litellm.acompletion(**kwargs))
    report = report_of(response)
    assert report is not None and report.decision == "guided" and report.student_model == STUDENT
    assert response.choices[0].message.content == GUIDED
    check_usage(as_dict(report), server)
    check_translation(server, GUIDANCE)
    assert response._hidden_params["response_cost"] == pytest.approx(report.cost_usd)


def test_provider_tool_call_and_errors(provider: Any, server: AnthropicTestServer, backend: ScriptedBackend) -> None:
    backend.script = tool_script()
    response = litellm.completion(model="atlas/" + STUDENT, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL],
                                  api_base=server.url, api_key=STUDENT_KEY)
    calls = response.choices[0].message.tool_calls
    assert [(tc.id, tc.type, tc.function.name, json.loads(tc.function.arguments)) for tc in calls] == [
        ("toolu_paris01", "function", "get_weather", {"city": "Paris"})]
    check_usage(as_dict(response.atlas), server)
    assert all(r["body"]["tools"][0]["name"] == "get_weather" for r in server.requests if r["role"] == "guided")

    for status in (400, 529):
        backend.script = {"*": HTTPFault(status, "student says no")}
        plain = _plain_error(server)
        with pytest.raises(type(plain)) as info:
            litellm.completion(model="atlas/" + STUDENT, messages=QUESTION, api_base=server.url,
                               api_key=STUDENT_KEY)
        assert type(info.value) is type(plain)
        assert info.value.status_code == plain.status_code  # type: ignore[attr-defined]


# -- the proxy -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy(server: AnthropicTestServer) -> Iterator[Any]:
    pytest.importorskip("litellm.proxy.proxy_server")
    pytest.importorskip("prometheus_client")
    from atlas_middleware.testing.proxy import ProxyProcess

    atlas = {"teacher": TEACHER, "teacher_api_base": server.url, "policy": "strict", "ledger": "none"}
    with ProxyProcess(student_url=server.url, student_api_key=STUDENT_KEY, atlas=atlas,
                      models={"claude": STUDENT}, passthrough={"claude-plain": STUDENT},
                      env={"ATLAS_TEACHER_API_KEY": TEACHER_KEY}) as p:
        yield p


@pytest.fixture
def client(proxy: Any) -> Iterator[Any]:
    openai = pytest.importorskip("openai")
    with openai.OpenAI(base_url=proxy.url, api_key=proxy.master_key, max_retries=0, timeout=60) as client:
        yield client  # closed after the test, and its pooled connections with it


@pytest.mark.slow
def test_proxy_runs_the_whole_loop(client: Any, server: AnthropicTestServer, backend: ScriptedBackend) -> None:
    raw = client.chat.completions.with_raw_response.create(model="claude", messages=QUESTION)
    completion = raw.parse()
    report = completion.model_extra["atlas"]
    assert raw.headers["x-atlas-decision"] == "guided" and report["protocol"] == "structured"
    assert completion.choices[0].message.content == GUIDED
    assert completion.usage.completion_tokens == report["usage"]["guided"]["completion_tokens"]
    check_usage(report, server)
    check_translation(server, GUIDANCE)
    assert float(raw.headers["x-litellm-response-cost"]) == pytest.approx(report["cost_usd"])


@pytest.mark.slow
def test_proxy_tool_call(client: Any, server: AnthropicTestServer, backend: ScriptedBackend) -> None:
    backend.script = tool_script()
    completion = client.chat.completions.create(model="claude", messages=WEATHER_QUESTION, tools=[WEATHER_TOOL])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [(tc.id, tc.type, tc.function.name, json.loads(tc.function.arguments)) for tc in choice.message.tool_calls] == [
        ("toolu_paris01", "function", "get_weather", {"city": "Paris"})]
    check_usage(completion.model_extra["atlas"], server)


@pytest.mark.slow
@pytest.mark.parametrize("status", [400, 529])
def test_proxy_student_errors_match_a_plain_model(client: Any, server: AnthropicTestServer,
                                                  backend: ScriptedBackend, status: int) -> None:
    openai = pytest.importorskip("openai")
    backend.script = {"*": HTTPFault(status, "student says no")}
    errors = []
    for model in ("claude-plain", "claude"):  # LiteLLM's own answer first, then the atlas model's
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model=model, messages=QUESTION)
        errors.append(info.value)
    plain, taught = errors
    assert type(taught) is type(plain) and taught.status_code == plain.status_code
    assert "student says no" in str(taught)
    assert "teacher" not in [r["role"] for r in server.requests]
