"""An agent's stream, as a UI that follows LangChain's convention shows it (issue 25, item 2).

A real client (``langchain-openai``'s ``ChatOpenAI``) against the loopback test server plays
the student; the teacher is a LiteLLM model on the same server. Convention: a chat model run
tagged ``nostream`` is internal, every other ``on_chat_model_stream`` event is the answer.
The delivered answer must stream untagged exactly once; the probe, the answer not delivered
and the teacher's and judge's calls stay tagged, as child runs of the agent's model step.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("langchain")
pytest.importorskip("langchain_openai")

from langchain.agents import create_agent  # noqa: E402
from langchain_core.callbacks import BaseCallbackHandler  # noqa: E402
from langchain_core.messages import AIMessage, AIMessageChunk  # noqa: E402
from langchain_openai import ChatOpenAI  # noqa: E402
from langgraph.constants import TAG_NOSTREAM  # noqa: E402

from atlas_middleware.langchain import AtlasAgentMiddleware, atlas_report  # noqa: E402
from atlas_middleware.testing import (  # noqa: E402
    GradingJudge,
    HTTPFault,
    OpenAITestServer,
    PairwiseJudge,
    ScriptedBackend,
    teacher_reply,
)

PROBE = "PROBEPLAN read the question and add the numbers."
GUIDED = "GUIDEDWORDS Two plus three is five, so the answer is 5."
BASELINE = "BASELINEWORDS I think the total is five, answer 5."
TEACHING = "TEACHINGWORDS add first."
QUESTION = {"messages": [{"role": "user", "content": "What is 2 + 3?"}]}
INTERNAL = ("PROBEPLAN", "TEACHINGWORDS", "<verdict>")


def _script(guided_wins: bool) -> dict[str, Any]:
    def right(answer: str) -> bool:
        return answer.startswith("GUIDEDWORDS" if guided_wins else "BASELINEWORDS")

    return {
        "probe": PROBE, "guided": GUIDED, "baseline": BASELINE,
        "teacher": teacher_reply(TEACHING),
        # The teacher as judge: it grades (verify) and compares (strict) the answers it reads.
        "judge_score": GradingJudge(right), "judge_pair": PairwiseJudge(right),
    }


def _agent(server: OpenAITestServer, policy: str) -> tuple[Any, AtlasAgentMiddleware]:
    student = ChatOpenAI(model="student", base_url=server.url, api_key="sk-test", max_retries=0)
    judge = "teacher" if policy in ("strict", "verify") else None
    middleware = AtlasAgentMiddleware(teacher="openai/teacher", teacher_api_base=server.url,
                                      teacher_api_key="sk-test", policy=policy, judge=judge, ledger="none")
    return create_agent(student, tools=[], middleware=[middleware]), middleware


async def _events(agent: Any) -> list[dict[str, Any]]:
    return [e async for e in agent.astream_events(QUESTION, version="v2")]


def _untagged_text(events: list[dict[str, Any]]) -> str:
    return "".join(e["data"]["chunk"].text for e in events
                   if e["event"] == "on_chat_model_stream" and TAG_NOSTREAM not in (e.get("tags") or []))


def _delivered(messages: list[Any]) -> AIMessage:
    final = messages[-1]
    assert isinstance(final, AIMessage) and atlas_report(final) is not None
    return final


CASES = [("strict", True, GUIDED), ("strict", False, BASELINE), ("verify", True, GUIDED),
         ("verify", False, BASELINE), ("off", True, GUIDED), ("audit", True, GUIDED)]


@pytest.mark.parametrize(("policy", "guided_wins", "answer"), CASES)
def test_astream_events_streams_the_delivered_answer_once(policy: str, guided_wins: bool, answer: str) -> None:
    with OpenAITestServer(ScriptedBackend(_script(guided_wins))) as server:
        agent, middleware = _agent(server, policy)
        try:
            events = asyncio.run(_events(agent))
        finally:
            middleware.atlas.close()
    streamed = _untagged_text(events)
    assert streamed == answer  # exactly once, whole, and nothing else
    for text in (*INTERNAL, GUIDED if answer == BASELINE else BASELINE):
        assert text.split()[0] not in streamed
    end = next(e for e in reversed(events) if e["event"] == "on_chain_end" and e["name"] == "LangGraph")
    assert _delivered(end["data"]["output"]["messages"]).text == answer

    # Internal calls are child runs of the model step, tagged nostream.
    model_step = next(e for e in events if e["event"] == "on_chain_start" and e["name"] == "model")
    internal = [e for e in events if e["event"] == "on_chat_model_start" and TAG_NOSTREAM in (e.get("tags") or [])]
    assert internal, "the probe at least runs as a tagged child run"
    for e in internal:
        assert model_step["run_id"] in e["parent_ids"]
    roles = {e["metadata"].get("atlas_role") for e in internal}
    assert {"probe", "teacher"} <= roles
    if policy == "verify":
        assert "judge" in roles
    if policy == "strict" or not guided_wins:
        assert "baseline" in roles
    live = [e for e in events if e["event"] == "on_chat_model_start" and TAG_NOSTREAM not in (e.get("tags") or [])]
    assert len(live) == 1 and live[0]["metadata"]["atlas_role"] in ("guided", "baseline", "delivered")
    assert model_step["run_id"] in live[0]["parent_ids"]


@pytest.mark.parametrize(("policy", "guided_wins", "answer"), CASES[::2] + [("verify", False, BASELINE)])
def test_messages_mode_streams_the_delivered_answer_once(policy: str, guided_wins: bool, answer: str) -> None:
    with OpenAITestServer(ScriptedBackend(_script(guided_wins))) as server:
        agent, middleware = _agent(server, policy)
        runs = _Runs()
        try:
            parts = list(agent.stream(QUESTION, {"callbacks": [runs]}, stream_mode="messages"))
        finally:
            middleware.atlas.close()
    chunks = [m for m, _meta in parts if isinstance(m, AIMessageChunk)]
    whole = [m for m, _meta in parts if isinstance(m, AIMessage) and not isinstance(m, AIMessageChunk)]
    assert len(chunks) > 1, "the answer streams in pieces, not as one message at the end"
    assert whole == []  # the streamed chunks stand for the delivered message: not sent again whole
    assert "".join(c.text for c in chunks) == answer
    assert {c.id for c in chunks} == {chunks[0].id}
    # The sync driver runs the teacher on a worker thread: its calls are still child runs.
    tagged = {role for role, tags in runs.started if TAG_NOSTREAM in tags}
    assert {"probe", "teacher"} <= tagged
    assert [role for role, tags in runs.started if TAG_NOSTREAM not in tags] in (["guided"], ["delivered"])


class _Runs(BaseCallbackHandler):
    """The chat model runs a tracer sees: (atlas_role, tags)."""

    def __init__(self) -> None:
        self.started: list[tuple[Any, list[str]]] = []

    def on_chat_model_start(self, serialized: Any, messages: Any, *, tags: list[str] | None = None,
                            metadata: dict[str, Any] | None = None, **kwargs: Any) -> None:
        self.started.append(((metadata or {}).get("atlas_role"), list(tags or [])))


@pytest.mark.parametrize("policy", ["off", "strict"])
def test_a_fallback_answer_streams_once_too(policy: str) -> None:
    """The teacher down: the student's own answer is delivered, and streams untagged once."""
    script = {**_script(True), "teacher": HTTPFault(503, "teacher down")}
    with OpenAITestServer(ScriptedBackend(script)) as server:
        agent, middleware = _agent(server, policy)
        try:
            events = asyncio.run(_events(agent))
        finally:
            middleware.atlas.close()
    end = next(e for e in reversed(events) if e["event"] == "on_chain_end" and e["name"] == "LangGraph")
    delivered = _delivered(end["data"]["output"]["messages"])
    assert atlas_report(delivered).decision == "student_only"
    assert _untagged_text(events) == delivered.text == BASELINE


