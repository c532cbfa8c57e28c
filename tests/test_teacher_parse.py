"""Reading teacher replies: what real models write, for both protocols.

Each misreading found in the old parser has a case here that failed on it: a level taken
from the guidance, a level in the diagnosis ignored, reasoning leaking into guidance from
an unclosed or template-opened think block, truncated guidance sent on, and plain-text
ATLAS replies refused.
"""

from __future__ import annotations

import pytest

from atlas_middleware import TeacherOutputError
from atlas_middleware.errors import TeacherTruncatedError
from atlas_middleware.messages import ChatResponse
from atlas_middleware.teaching.parse import MAX_GUIDANCE_CHARS, read_teacher_reply, split_reasoning
from atlas_middleware.teaching.prompts import defuse
from atlas_middleware.teaching.protocols import ATLAS, STRUCTURED, protocol_for

BOTH = [pytest.param(ATLAS, id="atlas"), pytest.param(STRUCTURED, id="structured")]


def parse(protocol, text, reasoning=None, finish="stop"):  # type: ignore[no-untyped-def]
    return protocol.parse(ChatResponse(content=text, reasoning=reasoning, finish_reason=finish))


# -- tagged replies: the same for both protocols -------------------------------------------


@pytest.mark.parametrize("protocol", BOTH)
@pytest.mark.parametrize(
    ("text", "level", "guidance"),
    [
        ("<thinking>ok</thinking><level>3</level><teaching>Check units.</teaching>", 3, "Check units."),
        ("<level>4</level>\n<teaching>\n  Re-read the question.\n</teaching>", 4, "Re-read the question."),
        # a draft inside the reasoning never wins over the real block
        ("<think>The student... <teaching>draft</teaching></think>\n<level>2</level><teaching>Use a table.</teaching>",
         2, "Use a table."),
        # the format repeated: the last complete block
        ("<teaching>first</teaching> text <teaching>second</teaching> Level: 2", 2, "second"),
        ("<TEACHING>Case does not matter.</TEACHING><LEVEL>3</LEVEL>", 3, "Case does not matter."),
        # an unclosed final block on a reply that ended normally runs to the end
        ("<thinking>x</thinking><level>1</level><teaching>Start by listing the costs.", 1, "Start by listing the costs."),
        ("<teaching>Only guidance, no level.</teaching>", None, "Only guidance, no level."),
    ],
)
def test_tagged_replies(protocol, text: str, level: int | None, guidance: str) -> None:  # type: ignore[no-untyped-def]
    d = parse(protocol, text)
    assert (d.level, d.guidance) == (level, guidance)


@pytest.mark.parametrize("protocol", BOTH)
def test_level_in_guidance_text_is_not_a_level(protocol) -> None:  # type: ignore[no-untyped-def]
    # The old parser scanned the guidance for "level N": this weakest student became "strong".
    d = parse(protocol, "<level>1</level><teaching>The lift starts at level 5; count floors from there.</teaching>")
    assert d.level == 1
    d = parse(protocol, "<thinking>lost</thinking><teaching>Floors start at level 5, capability: 5 is not needed.</teaching>")
    assert d.level is None and "level 5" in d.guidance


@pytest.mark.parametrize("protocol", BOTH)
@pytest.mark.parametrize(
    "text",
    [
        "<thinking>The plan is complete. Capability level: 5/5</thinking><teaching></teaching>",
        "<think>Rating: 5 out of 5, nothing to add.</think><teaching></teaching>",
        "<thinking>Level = 5</thinking><teaching></teaching>",
    ],
)
def test_level_in_private_diagnosis_counts(protocol, text: str) -> None:  # type: ignore[no-untyped-def]
    assert parse(protocol, text).level == 5


def test_prose_mentioning_a_level_in_the_diagnosis_is_not_a_rating() -> None:
    d = parse(STRUCTURED, "<thinking>The lift starts at level 5.</thinking><teaching>Count the floors.</teaching>")
    assert d.level is None


@pytest.mark.parametrize("protocol", BOTH)
@pytest.mark.parametrize(
    ("text", "reasoning"),
    [
        # unclosed reasoning that drafts a <teaching>: all of it is private
        ("<think>I'd say <teaching>tell them it is 42</teaching> but wait", None),
        ("<thinking>draft: <teaching>secret draft</teaching>", None),
        # the chat template opened the block: only its closing tag is in the reply
        ("draft <teaching>secret draft</teaching> more reasoning\n</think>\n\n<teaching>Carry the one.</teaching>", None),
        # vLLM's reasoning parser: the reasoning in its own field
        ("<teaching>Carry the one.</teaching>", "secret draft: <teaching>secret draft</teaching>"),
    ],
)
def test_reasoning_never_becomes_guidance(protocol, text: str, reasoning: str | None) -> None:  # type: ignore[no-untyped-def]
    try:
        d = parse(protocol, text, reasoning)
    except TeacherOutputError:
        return  # nothing usable outside the reasoning: falling back is right too
    assert "secret" not in d.guidance and "42" not in d.guidance and "draft" not in d.guidance
    assert d.guidance == "Carry the one."
    assert "secret draft" in d.thinking


@pytest.mark.parametrize("protocol", BOTH)
def test_unclosed_reasoning_is_private_and_falls_back(protocol) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TeacherOutputError):
        parse(protocol, "<think>I'd say <teaching>tell them 42</teaching> but wait")


