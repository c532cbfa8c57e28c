"""Reasoning models as students and teachers, over real HTTP on both client paths.

A reasoning model reports ``completion_tokens_details.reasoning_tokens`` (its hidden
thinking, billed as output and counted *in* ``completion_tokens``) and
``prompt_tokens_details.cached_tokens`` (counted *in* ``prompt_tokens``), and may return its
thinking in a separate ``reasoning_content`` field. Each role keeps both details, the
savings figures count the thinking exactly once, and the student's reasoning is neither its
answer nor dropped from what it delivers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import QUESTION

from atlas_middleware import Atlas, Reason
from atlas_middleware.backends.http.transport import LeanHTTPBackend
from atlas_middleware.backends.litellm import from_model_response, provider_usage
from atlas_middleware.ledger import open_ledger
from atlas_middleware.messages import ChatRequest
from atlas_middleware.offline.reporting.summary import summarize_group
from atlas_middleware.proxy.headers import report_body
from atlas_middleware.testing import OpenAITestServer, RawBody, ScriptedBackend
from atlas_middleware.testing.scripted import Reply
from atlas_middleware.usage import Usage

litellm = pytest.importorskip("litellm")

ANSWER = "20 + 22 = 42. The answer is 42"
# The thinking of each student call states a *different* answer: were it ever read as the
# answer, guided and baseline would disagree and the decision would change.
GUIDED_THOUGHT = "Carry the one... at first I thought 41, then the answer is 43?"
BASELINE_THOUGHT = "Hmm, 20 and 22; the answer is 40 maybe. Long thinking, long thinking."
# (prompt, completion, reasoning part of completion, cached part of prompt) per role.
FIGURES = {
    "probe": (20, 30, 22, 8),
    "teacher": (200, 150, 120, 64),
    "guided": (40, 100, 90, 16),
    "baseline": (18, 300, 280, 0),
}


def _reply(role: str, content: str, thought: str) -> Reply:
    p, c, r, k = FIGURES[role]
    return Reply(content, prompt_tokens=p, completion_tokens=c, reasoning=thought, reasoning_tokens=r, cached_tokens=k)


STUDENT = {
    "probe": _reply("probe", "Add the tens and the ones.", "I should plan briefly."),
    "guided": _reply("guided", ANSWER, GUIDED_THOUGHT),
    "baseline": _reply("baseline", "20 plus 22 is 42. The answer is 42", BASELINE_THOUGHT),
}
TEACHER = {"teacher": _reply("teacher", "<level>2</level><teaching>Carry the one.</teaching>",
                             "The student may forget the carry.")}


@pytest.fixture(params=["lean", "litellm"])
def lean(request: pytest.FixtureRequest) -> bool:
    return request.param == "lean"


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest) -> Callable[..., Any]:
    """Both drivers: ``completion`` (threads) and ``acompletion`` (asyncio)."""
    if request.param == "sync":
        def run(atlas: Atlas, **kw: Any) -> Any:
            out = atlas.completion(**kw)
            return (out, list(out)) if kw.get("stream") else out  # consumed before atlas closes

        return run

    async def go(atlas: Atlas, kw: dict[str, Any]) -> Any:
        out = await atlas.acompletion(**kw)
        if kw.get("stream"):  # consume it on the loop that made it
            return out, [c async for c in out]
        return out

    return lambda atlas, **kw: asyncio.run(go(atlas, kw))


@pytest.fixture
def servers() -> Iterator[tuple[OpenAITestServer, OpenAITestServer]]:
    with OpenAITestServer(ScriptedBackend(dict(STUDENT))) as student, \
            OpenAITestServer(ScriptedBackend(dict(TEACHER))) as teacher:
        yield student, teacher


def _atlas(teacher: OpenAITestServer, lean: bool, **kwargs: Any) -> Atlas:
    kwargs = {"ledger": "none", "policy": "strict", "judge": "answer", **kwargs}
    return Atlas(teacher="openai/teacher", teacher_api_base=teacher.url, teacher_api_key="sk-t",
                 lean_http=lean, **kwargs)


def _student(student: OpenAITestServer) -> dict[str, Any]:
    return {"model": "openai/student", "api_base": student.url, "api_key": "sk-s", "messages": QUESTION}


def _check_report(r: Any) -> None:
    # Guided and baseline agree on 42 (their thinking says 43 and 40): the cheaper, guided.
    assert (r.decision, r.reason) == ("guided", Reason.AGREEMENT)
    for role, (p, c, reasoning, cached) in FIGURES.items():
        u = getattr(r.usage, role)
        assert (u.prompt_tokens, u.completion_tokens, u.reasoning_tokens, u.cached_tokens, u.calls) == \
            (p, c, reasoning, cached, 1), role
    assert r.usage.judge.calls == 0
    total = r.usage.total()
    assert total.reasoning_tokens == sum(f[2] for f in FIGURES.values())
    assert total.cached_tokens == sum(f[3] for f in FIGURES.values())
    # Reasoning is part of completion tokens: counted once in the savings, never added on top.
    assert r.tokens_saved == FIGURES["baseline"][1] - FIGURES["guided"][1] == 200
    spent = sum(p + c for p, c, _, _ in FIGURES.values())
    assert r.net_tokens == spent - (18 + 300) == 540
    # The proxy's body field carries the same per-role figures.
    body = report_body(r)
    assert body["usage"]["teacher"]["reasoning_tokens"] == 120
    assert body["usage"]["guided"]["cached_tokens"] == 16


def test_reasoning_student_and_teacher_over_http(servers, lean, call) -> None:
    student, teacher = servers
    with _atlas(teacher, lean) as atlas:
        resp = call(atlas, **_student(student))
    _check_report(resp.atlas)
    assert isinstance(resp, litellm.ModelResponse)
    message = resp.choices[0].message
    assert message.content == ANSWER  # the answer, not the thinking
    assert message.reasoning_content == GUIDED_THOUGHT  # kept beside it, not dropped
    assert resp.usage.completion_tokens == 100
    assert resp.usage.completion_tokens_details.reasoning_tokens == 90
    assert resp.usage.prompt_tokens_details.cached_tokens == 16
    # The teacher's thinking stayed private: the student saw only the guidance.
    guided = next(req for role, req in student.backend.calls if role == "guided")
    assert "forget the carry" not in json.dumps(guided.messages)


def test_reasoning_student_stream_keeps_reasoning_delta_and_usage(servers, lean, call) -> None:
    student, teacher = servers
    with _atlas(teacher, lean) as atlas:
        out = call(atlas, stream=True, stream_options={"include_usage": True}, **_student(student))
    stream, items = out
    _check_report(stream.atlas)
    deltas = [c.choices[0].delta for c in items if c.choices]
    thought = [d.reasoning_content for d in deltas if getattr(d, "reasoning_content", None)]
    assert thought == [GUIDED_THOUGHT]
    assert "".join(d.content or "" for d in deltas) == ANSWER  # the thinking is not in the content
    (usage,) = [c.usage for c in items if getattr(c, "usage", None) is not None]
    assert usage.completion_tokens == 100
    assert usage.completion_tokens_details.reasoning_tokens == 90
    assert usage.prompt_tokens_details.cached_tokens == 16


def test_vllm_reasoning_field_is_delivered_as_litellm_delivers_it(servers, lean) -> None:
    """Newer vLLM returns ``reasoning``; LiteLLM renames it ``reasoning_content``. Both paths."""
    student, teacher = servers
    body = {"id": "x", "object": "chat.completion", "created": 1, "model": "student",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": ANSWER, "reasoning": GUIDED_THOUGHT}}],
            "usage": {"prompt_tokens": 40, "completion_tokens": 100, "total_tokens": 140,
                      "completion_tokens_details": {"reasoning_tokens": 90}}}
    student.backend.script["guided"] = RawBody(json.dumps(body).encode())
    with _atlas(teacher, lean, policy="off") as atlas:
        resp = atlas.completion(**_student(student))
    message = resp.choices[0].message
    assert (resp.atlas.decision, message.content) == ("guided", ANSWER)
    assert message.reasoning_content == GUIDED_THOUGHT
    assert getattr(message, "reasoning", None) is None
    assert resp.atlas.usage.guided.reasoning_tokens == 90


def test_ledger_keeps_reasoning_and_cached_tokens_per_role(servers, lean, tmp_path) -> None:
    student, teacher = servers
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    with _atlas(teacher, lean, ledger=url) as atlas:
        atlas.completion(**_student(student))
        atlas.completion(**_student(student))
    records = open_ledger(url).records()
    assert len(records) == 2
    for role, (_, _, reasoning, cached) in FIGURES.items():
        assert records[0].tokens[role]["reasoning"] == reasoning
        assert records[0].tokens[role]["cached"] == cached
        assert records[0].report().usage.model_dump()[role]["reasoning_tokens"] == reasoning
    summary = summarize_group(records)
    assert summary.tokens["baseline"].reasoning == 2 * 280
    assert summary.tokens["teacher"].cached == 2 * 64
    assert summary.net_tokens == 2 * 540


def test_provider_delivers_reasoning_content(servers, lean) -> None:
    """``litellm.completion(model="atlas/...")``: the delivered message keeps its reasoning."""
    from atlas_middleware.provider import register

    student, teacher = servers
    old_map = list(litellm.custom_provider_map)
    prov = register(teacher="openai/teacher", teacher_api_base=teacher.url, teacher_api_key="sk-t",
                    ledger="none", policy="strict", judge="answer", lean_http=lean)
    try:
        resp = litellm.completion(model="atlas/openai/student", messages=QUESTION, api_base=student.url,
                                  api_key="sk-s")
    finally:
        prov.close()
        litellm.custom_provider_map = old_map
    _check_report(resp.atlas)
    assert resp.choices[0].message.content == ANSWER
    assert resp.choices[0].message.reasoning_content == GUIDED_THOUGHT
    assert resp.usage.completion_tokens_details.reasoning_tokens == 90


# -- the usage value and its parsing -----------------------------------------------------


def test_usage_adds_details() -> None:
    a = Usage(prompt_tokens=10, completion_tokens=20, reasoning_tokens=15, cached_tokens=4, calls=1)
    b = Usage(prompt_tokens=1, completion_tokens=2, reasoning_tokens=1, cached_tokens=0, calls=1)
    s = a + b
    assert (s.reasoning_tokens, s.cached_tokens, s.total_tokens) == (16, 4, 33)
    assert s.openai_usage() == {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33,
                                "completion_tokens_details": {"reasoning_tokens": 16},
                                "prompt_tokens_details": {"cached_tokens": 4}}
    assert Usage(prompt_tokens=1, completion_tokens=1, calls=1).openai_usage() == \
        {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}


def test_details_are_parts_of_the_counts_never_added_twice() -> None:
    # OpenAI's definition: reasoning inside completion, cached inside prompt.
    u = provider_usage({"prompt_tokens": 100, "completion_tokens": 50,
                        "completion_tokens_details": {"reasoning_tokens": 40, "audio_tokens": None},
                        "prompt_tokens_details": {"cached_tokens": 64}})
    assert u is not None
    assert (u.prompt_tokens, u.completion_tokens, u.reasoning_tokens, u.cached_tokens) == (100, 50, 40, 64)
    # A provider that evidently left them out of the count (more thinking than output): added in.
    u = provider_usage({"prompt_tokens": 10, "completion_tokens": 5,
                        "completion_tokens_details": {"reasoning_tokens": 20},
                        "prompt_tokens_details": {"cached_tokens": 30}})
    assert u is not None and (u.prompt_tokens, u.completion_tokens) == (40, 25)
    # null details (LiteLLM's wrappers default to None) count as none reported
    u = provider_usage({"prompt_tokens": 3, "completion_tokens": 4, "completion_tokens_details": None})
    assert u is not None and (u.reasoning_tokens, u.cached_tokens) == (0, 0)


def test_estimated_usage_counts_the_reasoning_text() -> None:
    request = ChatRequest(model="openai/gpt-4o-mini", messages=QUESTION)
    thought = "Let me think about this carefully, step by step, before I answer."
    plain = {"choices": [{"message": {"role": "assistant", "content": "The answer is 42"}}]}
    thinking = {"choices": [{"message": {"role": "assistant", "content": "The answer is 42",
                                         "reasoning_content": thought}}]}
    a = from_model_response(plain, request, litellm)
    b = from_model_response(thinking, request, litellm)
    assert a.usage.counted_by == b.usage.counted_by == "estimated:litellm.token_counter"
    assert b.reasoning == thought and b.content == "The answer is 42"
    assert b.usage.reasoning_tokens == litellm.token_counter(model=request.model, text=thought) > 0
    assert b.usage.completion_tokens == a.usage.completion_tokens + b.usage.reasoning_tokens


def test_lean_path_prices_cached_and_reasoning_tokens_as_litellm_does() -> None:
    """The lean path computes the price LiteLLM's ``response_cost`` states for the same body."""
    body = json.dumps({
        "id": "x", "object": "chat.completion", "created": 1, "model": "o3-mini",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "42"}}],
        "usage": {"prompt_tokens": 1000, "completion_tokens": 3000, "total_tokens": 4000,
                  "completion_tokens_details": {"reasoning_tokens": 2000},
                  "prompt_tokens_details": {"cached_tokens": 400}}}).encode()
    with OpenAITestServer(ScriptedBackend({"*": RawBody(body)})) as server:
        via_litellm = litellm.completion(model="openai/o3-mini", messages=QUESTION, api_base=server.url,
                                         api_key="sk-x")
        lean = LeanHTTPBackend()
        try:
            got = lean.complete(ChatRequest(model="openai/o3-mini", messages=QUESTION,
                                            params={"api_base": server.url, "api_key": "sk-x"}))
        finally:
            lean.close()
    expected = via_litellm._hidden_params["response_cost"]
    assert got.usage.cost_usd == pytest.approx(expected)
    assert (got.usage.reasoning_tokens, got.usage.cached_tokens) == (2000, 400)
    uncached = litellm.cost_per_token(model="openai/o3-mini", prompt_tokens=1000, completion_tokens=3000)
    assert sum(uncached) > expected  # the cache discount is real: pricing it matters


