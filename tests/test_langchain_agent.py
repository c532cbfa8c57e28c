"""``AtlasAgentMiddleware`` in a real ``create_agent`` loop with tools, offline."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain")

from langchain.agents import create_agent  # noqa: E402
from langchain_core.callbacks import get_usage_metadata_callback  # noqa: E402
from langchain_core.messages import AIMessage, AIMessageChunk, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402
from langgraph.checkpoint.memory import InMemorySaver  # noqa: E402

from atlas_middleware import Reason  # noqa: E402
from atlas_middleware.langchain import AtlasAgentMiddleware, atlas_report  # noqa: E402
from atlas_middleware.messages import ChatRequest, ToolCall  # noqa: E402
from atlas_middleware.testing import Reply, ScriptedBackend, classify, hold_role, teacher_reply  # noqa: E402
from atlas_middleware.testing.langchain import ScriptedChatModel  # noqa: E402

FINAL = "It is sunny in Paris, and 2 + 3 = 5."


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _step(bad_guided_step: int | None = None) -> Any:
    """The student: weather, then add, then the answer; optionally a wrong tool when guided."""

    def answer(request: ChatRequest) -> Reply:
        done = sum(1 for m in request.messages if m["role"] == "tool")
        if done == 0:
            return Reply(None, tool_calls=[ToolCall(id="w1", name="get_weather", arguments='{"city": "Paris"}')])
        if done == 1:
            wrong = bad_guided_step == 2 and classify(request) == "guided"
            return Reply(None, tool_calls=[ToolCall(id="a1", name="addition" if wrong else "add",
                                                    arguments=json.dumps({"a": 2, "b": 3}))])
        return Reply(FINAL)

    return answer


def _agent(tmp_path: Path, bad_guided_step: int | None = None, *, policy: str = "strict",
           **kwargs: Any) -> tuple[Any, AtlasAgentMiddleware, ScriptedChatModel, ScriptedChatModel]:
    step = _step(bad_guided_step)
    student = ScriptedChatModel(backend=ScriptedBackend({"probe": "Weather tool, then the add tool.",
                                                          "guided": step, "baseline": step}))
    teacher = ScriptedChatModel(backend=ScriptedBackend({"teacher": teacher_reply("One tool per step.")}),
                                model_name="scripted-teacher")
    middleware = AtlasAgentMiddleware(teacher=teacher, policy=policy, ledger=f"sqlite:///{tmp_path / 'ledger.db'}",
                                      audit_rate=1.0)
    agent = create_agent(student, tools=[get_weather, add], middleware=[middleware],
                         system_prompt="You are a helpful assistant.", **kwargs)
    return agent, middleware, student, teacher


QUESTION = {"messages": [{"role": "user", "content": "What is the weather in Paris, and what is 2 + 3?"}]}


def _reports(messages: list[Any]) -> list[Any]:
    return [atlas_report(m) for m in messages if isinstance(m, AIMessage)]


def _check_clean_run(out: dict[str, Any], middleware: AtlasAgentMiddleware, student: ScriptedChatModel,
                     teacher: ScriptedChatModel) -> None:
    reports = _reports(out["messages"])
    assert out["messages"][-1].content == FINAL
    assert len(reports) == 3
    # One diagnosis per task ...
    assert teacher.roles == ["teacher"] and student.roles.count("probe") == 1
    assert [r.guidance_reused for r in reports] == [False, True, True]
    # ... guidance on every step ...
    assert student.roles.count("guided") == 3
    assert all(r.guidance == "One tool per step." and r.usage.guided.calls == 1 for r in reports)
    assert len({r.session_id for r in reports}) == 1
    # ... and a ledger row for every model call of the agent, with every call's tokens.
    rows = middleware.atlas.ledger.records()
    assert [row.call_id for row in rows] == [r.call_id for r in reports]
    assert sum(row.tokens[role]["calls"] for row in rows for role in ("probe", "guided", "baseline")) == len(student.calls)
    assert sum(row.tokens["teacher"]["calls"] for row in rows) == len(teacher.calls)
    tools_run = [m.content for m in out["messages"] if isinstance(m, ToolMessage)]
    assert tools_run == ["sunny in Paris", "5"]


def test_agent_diagnoses_once_and_guides_every_step(tmp_path: Path) -> None:
    agent, middleware, student, teacher = _agent(tmp_path)
    _check_clean_run(agent.invoke(QUESTION), middleware, student, teacher)


async def test_async_agent(tmp_path: Path) -> None:
    agent, middleware, student, teacher = _agent(tmp_path)
    _check_clean_run(await agent.ainvoke(QUESTION), middleware, student, teacher)


def test_a_wrong_guided_tool_call_falls_back_and_reteaches(tmp_path: Path) -> None:
    agent, middleware, student, teacher = _agent(tmp_path, bad_guided_step=2)
    out = agent.invoke(QUESTION)
    reports = _reports(out["messages"])
    assert [r.decision for r in reports] == ["baseline", "baseline", "baseline"]
    assert reports[1].reason == Reason.INVALID_TOOL_CALL and reports[1].guidance_reused
    # The agent ran the baseline's valid call, not the guided one.
    assert [m.content for m in out["messages"] if isinstance(m, ToolMessage)] == ["sunny in Paris", "5"]
    # The guidance lost, so the next step was taught afresh.
    assert not reports[2].guidance_reused and len(teacher.calls) == 2
    assert out["messages"][-1].content == FINAL
    assert len(middleware.atlas.ledger.records()) == 3


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_audit_baselines_run_after_each_step(tmp_path: Path, mode: str) -> None:
    """audit: each step's sampled baseline runs in the background after the step returned,
    through the agent's handler, and its comparison reaches the ledger."""
    agent, middleware, student, _ = _agent(tmp_path, policy="audit")
    # In sync, hold each baseline until the agent is done, so the test does not depend on
    # thread timing (the baseline's thread may otherwise run before the step returns).
    done = threading.Event()
    hold_role(middleware.atlas.backends["student"], "baseline", done)
    if mode == "sync":
        out = agent.invoke(QUESTION)
        done.set()
        middleware.atlas.flush()
    else:
        out = await agent.ainvoke(QUESTION)
        await middleware.atlas.aflush()
    assert out["messages"][-1].content == FINAL
    assert [r.reason for r in _reports(out["messages"])] == [Reason.AUDIT_SAMPLED] * 3
    reports = [row.report() for row in middleware.atlas.ledger.records()]
    assert len(reports) == 3
    assert [e.message for r in reports for e in r.errors] == []
    assert all(r.audit is not None and r.audit.sampled and r.audit.winner is not None for r in reports)
    assert student.roles.count("baseline") == 3 and all(r.usage.baseline.calls == 1 for r in reports)


