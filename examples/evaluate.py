"""Evaluate a student/teacher pair the way the ATLAS tables are made, offline, in seconds.

Scripted models stand in for real ones (swap in ``Atlas(teacher="openai/gpt-4o", ...)`` and
``student="..."`` for a real run, or use ``atlas-middleware eval``). The student alone gets
the odd-numbered problems wrong; with guidance it gets them right but fumbles problem 2,
which the strict policy's fallback catches: its judge here is a verifier that knows the
reference answers (any ``(messages, answer) -> score`` callable can judge, e.g. unit tests
for code). With the ``answer`` judge a disagreement would go to the baseline (``no_evidence``);
the default judge is the teacher, pairwise. Outputs: results.jsonl, tables.md, metrics.json
and two PNG plots in a temporary folder.

    python examples/evaluate.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from atlas_middleware import Atlas
from atlas_middleware.messages import ChatRequest
from atlas_middleware.offline.eval import EvalSettings, Problem, evaluate
from atlas_middleware.teaching.answers import answers_equivalent, extract_answer
from atlas_middleware.testing import Reply, ScriptedBackend, teacher_reply

PROBLEMS = [Problem(id=f"p{i}", question=f"What is {i} times 12?", answer=str(12 * i)) for i in range(6)]


def _number(request: ChatRequest) -> int:
    text = str(request.messages[-1]["content"])
    return int(text.split("What is ", 1)[1].split(" ", 1)[0])


def baseline(request: ChatRequest) -> Reply:
    i = _number(request)
    answer = 12 * i + (i % 2)  # wrong on odd problems
    return Reply(f"Let me multiply step by step... 12 x {i}. The answer is {answer:,}.", completion_tokens=60)


def guided(request: ChatRequest) -> Reply:
    i = _number(request)
    answer = 12 * i + (1 if i == 2 else 0)  # right, except problem 2
    return Reply(f"12 x {i} = ${answer}.00. The answer is ${answer}.", completion_tokens=25)


def verifier(messages: list[dict[str, Any]], answer: str) -> float:
    """1.0 when the answer is right: the judge a task with a checkable answer can afford."""
    i = int(str(messages[-1]["content"]).split("What is ", 1)[1].split(" ", 1)[0])
    return float(answers_equivalent(extract_answer(answer), str(12 * i)))


def main() -> None:
    student = ScriptedBackend({"probe": "Multiplication; I will add 12 repeatedly.",
                               "baseline": baseline, "guided": guided})
    teacher = ScriptedBackend({"teacher": teacher_reply("Multiply 10 and 2 separately, then add.")})
    out = Path(tempfile.mkdtemp(prefix="atlas-eval-"))
    settings = EvalSettings(dataset="example", student="scripted-student", teacher="scripted-teacher",
                            samples=4, concurrency=4)
    with Atlas(student_backend=student, teacher_backend=teacher, judge=verifier, ledger="none") as atlas:
        result = evaluate(atlas, settings, out, problems=PROBLEMS, progress=False)
    print(result.tables.read_text())
    print(f"outputs in {out}")


if __name__ == "__main__":
    main()