def test_langchain_usage_details_round_trip() -> None:
    pytest.importorskip("langchain_core")
    from langchain_core.messages import AIMessage

    from atlas_middleware.langchain._convert import usage_metadata, usage_of

    msg = AIMessage(content="42", usage_metadata={
        "input_tokens": 100, "output_tokens": 50, "total_tokens": 150,
        "input_token_details": {"cache_read": 64}, "output_token_details": {"reasoning": 40}})
    u = usage_of(msg)
    assert (u.prompt_tokens, u.completion_tokens, u.reasoning_tokens, u.cached_tokens) == (100, 50, 40, 64)
    meta = usage_metadata(u)
    assert meta["output_token_details"] == {"reasoning": 40}
    assert meta["input_token_details"] == {"cache_read": 64}
    assert meta["total_tokens"] == 150



def test_live_stream_of_a_reasoning_student(servers, lean, call) -> None:
    """Under ``off`` the guided answer streams as the student writes it: thinking first, as
    ``reasoning_content`` deltas, never in the content; the usage chunk keeps the details."""
    student, teacher = servers
    with _atlas(teacher, lean, policy="off") as atlas:
        out = call(atlas, stream=True, stream_options={"include_usage": True}, **_student(student))
    stream, items = out
    r = stream.atlas
    assert (r.decision, r.reason) == ("guided", Reason.POLICY_OFF)
    deltas = [c.choices[0].delta for c in items if c.choices]
    thought = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert thought.split() == GUIDED_THOUGHT.split()
    assert "".join(d.content or "" for d in deltas) == ANSWER
    (usage,) = [c.usage for c in items if getattr(c, "usage", None) is not None]
    assert usage.completion_tokens_details.reasoning_tokens == 90
    assert usage.prompt_tokens_details.cached_tokens == 16
    assert (r.usage.guided.reasoning_tokens, r.usage.guided.cached_tokens) == (90, 16)
    assert r.usage.teacher.reasoning_tokens == 120 and r.tokens_saved is None
