"""Stream chunks are LiteLLM's own objects (issue 25, item 1).

A differential test: the same request streamed through ``litellm.completion`` and through
``Atlas`` (live under ``off``/``audit``/``shadow``, replayed under ``strict``/``verify``;
sync and async; with a tool call and with reasoning) against the loopback test server gives
chunk objects of the same classes (chunk, choice, delta, tool call, function, usage), and
``litellm.stream_chunk_builder(chunks, messages=...)`` rebuilds the delivered answer. Then
the same through the ``atlas/`` custom provider, as far as LiteLLM lets a ``CustomLLM`` go.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import litellm
import pytest

from atlas_middleware import Atlas
from atlas_middleware.messages import ToolCall
from atlas_middleware.provider import register, report_of
from atlas_middleware.runtime.streaming import CompletionStream, LiveCompletionStream
from atlas_middleware.testing import OpenAITestServer, Reply, ScriptedBackend, teacher_reply

QUESTION = [{"role": "user", "content": "What is 20 + 22? Use the calculator."}]
TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add two numbers",
                                           "parameters": {"type": "object", "properties": {
                                               "a": {"type": "number"}, "b": {"type": "number"}}}}}]
CALL = ToolCall(id="call_add_1", name="add", arguments='{"a": 20, "b": 22}')
REASONING = "Twenty and twenty-two: I should call the calculator"
CONTENT = "Let me add them with the calculator"


def answer() -> Reply:
    """The student's answer, the same whether guided or not, so that every policy delivers it."""
    return Reply(CONTENT, tool_calls=[CALL], reasoning=REASONING, reasoning_tokens=3, cached_tokens=2)


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[OpenAITestServer, OpenAITestServer]]:
    student = ScriptedBackend({"probe": "Add the tens first.", "guided": answer(), "baseline": answer()})
    teacher = ScriptedBackend({"teacher": teacher_reply("Carry the one.")})
    with OpenAITestServer(student) as s, OpenAITestServer(teacher) as t:
        yield s, t


def _request(student: OpenAITestServer) -> dict[str, Any]:
    return {"model": "openai/student", "messages": QUESTION, "api_base": student.url, "api_key": "sk-s",
            "tools": TOOLS, "stream": True, "stream_options": {"include_usage": True}}


def _read(make: Any, amake: Any, mode: str) -> tuple[Any, list[Any]]:
    if mode == "sync":
        stream = make()
        return stream, list(stream)

    async def go() -> tuple[Any, list[Any]]:
        stream = await amake()
        return stream, [c async for c in stream]

    return asyncio.run(go())


def classes(chunks: list[Any]) -> dict[str, set[type]]:
    """The classes of every part of a stream's chunks, by part."""
    out: dict[str, set[type]] = {"chunk": set(), "choice": set(), "delta": set(), "tool_call": set(),
                                 "function": set(), "usage": set()}
    for chunk in chunks:
        out["chunk"].add(type(chunk))
        if getattr(chunk, "usage", None) is not None:
            out["usage"].add(type(chunk.usage))
        for choice in chunk.choices:
            out["choice"].add(type(choice))
            out["delta"].add(type(choice.delta))
            for call in choice.delta.tool_calls or ():
                out["tool_call"].add(type(call))
                out["function"].add(type(call.function))
    return out


@pytest.fixture(scope="module")
def reference(servers: tuple[OpenAITestServer, OpenAITestServer]) -> list[Any]:
    """The student's own stream of the same request, through ``litellm.completion``."""
    return list(litellm.completion(**_request(servers[0])))


def _delivered(report: Any) -> tuple[int, int, int, int | None, int | None]:
    """(prompt, completion, total, reasoning, cached) tokens of the delivered answer's call."""
    u = report.usage.guided if report.decision == "guided" else report.usage.baseline
    return u.prompt_tokens, u.completion_tokens, u.total_tokens, u.reasoning_tokens, u.cached_tokens


