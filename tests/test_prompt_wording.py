"""Rewording a prompt misroutes nothing: each call's role rides beside its request.

Were a role worked out from the prompts' wording, a reworded probe would reach the scripted
doubles as the student's own answer, and LangChain's agent would hand the probe its tools.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import QUESTION, STUDENT_SCRIPT

from atlas_middleware.teaching.protocols.structured import StructuredProtocol
from atlas_middleware.testing import PairwiseJudge

PROBE = "Before you answer: your plan, in one line."
TEACHER_SYSTEM = "You coach a student model. Read its task and plan; answer in the tags asked for below."


@pytest.fixture
def reworded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The structured protocol's probe and teacher prompts, worded afresh."""
    teacher_messages = StructuredProtocol.teacher_messages

    def probe(self: Any, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [*messages, {"role": "user", "content": PROBE}]

    def teacher(self: Any, *args: Any) -> list[dict[str, Any]]:
        return [{"role": "system", "content": TEACHER_SYSTEM}, *teacher_messages(self, *args)[1:]]

    monkeypatch.setattr(StructuredProtocol, "probe_messages", probe)
    monkeypatch.setattr(StructuredProtocol, "teacher_messages", teacher)


def test_reworded_prompts_reach_the_scripted_doubles_as_their_roles(
        reworded: None, make_atlas: Any, call: Any) -> None:
    atlas, student, teacher = make_atlas(teacher={"judge_pair": PairwiseJudge(lambda a: "42" in a)},
                                         judge="teacher", policy="strict")
    report = call(atlas).atlas
    assert sorted(student.roles()) == ["baseline", "guided", "probe"]
    assert sorted(teacher.roles()) == ["judge_pair", "judge_pair", "teacher"]
    assert (report.probe, report.guidance, report.decision) == (STUDENT_SCRIPT["probe"], "Carry the one.", "guided")
    (probe,) = [r for role, r in student.calls if role == "probe"]
    assert probe.messages == [*QUESTION, {"role": "user", "content": PROBE}]


@pytest.mark.parametrize("policy", ["strict", "off"])
def test_a_reworded_probe_does_not_misroute_langchain_streaming(reworded: None, tmp_path: Path, policy: str) -> None:
    pytest.importorskip("langchain")
    from langchain.agents import create_agent
    from langchain_core.messages import AIMessage, AIMessageChunk
    from langchain_core.tools import tool

    from atlas_middleware.langchain import AtlasAgentMiddleware
    from atlas_middleware.testing import ScriptedBackend, teacher_reply
    from atlas_middleware.testing.langchain import ScriptedChatModel

    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    student = ScriptedChatModel(backend=ScriptedBackend({"probe": "PLANWORDS add them.", "guided": "It is 42.",
                                                         "baseline": "It is 41."}))
    teacher = ScriptedChatModel(backend=ScriptedBackend({"teacher": teacher_reply("Carry the one.")}),
                                model_name="scripted-teacher")
    middleware = AtlasAgentMiddleware(teacher=teacher, policy=policy, judge="answer", ledger="none")
    agent = create_agent(student, tools=[add], middleware=[middleware])
    texts = [chunk.text for chunk, _ in agent.stream({"messages": QUESTION}, stream_mode="messages")
             if isinstance(chunk, (AIMessage, AIMessageChunk)) and chunk.text]
    joined = "".join(texts)
    # the probe stays internal; the delivered answer streams once (under strict the answer
    # judge finds no evidence for the guided one, and the student's own answer is delivered)
    assert joined == ("It is 42." if policy == "off" else "It is 41.")
    assert student.roles.count("probe") == 1 and teacher.roles == ["teacher"]
    (probe,) = [r for r in student.calls if r.messages[-1]["content"] == PROBE]
    assert "tools" not in probe.params  # the probe asks for a plain plan: no tools
