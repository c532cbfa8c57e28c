"""A LangChain agent with an ATLAS teacher, offline: `python examples/langchain_agent.py`.

The student and the teacher are scripted LangChain chat models (no network, no keys), so
the figures show the plumbing, not a real model's teaching gain. The teacher also plays
the judge, as a real teacher does under ``strict`` (``judge="teacher"``, the default): it
compares the guided and the baseline answer and prefers the one that answers without
rambling. Swap in real models:

    from langchain_openai import ChatOpenAI
    student = ChatOpenAI(model="gpt-4o-mini")
    middleware = AtlasAgentMiddleware(teacher="hosted_vllm/Arc-Intelligence/ATLAS-8B-Thinking",
                                      teacher_api_base="http://127.0.0.1:8001/v1", policy="verify")
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from langchain.agents import create_agent
from langchain_core.tools import tool

from atlas_middleware.langchain import AtlasAgentMiddleware, atlas_report
from atlas_middleware.messages import ChatRequest, ToolCall
from atlas_middleware.testing import GradingJudge, PairwiseJudge, Reply, ScriptedBackend, teacher_reply
from atlas_middleware.testing.langchain import ScriptedChatModel


@tool
def get_price(item: str) -> float:
    """The unit price of an item, in euros."""
    return {"apples": 0.5, "pears": 0.75}.get(item, 1.0)


@tool
def multiply(a: float, b: float) -> float:
    """Multiply two numbers."""
    return a * b


def student_step(verbose: bool):
    """Look up the price, multiply, answer; without guidance the student rambles more."""

    def answer(request: ChatRequest) -> Reply:
        done = sum(1 for m in request.messages if m["role"] == "tool")
        if done == 0:
            return Reply(None, tool_calls=[ToolCall(id="p1", name="get_price", arguments='{"item": "apples"}')])
        if done == 1:
            return Reply(None, tool_calls=[ToolCall(id="m1", name="multiply", arguments=json.dumps({"a": 0.5, "b": 12}))])
        filler = " Let me restate every step I took before giving the total, to be thorough." * 3
        return Reply(("12 apples cost 6.0 euros." + (filler if verbose else "")).strip())

    return answer


def concise_and_right(answer: str) -> bool:
    """What the judge double calls a right answer: the total, without the rambling."""
    return "6.0 euros" in answer and "restate" not in answer


def main() -> None:
    student = ScriptedChatModel(backend=ScriptedBackend({
        "probe": "Find the unit price with a tool, then multiply.",
        "guided": student_step(verbose=False),
        "baseline": student_step(verbose=True),
    }), model_name="scripted-student")
    teacher = ScriptedChatModel(backend=ScriptedBackend({
        "teacher": teacher_reply("Use get_price, then multiply; answer in one sentence.", level=3),
        # The teacher's part as the judge: it reads the answers out of the judge's prompt.
        "judge_pair": PairwiseJudge(concise_and_right),
        "judge_score": GradingJudge(concise_and_right),
    }), model_name="scripted-teacher")

    with tempfile.TemporaryDirectory() as tmp:
        middleware = AtlasAgentMiddleware(teacher=teacher, policy="strict",
                                          ledger=f"sqlite:///{Path(tmp) / 'ledger.db'}")
        agent = create_agent(student, tools=[get_price, multiply], middleware=[middleware],
                             system_prompt="You are a shop assistant.")
        out = agent.invoke({"messages": [{"role": "user", "content": "How much do 12 apples cost?"}]})

        print("answer:", out["messages"][-1].content)
        for i, message in enumerate(m for m in out["messages"] if atlas_report(m)):
            report = atlas_report(message)
            assert report is not None
            print(f"step {i + 1}: {report.summary()}; guidance reused: {report.guidance_reused}")

        rows = middleware.atlas.ledger.records()
        saved = sum(r.tokens_saved or 0 for r in rows)
        net = sum(r.net_tokens or 0 for r in rows)
        teacher_tokens = sum(r.tokens["teacher"]["prompt"] + r.tokens["teacher"]["completion"] for r in rows)
        print(f"ledger rows: {len(rows)} (one per agent model call)")
        print(f"student completion tokens saved vs. student alone: {saved:+d}")
        print(f"net tokens of the run (everything spent minus the student alone): {net:+d}"
              f" (of which teacher: {teacher_tokens})")
        middleware.atlas.close()


if __name__ == "__main__":
    main()