def test_agent_usage_is_counted_once_by_callbacks(tmp_path: Path) -> None:
    agent, _, student, _ = _agent(tmp_path)
    with get_usage_metadata_callback() as cb:
        out = agent.invoke(QUESTION)
    reports = _reports(out["messages"])
    # The student's calls run through the agent's handler: each is one model run of the
    # agent, counted once; the teacher's tokens are in the reports only.
    student_total = sum(r.usage.student().total_tokens for r in reports)
    assert cb.usage_metadata["scripted-student"]["total_tokens"] == student_total
    assert set(cb.usage_metadata) == {"scripted-student"}


@pytest.mark.parametrize("mode", ["sync", "async"])
async def test_the_task_family_comes_from_run_metadata(tmp_path: Path, mode: str) -> None:
    agent, middleware, _, _ = _agent(tmp_path)
    config = {"metadata": {"atlas_task": "weather-and-sums"}}
    out = agent.invoke(QUESTION, config) if mode == "sync" else await agent.ainvoke(QUESTION, config)
    tagged = _reports(out["messages"])
    assert [r.task_family for r in tagged] == ["t:weather-and-sums"] * 3
    out = agent.invoke(QUESTION) if mode == "sync" else await agent.ainvoke(QUESTION)
    derived = {r.task_family for r in _reports(out["messages"])}
    # Every step of one task is one family: the system prompt, the tools and the user's message.
    assert len(derived) == 1 and derived.pop().startswith("f:")
    rows = middleware.atlas.ledger.records()
    assert [row.task_family for row in rows] == [r.task_family for r in [*tagged, *_reports(out["messages"])]]


def test_threads_key_sessions_by_task(tmp_path: Path) -> None:
    agent, _, _, teacher = _agent(tmp_path, checkpointer=InMemorySaver())
    config = {"configurable": {"thread_id": "t1"}}
    agent.invoke(QUESTION, config)
    assert len(teacher.calls) == 1
    # A new user message on the same thread is a new task: diagnosed afresh.
    agent.invoke({"messages": [{"role": "user", "content": "And in Rome?"}]}, config)
    assert len(teacher.calls) == 2


def test_example_runs_offline_and_prints_the_savings(capsys: pytest.CaptureFixture[str]) -> None:
    import runpy

    runpy.run_path(str(Path(__file__).parents[1] / "examples" / "langchain_agent.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "ledger rows: 3" in out
    assert "student completion tokens saved vs. student alone: +" in out
    assert "net tokens of the run" in out


@pytest.mark.parametrize("policy", ["strict", "off"])
def test_messages_stream_shows_answers_not_probes(tmp_path: Path, policy: str) -> None:
    agent, middleware, _, _ = _agent(tmp_path)
    middleware.atlas.settings = dataclasses.replace(middleware.atlas.settings, policy=policy)
    texts: list[str] = []
    for chunk, _meta in agent.stream(QUESTION, stream_mode="messages"):
        if isinstance(chunk, (AIMessage, AIMessageChunk)) and chunk.text:
            texts.append(chunk.text)
    joined = "".join(texts)
    assert "Weather tool" not in joined  # the probe never reaches the user's stream
    assert joined.count("sunny in Paris, and 2 + 3 = 5.") == 1  # the answer, once


def test_verify_with_the_teacher_as_judge(tmp_path: Path) -> None:
    """verify: the teacher (a LangChain model) grades each guided step; a failed grade brings
    in the baseline for a comparison (here they agree, so no pairwise verdict is needed)."""
    step = _step()
    student = ScriptedChatModel(backend=ScriptedBackend({"probe": "plan", "guided": step, "baseline": step}))
    teacher = ScriptedChatModel(backend=ScriptedBackend({
        "teacher": teacher_reply("One tool per step."),
        # The tool steps pass, the final answer fails its grade and loses the comparison.
        "judge_score": lambda r: "<verdict>2</verdict>" if "sunny in Paris, and" in r.messages[-1]["content"] else "<verdict>9</verdict>",
        "judge_pair": "<verdict>B</verdict>",
    }), model_name="scripted-teacher")
    middleware = AtlasAgentMiddleware(teacher=teacher, policy="verify", judge="teacher", ledger="none")
    agent = create_agent(student, tools=[get_weather, add], middleware=[middleware])
    reports = _reports(agent.invoke(QUESTION)["messages"])
    assert [r.reason for r in reports[:2]] == [Reason.VERIFIED, Reason.VERIFIED]
    assert student.roles.count("baseline") == 1  # only the step that failed its grade
    assert reports[2].reason == Reason.AGREEMENT
    assert [r.usage.judge.calls for r in reports] == [1, 1, 1]  # one grade per step, by the teacher
    assert teacher.roles.count("judge_score") == 3 and "judge_pair" not in teacher.roles
