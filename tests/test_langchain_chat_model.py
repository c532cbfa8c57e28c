"""``AtlasChatModel``: the teaching loop behind LangChain's chat model interface."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("langchain_core")

from langchain_core.callbacks import BaseCallbackHandler, get_usage_metadata_callback  # noqa: E402
from langchain_core.language_models import FakeListLLM  # noqa: E402
from langchain_core.messages import (  # noqa: E402
    AIMessage,
    AIMessageChunk,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    convert_to_openai_messages,
)
from langchain_core.outputs import ChatGenerationChunk, LLMResult  # noqa: E402
from pydantic import BaseModel, ValidationError  # noqa: E402

from atlas_middleware import Reason  # noqa: E402
from atlas_middleware.langchain import AtlasChatModel, atlas_report  # noqa: E402
from atlas_middleware.langchain._convert import restore_messages, to_openai_messages  # noqa: E402
from atlas_middleware.messages import ToolCall  # noqa: E402
from atlas_middleware.testing import (  # noqa: E402
    PairwiseJudge,
    Reply,
    ScriptedBackend,
    classify,
    guidance_of,
    hold_role,
    teacher_reply,
)
from atlas_middleware.testing.langchain import ScriptedChatModel  # noqa: E402

SCRIPT = {"probe": "Add the numbers.", "guided": "20 + 22 = 42. The answer is 42",
          "baseline": "20 plus 22 makes 42 in total. The answer is 42"}


def _teacher(guidance: str = "Carry the one.", **script: Any) -> ScriptedChatModel:
    return ScriptedChatModel(backend=ScriptedBackend({"teacher": teacher_reply(guidance), **script}),
                             model_name="scripted-teacher")


def _model(script: dict[str, Any] | None = None, **kwargs: Any) -> tuple[AtlasChatModel, ScriptedChatModel, ScriptedChatModel]:
    student = ScriptedChatModel(backend=ScriptedBackend(script or SCRIPT))
    teacher = kwargs.pop("teacher", None) or _teacher()
    kwargs.setdefault("ledger", "none")
    return AtlasChatModel(student=student, teacher=teacher, **kwargs), student, teacher


class Recorder(BaseCallbackHandler):
    """A tracer-like handler: every LLM run it is told about, with its usage."""

    def __init__(self) -> None:
        self.starts = 0
        self.tokens = 0

    def on_chat_model_start(self, *args: Any, **kwargs: Any) -> None:
        self.starts += 1

    def on_llm_end(self, response: LLMResult, **kwargs: Any) -> None:
        for gens in response.generations:
            for gen in gens:
                usage = getattr(getattr(gen, "message", None), "usage_metadata", None) or {}
                self.tokens += usage.get("total_tokens", 0)


def test_invoke_runs_the_core_loop_and_reports() -> None:
    llm, student, teacher = _model()
    msg = llm.invoke("What is 20 + 22?")
    report = atlas_report(msg)
    assert isinstance(msg, AIMessage) and msg.content == SCRIPT["guided"]
    assert report is not None and report.decision == "guided" and report.reason == Reason.AGREEMENT
    assert sorted(student.roles) == ["baseline", "guided", "probe"]
    assert teacher.roles == ["teacher"]
    # The teacher saw the student's own probe answer, and its guidance reached the guided call.
    assert SCRIPT["probe"] in teacher.calls[0].messages[-1]["content"]
    (guided,) = [c for c in student.calls if classify(c) == "guided"]
    assert guidance_of(guided) == report.guidance == "Carry the one."
    assert all(guidance_of(c) is None for c in student.calls if c is not guided)
    assert msg.response_metadata["model_name"] == "scripted-student"


@pytest.mark.parametrize("mode", ["invoke", "ainvoke", "stream", "astream"])
async def test_the_task_family_comes_from_run_metadata_or_options(mode: str) -> None:
    llm, _, _ = _model()
    config: Any = {"metadata": {"atlas_task": "sums"}}
    if mode == "invoke":
        msg = llm.invoke("What is 20 + 22?", config=config)
    elif mode == "ainvoke":
        msg = await llm.ainvoke("What is 20 + 22?", config=config)
    elif mode == "stream":
        msg = list(llm.stream("What is 20 + 22?", config=config))[-1]
    else:
        msg = [c async for c in llm.astream("What is 20 + 22?", config=config)][-1]
    report = atlas_report(msg)
    assert report is not None and report.task_family == "t:sums"
    # A per-call option wins over the run's metadata; without either the family is derived.
    assert atlas_report(llm.invoke("What is 20 + 22?", config=config, atlas={"task": "own"})).task_family == "t:own"
    derived = atlas_report(llm.invoke("What is 7 + 9?"))
    assert derived is not None and derived.task_family == atlas_report(llm.invoke("What is 1 + 2?")).task_family
    assert derived.task_family.startswith("f:")


def test_an_atlas_teacher_guides_through_the_users_message() -> None:
    from atlas_middleware.testing import AtlasStyleTeacher

    teacher = ScriptedChatModel(backend=ScriptedBackend({"teacher": AtlasStyleTeacher("Carry the one.")}),
                                model_name="Arc-Intelligence/ATLAS-8B-Instruct")
    llm, student, _ = _model(teacher=teacher, judge="answer")
    msg = llm.invoke([SystemMessage("Be brief."), HumanMessage("What is 20 + 22?")])
    report = atlas_report(msg)
    assert report is not None and report.protocol == "atlas" and report.guidance == "Carry the one."
    (req,) = [c for c in student.calls if classify(c) == "guided"]
    # the caller's system message untouched, the guidance inside the (last) user message
    assert req.messages[0] == {"role": "system", "content": "Be brief."} and len(req.messages) == 2
    assert req.messages[-1]["role"] == "user" and guidance_of(req) == "Carry the one."


@pytest.mark.parametrize("mode", ["sync", "async", "stream", "astream"])
async def test_usage_is_counted_once(mode: str) -> None:
    llm, student, teacher = _model()
    recorder = Recorder()
    config = {"callbacks": [recorder]}
    with get_usage_metadata_callback() as cb:
        if mode == "sync":
            msg = llm.invoke("What is 20 + 22?", config=config)
        elif mode == "async":
            msg = await llm.ainvoke("What is 20 + 22?", config=config)
        elif mode == "stream":
            msg = _joined(llm.stream("What is 20 + 22?", config=config))
        else:
            chunks = [c async for c in llm.astream("What is 20 + 22?", config=config)]
            msg = _joined(iter(chunks))
    report = atlas_report(msg)
    assert report is not None
    total = report.usage.total()
    assert total.calls == 4  # probe, teacher, guided, baseline
    # Every provider call exactly once: the inner calls never reach the caller's callbacks.
    assert recorder.starts == 1
    assert recorder.tokens == total.total_tokens
    assert cb.usage_metadata == {"scripted-student": {"input_tokens": total.prompt_tokens,
                                                      "output_tokens": total.completion_tokens,
                                                      "total_tokens": total.total_tokens}}
    # ... and the figures are the providers' own: the delivered guided call's usage is the
    # student's word count of its answer.
    assert report.usage.guided.completion_tokens == len(SCRIPT["guided"].split())
    assert report.usage.teacher.calls == 1 and report.usage.teacher.total_tokens > 0


def _joined(chunks: Iterator[Any]) -> AIMessageChunk:
    full = None
    for chunk in chunks:
        full = chunk if full is None else full + chunk
    assert isinstance(full, AIMessageChunk)
    return full


def test_tools_pass_through_and_an_invalid_guided_call_loses() -> None:
    def call(name: str) -> Reply:
        return Reply(None, tool_calls=[ToolCall(id="c1", name=name, arguments=json.dumps({"a": 1, "b": 2}))])

    llm, student, _ = _model({"probe": "use add", "guided": call("addd"), "baseline": call("add")})

    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    msg = llm.bind_tools([add], tool_choice="add").invoke("1+2?")
    report = atlas_report(msg)
    assert report is not None
    assert report.decision == "baseline" and report.reason == Reason.INVALID_TOOL_CALL
    assert msg.tool_calls[0]["name"] == "add" and msg.tool_calls[0]["args"] == {"a": 1, "b": 2}
    by_role = dict(zip(student.roles, student.calls, strict=True))
    assert "tools" not in by_role["probe"].params  # the probe is plain text
    for role in ("guided", "baseline"):
        assert by_role[role].params["tools"][0]["function"]["name"] == "add"
        assert by_role[role].params["tool_choice"] == "add"


@pytest.mark.parametrize(("judge", "value", "reason"), [
    ("auto", 42, Reason.JUDGE_GUIDED),  # the teacher judge prefers the guided call's arguments
    ("answer", 41, Reason.NO_EVIDENCE),  # the answer judge cannot tell: the baseline
])
def test_with_structured_output_the_policy_decides(judge: str, value: int, reason: Reason) -> None:
    class Answer(BaseModel):
        value: int

    def call(v: int) -> Reply:
        return Reply(None, tool_calls=[ToolCall(id="c1", name="Answer", arguments=json.dumps({"value": v}))])

    teacher = _teacher(judge_pair=PairwiseJudge(is_right=lambda answer: '"value": 42' in answer))
    llm, student, _ = _model({"probe": "plan", "guided": call(42), "baseline": call(41)}, teacher=teacher, judge=judge)
    out = llm.with_structured_output(Answer, include_raw=True).invoke("20+22?")
    assert out["parsed"] == Answer(value=value)
    report = atlas_report(out["raw"])
    assert report is not None and report.reason == reason
    assert sorted(student.roles) == ["baseline", "guided", "probe"]


_B64 = "iVBORw0KGgoAAAANSUhEUg"
_BLOCKS = {
    "openai_image": {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{_B64}"}},
    "standard_image": {"type": "image", "base64": _B64, "mime_type": "image/png"},
    "anthropic_image": {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": _B64}},
    "openai_pdf": {"type": "file", "file": {"filename": "a.pdf", "file_data": f"data:application/pdf;base64,{_B64}"}},
    "standard_pdf": {"type": "file", "base64": _B64, "mime_type": "application/pdf", "filename": "a.pdf"},
    "openai_audio": {"type": "input_audio", "input_audio": {"data": _B64, "format": "wav"}},
}


@pytest.mark.parametrize("block", list(_BLOCKS.values()), ids=list(_BLOCKS))
def test_content_blocks_reach_the_student_whole_and_the_teacher_as_placeholders(block: dict[str, Any]) -> None:
    question = HumanMessage(content=[{"type": "text", "text": "How many legs?"}, block])
    expected = convert_to_openai_messages([question])[0]["content"]  # what LangChain itself makes of it
    llm, student, teacher = _model()
    atlas_report(llm.invoke([question]))
    answered = [c for c in student.calls if classify(c) in ("guided", "baseline")]
    assert len(answered) == 2
    for c in answered:
        (user,) = [m for m in c.messages if m["role"] == "user"]
        assert user["content"] == expected
    teacher_text = teacher.calls[0].messages[-1]["content"]
    assert "How many legs?" in teacher_text and _B64 not in teacher_text
    assert f"[{expected[1]['type']}]" in teacher_text


def test_an_image_in_a_tool_message_reaches_the_student_whole() -> None:
    image = _BLOCKS["openai_image"]
    conversation = [
        HumanMessage("Describe the chart the tool returns."),
        AIMessage("", tool_calls=[{"name": "chart", "args": {}, "id": "c1", "type": "tool_call"}]),
        ToolMessage(content=[{"type": "text", "text": "chart:"}, image], tool_call_id="c1"),
    ]
    expected = convert_to_openai_messages(conversation)
    llm, student, teacher = _model()
    atlas_report(llm.invoke(conversation))
    for c in student.calls:
        if classify(c) in ("guided", "baseline"):
            assert [m for m in c.messages if m["role"] == "tool"] == [expected[2]]
    assert _B64 not in json.dumps(teacher.calls[0].messages)


def test_strict_stream_starts_after_the_decision() -> None:
    llm, _, _ = _model()
    chunks = list(llm.stream("What is 20 + 22?"))
    assert chunks[-1].chunk_position == "last"
    assert all(c.usage_metadata is None for c in chunks[:-1])
    full = _joined(iter(chunks))
    assert full.text == SCRIPT["guided"]
    report = atlas_report(full)
    assert report is not None and report.reason == Reason.AGREEMENT


class _HeldStream(ScriptedChatModel):
    """Yields its first chunk, then waits until the consumer has seen it."""

    seen: Any = None

    def _stream(self, *args: Any, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        for i, chunk in enumerate(super()._stream(*args, **kwargs)):
            yield chunk
            if i == 0 and not self.seen.wait(5):
                raise AssertionError("the consumer never received the first token")


def test_off_policy_streams_tokens_as_they_come() -> None:
    seen = threading.Event()
    student = _HeldStream(backend=ScriptedBackend(SCRIPT), chunk_words=1, seen=seen)
    llm = AtlasChatModel(student=student, teacher=_teacher(), ledger="none", policy="off")
    chunks = []
    for chunk in llm.stream("What is 20 + 22?"):
        chunks.append(chunk)
        seen.set()
    full = _joined(iter(chunks))
    assert full.text == SCRIPT["guided"]
    assert len(chunks) > 3  # word by word, as the student yielded them
    report = atlas_report(full)
    assert report is not None and report.decision == "guided" and report.reason == Reason.POLICY_OFF
    assert full.usage_metadata is not None and full.usage_metadata["total_tokens"] == report.usage.total().total_tokens


async def test_off_policy_astream_falls_back_when_the_teacher_fails() -> None:
    teacher = ScriptedChatModel(backend=ScriptedBackend({"teacher": RuntimeError("teacher down")}))
    llm, student, _ = _model(policy="off", teacher=teacher)
    full = _joined(iter([c async for c in llm.astream("What is 20 + 22?")]))
    report = atlas_report(full)
    assert report is not None and report.decision == "student_only" and report.reason == Reason.TEACHER_ERROR
    assert full.text == SCRIPT["baseline"]


def test_teacher_failure_fails_open() -> None:
    teacher = ScriptedChatModel(backend=ScriptedBackend({"teacher": RuntimeError("boom")}))
    llm, _, _ = _model(teacher=teacher, atlas_settings={"teacher_retries": 1})
    msg = llm.invoke("What is 20 + 22?")
    report = atlas_report(msg)
    assert report is not None and report.reason == Reason.TEACHER_ERROR and msg.content == SCRIPT["baseline"]


def test_session_reuses_the_guidance() -> None:
    llm, student, teacher = _model(session_id="task-1")
    first = atlas_report(llm.invoke("What is 20 + 22?"))
    second = atlas_report(llm.invoke("What is 20 + 22?"))
    assert first is not None and second is not None
    assert not first.guidance_reused and second.guidance_reused
    assert teacher.roles == ["teacher"] and student.roles.count("probe") == 1


def test_a_litellm_teacher_string_is_accepted() -> None:
    llm = AtlasChatModel(student=ScriptedChatModel(), teacher="hosted_vllm/some-teacher", ledger="none")
    assert llm.atlas.settings.teacher_model == "hosted_vllm/some-teacher"


def test_bad_input_gets_langchains_errors() -> None:
    with pytest.raises(ValidationError):
        AtlasChatModel(student=FakeListLLM(responses=["x"]), teacher=_teacher(), ledger="none")
    # A bad setting fails at construction, as pydantic validation (the core's ConfigError inside).
    with pytest.raises(ValidationError, match="unknown policy"):
        AtlasChatModel(student=ScriptedChatModel(), teacher=_teacher(), ledger="none", policy="sometimes")
    llm, _, _ = _model()
    with pytest.raises(ValueError):  # LangChain's own message conversion error
        llm.invoke([("wizard", "hello")])


def test_caller_messages_reach_the_student_unchanged() -> None:
    originals = [SystemMessage("Be brief.", id="s1"), HumanMessage("hi", id="h1", additional_kwargs={"x": 1})]
    dicts = to_openai_messages(originals)
    note = {"role": "system", "content": "A teacher says: check."}
    restored = restore_messages([dicts[0], note, dicts[1]], originals, dicts)
    assert restored[1] is originals[1]  # the very object, ids and extras intact
    assert restored[0].content == "Be brief.\n\nA teacher says: check." and restored[0].id == "s1"
    assert len(restored) == 2


def test_core_import_does_not_import_langchain() -> None:
    code = ("import sys, atlas_middleware; "
            "assert not [m for m in sys.modules if m.startswith(('langchain', 'langgraph'))]")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_extra_names_the_install_command() -> None:
    code = ("import sys; sys.modules['langchain_core'] = None\n"
            "from atlas_middleware.errors import MissingExtraError\n"
            "try:\n    import atlas_middleware.langchain\nexcept MissingExtraError as e:\n"
            "    assert \"atlas-middleware[langchain]\" in str(e), e\nelse:\n    raise SystemExit('no error')")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("mode", ["sync", "async", "stream", "astream"])
async def test_audit_baseline_runs_after_delivery(tmp_path: Path, mode: str) -> None:
    """audit: the sampled baseline runs in the background after the call returns, and must
    still reach the caller's student (the call binding outlives the user's call)."""
    llm, student, _ = _model(policy="audit", ledger=f"sqlite:///{tmp_path / 'ledger.db'}",
                             atlas_settings={"audit_rate": 1.0})
    # In sync, the baseline's thread may reach the backend before the call returns; hold it
    # until after, as a busy machine would, so the test does not depend on thread timing.
    returned = threading.Event()
    hold_role(llm.atlas.backends["student"], "baseline", returned)
    if mode == "sync":
        msg = llm.invoke("What is 20 + 22?")
        returned.set()
        llm.atlas.flush()
    elif mode == "async":
        msg = await llm.ainvoke("What is 20 + 22?")
        await llm.atlas.aflush()
    elif mode == "stream":
        msg = _joined(llm.stream("What is 20 + 22?"))
        returned.set()
        llm.atlas.flush()
    else:
        msg = _joined(iter([c async for c in llm.astream("What is 20 + 22?")]))
        await llm.atlas.aflush()
    delivered = atlas_report(msg)
    assert delivered is not None and delivered.reason == Reason.AUDIT_SAMPLED
    assert msg.text == SCRIPT["guided"]
    (row,) = llm.atlas.ledger.records()
    report = row.report()
    assert report.audit is not None and report.audit.sampled
    assert [e.message for e in report.errors] == []
    assert report.audit.winner is not None and report.usage.baseline.calls == 1
    assert student.roles.count("baseline") == 1
