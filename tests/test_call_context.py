"""Each call's role rides beside its request (``ChatRequest.context``), never inside it.

The flow tells every backend which call it serves (probe, teacher, guided, baseline, judge),
the policy it runs under and an adapter's bindings; none of it reaches a wire body or the
task family, and nothing routes a call by the prompts' wording, so rewording a prompt
misroutes neither the scripted doubles nor LangChain streaming.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import QUESTION, STUDENT_SCRIPT, TEACHER_SCRIPT

from atlas_middleware import Atlas, ChatRequest
from atlas_middleware.backends.http.transport import LeanHTTPBackend
from atlas_middleware.backends.litellm import LiteLLMBackend
from atlas_middleware.messages import CallContext
from atlas_middleware.teaching.families import family_of
from atlas_middleware.testing import OpenAITestServer, PairwiseJudge, ScriptedBackend, classify
from atlas_middleware.testing.server import OPENAI_FIELDS


class Opaque:
    """An adapter's binding: nothing a JSON encoder (or a wire) could carry."""


CONTEXT = CallContext(role="probe", policy="strict", bindings={"test": Opaque()})


def _right(answer: str) -> bool:
    return "42" in answer


def _bodies(server: OpenAITestServer, *, messages: bool = True) -> list[str]:
    return sorted(json.dumps({k: v for k, v in r["body"].items() if messages or k != "messages"}, sort_keys=True)
                  for r in server.requests)


def _taught_call(lean: bool, atlas_options: dict[str, Any]) -> tuple[list[str], list[str], Any]:
    teacher_script = {**TEACHER_SCRIPT, "judge_pair": PairwiseJudge(_right)}
    with OpenAITestServer(ScriptedBackend(dict(STUDENT_SCRIPT))) as student, \
            OpenAITestServer(ScriptedBackend(teacher_script)) as teacher, \
            Atlas(teacher="openai/teacher", teacher_api_base=teacher.url, teacher_api_key="sk-t", judge="teacher",
                  policy="strict", ledger="none", lean_http=lean) as atlas:
        resp = atlas.completion(model="openai/student", messages=QUESTION, api_base=student.url, api_key="sk-s",
                                atlas=atlas_options)
        # (the judges' prompts are coded afresh for every call: the teacher's bodies are
        # compared without their messages)
        return _bodies(student), _bodies(teacher, messages=False), resp.atlas


@pytest.mark.parametrize("lean", [True, False], ids=["lean", "litellm"])
def test_the_context_never_reaches_the_wire(lean: bool) -> None:
    plain_student, plain_teacher, plain = _taught_call(lean, {})
    bound_student, bound_teacher, bound = _taught_call(lean, {"bindings": {"test": Opaque()}})
    # every role went over the wire, the judge's too ...
    assert plain.decision == bound.decision == "guided" and plain.usage.judge.calls == 2
    assert len(plain_student) == 3 and len(plain_teacher) == 3
    # ... with bodies byte for byte the same, bindings or not, and only OpenAI's fields in them
    assert (bound_student, bound_teacher) == (plain_student, plain_teacher)
    for body in (*bound_student, *bound_teacher):
        assert set(json.loads(body)) <= OPENAI_FIELDS | {"model", "messages"}


def test_backends_build_the_same_body_whatever_the_context() -> None:
    request = ChatRequest(model="openai/m", messages=QUESTION,
                          params={"api_base": "http://127.0.0.1:9/v1", "max_tokens": 5})
    within = request.replace(context=CONTEXT)
    lean = LeanHTTPBackend()
    try:
        assert lean._body(within) == lean._body(request) is not None
    finally:
        lean.close()
    litellm = LiteLLMBackend()
    assert litellm._kwargs(within) == litellm._kwargs(request)
    assert within.model_dump() == request.model_dump() and "context" not in within.model_dump_json()
    assert "Opaque" not in repr(within)


def test_the_context_is_not_part_of_the_family(make_atlas, call) -> None:  # type: ignore[no-untyped-def]
    atlas, _, _ = make_atlas()
    plain = call(atlas).atlas.task_family
    bound = call(atlas, atlas={"bindings": {"test": Opaque()}}).atlas.task_family
    assert plain == bound == family_of(QUESTION)


def test_every_call_says_its_role_and_policy(make_atlas, call) -> None:  # type: ignore[no-untyped-def]
    atlas, student, teacher = make_atlas(teacher={"judge_pair": PairwiseJudge(_right)}, judge="teacher",
                                         policy="strict")
    call(atlas, atlas={"bindings": {"test": "mine"}})
    seen = [(r.context.role, r.context.judging, r.context.policy, dict(r.context.bindings))
            for _, r in [*student.calls, *teacher.calls]]
    assert sorted(seen, key=str) == sorted([
        ("probe", None, "strict", {"test": "mine"}), ("guided", None, "strict", {"test": "mine"}),
        ("baseline", None, "strict", {"test": "mine"}), ("teacher", None, "strict", {}),
        ("judge", "pairwise", None, {}), ("judge", "pairwise", None, {})], key=str)


def test_bindings_must_be_a_dict(make_atlas) -> None:  # type: ignore[no-untyped-def]
    from atlas_middleware import InvalidRequestError

    atlas, _, _ = make_atlas()
    with pytest.raises(InvalidRequestError, match="bindings"):
        atlas.completion(model="m", messages=QUESTION, atlas={"bindings": ["x"]})


def test_a_request_from_outside_the_loop_is_the_students_own_answer() -> None:
    assert classify(ChatRequest(model="m", messages=QUESTION)) == "baseline"
    assert classify(ChatRequest(model="m", messages=QUESTION, context=CONTEXT)) == "probe"
    judged = CallContext(role="judge", judging="score")
    assert classify(ChatRequest(model="m", messages=QUESTION, context=judged)) == "judge_score"