def test_a_replayed_tool_call_step_rebuilds_the_delivered_tool_calls() -> None:
    """strict, a tool-call step: the replayed chunks add up to the delivered message's calls."""
    from langchain_core.tools import tool

    from atlas_middleware.messages import ChatRequest, ToolCall
    from atlas_middleware.testing import Reply
    from atlas_middleware.testing.langchain import ScriptedChatModel

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    def step(request: ChatRequest) -> Reply:
        if any(m["role"] == "tool" for m in request.messages):
            return Reply("It is 5.")
        return Reply(None, tool_calls=[ToolCall(id="a1", name="add", arguments='{"a": 2, "b": 3}')])

    student = ScriptedChatModel.from_script({"probe": "PROBEPLAN add.", "guided": step, "baseline": step})
    middleware = AtlasAgentMiddleware(teacher=ScriptedChatModel.from_script({"teacher": teacher_reply(TEACHING)}),
                                      policy="strict", judge="answer", ledger="none")
    agent = create_agent(student, tools=[add], middleware=[middleware])
    merged: dict[Any, AIMessageChunk] = {}
    for message, meta in agent.stream(QUESTION, stream_mode="messages"):
        if isinstance(message, AIMessageChunk) and meta["langgraph_node"] == "model":
            merged[message.id] = merged[message.id] + message if message.id in merged else message
    final = agent.invoke(QUESTION)["messages"]
    calls = [m.tool_calls for m in final if isinstance(m, AIMessage) and m.tool_calls]
    assert [m.tool_calls for m in merged.values() if m.tool_calls] == calls
    assert [m.text for m in merged.values() if m.text] == ["It is 5."]
    middleware.atlas.close()