def _counts(usage: Any) -> tuple[int, int, int, int | None, int | None]:
    """The same counts of a LiteLLM ``Usage``."""
    return (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens,
            usage.completion_tokens_details.reasoning_tokens, usage.prompt_tokens_details.cached_tokens)


def _check_rebuilt(chunks: list[Any], usage: tuple[int, int, int, int | None, int | None]) -> None:
    """``stream_chunk_builder`` rebuilds the delivered answer, its tool call and its usage."""
    whole = litellm.stream_chunk_builder(chunks, messages=QUESTION)
    message = whole.choices[0].message
    assert message.content == CONTENT and message.reasoning_content == REASONING
    (call,) = message.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == (CALL.id, CALL.name, CALL.arguments)
    assert whole.choices[0].finish_reason == "tool_calls"
    assert _counts(whole.usage) == usage


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("policy", ["off", "audit", "shadow", "strict", "verify"])
@pytest.mark.parametrize("lean", [True, False], ids=["lean", "litellm"])
def test_atlas_streams_litellms_own_chunks(servers, reference: list[Any], policy: str, mode: str,
                                           lean: bool) -> None:
    student, teacher = servers
    with Atlas(teacher="openai/teacher", teacher_api_base=teacher.url, teacher_api_key="sk-t", policy=policy,
               ledger="none", lean_http=lean, shadow={"rate": 1.0}) as atlas:
        stream, chunks = _read(lambda: atlas.completion(**_request(student)),
                               lambda: atlas.acompletion(**_request(student)), mode)
        atlas.flush()
    live = policy in ("off", "audit", "shadow")
    assert isinstance(stream, LiveCompletionStream if live else CompletionStream)
    assert classes(chunks) == classes(reference)
    # what code written for ``litellm.completion`` reads
    assert chunks[-1].usage.total_tokens == _delivered(stream.atlas)[2]
    calls = [c for chunk in chunks for c in chunk.choices[0].delta.tool_calls or ()]
    assert calls[0].function.name == "add" and calls[0].id == CALL.id
    assert chunks[0].choices[0].delta.role == "assistant"
    _check_rebuilt(chunks, _delivered(stream.atlas))
    _check_rebuilt(reference, _counts(reference[-1].usage))  # as the student's own stream rebuilds


# -- through the ``atlas/`` custom provider --------------------------------------------------


@pytest.fixture(scope="module")
def provider(servers: tuple[OpenAITestServer, OpenAITestServer]) -> Iterator[None]:
    old_map = list(litellm.custom_provider_map)
    prov = register(teacher="openai/teacher", teacher_api_base=servers[1].url, teacher_api_key="sk-t",
                    ledger="none", policy="strict")
    yield
    prov.close()
    litellm.custom_provider_map = old_map


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("policy", ["off", "strict"])
def test_the_provider_streams_litellms_own_chunks(servers, reference: list[Any], provider: None, policy: str,
                                                  mode: str) -> None:
    request = {**_request(servers[0]), "model": "atlas/openai/student", "metadata": {"atlas": {"policy": policy}}}
    stream, chunks = _read(lambda: litellm.completion(**request), lambda: litellm.acompletion(**request), mode)
    report = report_of(stream)
    assert report is not None and report.policy == policy
    assert classes(chunks) == classes(reference)
    whole = litellm.stream_chunk_builder(chunks, messages=QUESTION)
    message = whole.choices[0].message
    assert message.content == CONTENT and whole.choices[0].finish_reason == "tool_calls"
    (call,) = message.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == (CALL.id, CALL.name, CALL.arguments)
    assert _counts(whole.usage) == _delivered(report)
    # What a ``CustomLLM`` cannot pass on in LiteLLM 1.108: its ``GenericStreamingChunk`` has
    # no reasoning field, so the reasoning never reaches ``delta.reasoning_content``.
    assert getattr(message, "reasoning_content", None) is None