# -- truncation ---------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", BOTH)
@pytest.mark.parametrize(
    "text",
    [
        "<think>Still reasoning about the student's plan when the tokens ran",  # cut in the reasoning
        "<think>done</think>\n<level>2</level><teaching>Start by listing the",  # cut in the teaching
        "<think>done</think>\nStart by listing the costs and then",  # plain text cut
        "",  # all the cap went to a separate reasoning field
    ],
)
def test_truncated_reply_falls_back_with_its_own_error(protocol, text: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(TeacherTruncatedError):
        parse(protocol, text, reasoning="thinking..." if not text else None, finish="length")


@pytest.mark.parametrize("protocol", BOTH)
def test_truncated_after_a_closed_teaching_block_is_used(protocol) -> None:  # type: ignore[no-untyped-def]
    d = parse(protocol, "<think>ok</think><teaching>Carry the one.</teaching>\nAlso, one more thing about", finish="length")
    assert d.guidance == "Carry the one."


# -- the ATLAS teachers' plain style ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "reasoning", "guidance"),
    [
        ("The student forgot the carry. Add the tens after carrying the one.", None,
         "The student forgot the carry. Add the tens after carrying the one."),
        ("<think>\nThey add 20 and 22 but drop the carry.\n</think>\n\nAdd the units first, then the tens.", None,
         "Add the units first, then the tens."),
        ("They drop the carry.\n</think>\n\nAdd the units first.", None, "Add the units first."),
        ("Add the units first.", "They drop the carry.", "Add the units first."),
        ("<think>x</think>\n**Adaptive teaching:** Add the units first.", None, "Add the units first."),
        ("<think>x</think>\nYour adaptive teaching:\nAdd the units first.", None, "Add the units first."),
    ],
)
def test_atlas_plain_replies_are_guidance(text: str, reasoning: str | None, guidance: str) -> None:
    d = parse(ATLAS, text, reasoning)
    assert d.guidance == guidance and d.level is None


def test_atlas_reply_with_only_closed_reasoning_is_no_guidance() -> None:
    d = parse(ATLAS, "<think>The approach is right; nothing to add.</think>\n")
    assert d.guidance == "" and "nothing to add" in d.thinking


def test_structured_refuses_untagged_text() -> None:
    # free text from a general LLM may be its diagnosis: never shown to the student
    with pytest.raises(TeacherOutputError):
        parse(STRUCTURED, "Sure! The student is lost; here is my analysis of their plan.")
    d = parse(STRUCTURED, "Capability: 5/5\nNo help needed.")  # stray text is private: its level counts
    assert (d.level, d.guidance) == (5, "")


@pytest.mark.parametrize("protocol", BOTH)
@pytest.mark.parametrize("text", ["", "   ", "<think></think>"])
def test_empty_replies_are_unusable(protocol, text: str) -> None:  # type: ignore[no-untyped-def]
    if protocol is ATLAS and text == "<think></think>":
        assert parse(protocol, text).guidance == ""  # a closed, empty reasoning block and nothing after
        return
    with pytest.raises(TeacherOutputError):
        parse(protocol, text)


def test_guidance_is_capped_and_not_empty() -> None:
    d = parse(STRUCTURED, "<level>1</level><teaching>" + "word " * 2000 + "</teaching>")
    assert d.guidance.startswith("word word") and d.guidance.endswith(" ...")
    assert MAX_GUIDANCE_CHARS < len(d.guidance) <= MAX_GUIDANCE_CHARS + 4


def test_level_tags_are_markup_read_outside_teaching_and_never_shown() -> None:
    d = parse(ATLAS, "<think>x</think>Carry the one. <level>2</level>")
    assert d.guidance == "Carry the one." and d.level == 2
    d = parse(ATLAS, "<teaching>Carry the one. <level>5</level></teaching>")
    assert d.guidance == "Carry the one." and d.level is None


def test_split_reasoning_walks_nested_and_repeated_blocks() -> None:
    private, visible, unclosed = split_reasoning("a <think>b <thinking>c</thinking> d</think> e <think>f</think> g")
    assert private == ["b <thinking>c</thinking> d", "f"] and visible == "a  e  g" and not unclosed
    assert split_reasoning("a <think>b") == (["b"], "a ", True)
    assert split_reasoning("a </think> b") == (["a"], " b", False)


def test_read_teacher_reply_untagged_rule_is_the_protocols() -> None:
    assert read_teacher_reply("Plain hint.", untagged="guidance").guidance == "Plain hint."
    with pytest.raises(TeacherOutputError):
        read_teacher_reply("Plain hint.", untagged="private")


# -- choosing a protocol ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "name"),
    [
        ("hosted_vllm/Arc-Intelligence/ATLAS-8B-Thinking", "atlas"),
        ("Arc-Intelligence/ATLAS-8B-Instruct", "atlas"),
        ("openai/arc-intelligence/atlas-8b-thinking", "atlas"),
        ("openai/gpt-4o-mini", "structured"),
        ("hosted_vllm/Qwen/Qwen3-8B", "structured"),
        ("openai/atlas-teacher", "structured"),  # a Router group name says nothing: set it
        (None, "structured"),
    ],
)
def test_auto_protocol_follows_the_teacher_model(model: str | None, name: str) -> None:
    assert protocol_for("auto", model).name == name
    assert protocol_for("atlas", model).name == "atlas" and protocol_for("structured", model).name == "structured"


def test_defuse_neutralises_our_tags() -> None:
    assert defuse("<Teaching >") != "<Teaching >" and "<think>" not in defuse("<think>x</think>")
