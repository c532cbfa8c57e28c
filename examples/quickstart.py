"""Quick start, offline: the teaching loop over real HTTP, no API key.

Two loopback OpenAI-compatible servers (from ``atlas_middleware.testing``) play a scripted
student and teacher, so this shows the mechanics (probe, guidance, baseline, decision,
tokens) without any real model. Point ``model``/``api_base`` and ``teacher`` at real
endpoints to use it for real.

    python examples/quickstart.py
"""

from __future__ import annotations

import tempfile

from atlas_middleware import Atlas, report_of
from atlas_middleware.testing import AtlasStyleTeacher, OpenAITestServer, PairwiseJudge, ScriptedBackend

student = ScriptedBackend({
    "probe": "Multiply price by quantity, then subtract the discount.",
    "baseline": "3 notebooks at $4 is $12, minus $2 is $10. Wait, the discount is per notebook. The answer is 10",
    "guided": "Discount per notebook: 4 - 2 = 2; 3 x 2 = 6. The answer is 6",
})
# It writes like ATLAS-8B-Thinking: a <think> block, then plain-text teaching. As judge it
# prefers whichever answer says 6, asked in both orders.
teacher = ScriptedBackend({
    "teacher": AtlasStyleTeacher("Check whether the discount applies to each notebook or to the order."),
    "judge_pair": PairwiseJudge(is_right=lambda answer: answer.rstrip().endswith("answer is 6"), think=True),
})

with OpenAITestServer(student) as student_server, OpenAITestServer(teacher) as teacher_server, \
        tempfile.TemporaryDirectory() as tmp:
    atlas = Atlas(
        teacher="hosted_vllm/Arc-Intelligence/ATLAS-8B-Thinking",  # any LiteLLM model string
        teacher_api_base=teacher_server.url,       # the name picks the `atlas` protocol
        teacher_api_key="not-needed-here",
        policy="strict",                           # judge: the teacher, pairwise (the default)
        ledger=f"sqlite:///{tmp}/ledger.db",
    )
    question = "Notebooks cost $4 each with a $2 discount per notebook. What do 3 notebooks cost?"
    response = atlas.completion(
        model="openai/student", api_base=student_server.url, api_key="not-needed-here",
        messages=[{"role": "user", "content": question}],
    )
    report = report_of(response)
    print("answer:   ", response.choices[0].message.content)
    print("decision: ", report.decision, f"({report.reason.value}); protocol {report.protocol}")
    print("guidance: ", report.guidance)
    for role in ("probe", "teacher", "guided", "baseline", "judge"):
        u = getattr(report.usage, role)
        print(f"  {role:<9} {u.prompt_tokens:>4} prompt + {u.completion_tokens:>3} completion tokens ({u.calls} calls)")
    print("tokens saved:", report.tokens_saved, "| net tokens:", report.net_tokens)
    print("ledger rows: ", len(atlas.ledger.records()))
    atlas.close()
