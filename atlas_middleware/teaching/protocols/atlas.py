"""``atlas``: the input and output format the published ATLAS teachers were trained on.

A model's input format is its interface: ATLAS-8B-Thinking and ATLAS-8B-Instruct learned to
teach from one prompt layout, and answer best when they see it again. This module follows
the public training code closely (read, not copied; the wording of the templates is the
models' interface and is kept):

* ``Arc-Computer/RCL``, ``configs/trainer/reward/adaptive_teaching.yaml``: the four
  templates (student diagnostic probe, teacher adaptive teaching, student with teaching,
  student baseline) and the 50-token probe cap;
* ``Arc-Computer/RCL``, ``trainers/teacher_trainers.py``: how they are filled in
  (``question`` and ``approach``) and that the teacher prompt is plain text with no system
  prompt;
* ``Arc-Computer/RCL``, ``trainers/teacher_rewards.py`` and ``Arc-Computer/ATLAS``,
  ``trainers/extraction_utils.py``: the teaching is the ``<teaching>`` block when there is
  one, else the whole reply;
* ``Arc-Computer/ATLAS``, ``trainers/prompt_adapter.py`` and ``configs/optimize/default.yaml``:
  the teacher reached as one user message through LiteLLM, a 500-token probe in the
  optimiser.

What this protocol does beyond the training code, because a production request is not a
single math question:

* the question is the user's message (with the caller's system prompt above it, so the
  teacher knows the rules the answer must follow), or a transcript of a longer
  conversation, with the offered tools listed; user text is defused so it cannot forge
  our tags;
* ATLAS-8B-Thinking is Qwen3-8B, which reasons in ``<think>`` first; that block, or the
  provider's separate reasoning field, is private (``parse.py``);
* the guided prompt is the training one appended to the user's last message; where tools
  or a response format need the caller's message untouched it goes in as a system
  message instead (``base.py``).

No capability level is emitted in training; a level the teacher states in its reasoning
is read, and the teacher's own brevity is its adaptivity.
"""

from __future__ import annotations

from typing import Any

from .. import prompts
from .base import TeacherProtocol

PROBE_INSTRUCTION = (
    "Before solving, briefly describe:\n"
    "1. What type of problem this is\n"
    "2. The key concepts or steps needed\n"
    "3. Any potential challenges you see\n\n"
    "Your initial approach (be concise):"
)

TEACHER_INTRO = (
    "You are an adaptive teaching assistant. Your role is to help the student solve problems "
    "by providing targeted guidance based on their current understanding."
)
TEACHER_TEMPLATE = (
    TEACHER_INTRO + "\n\n"
    "Question: {question}\n\n"
    "The student's initial approach:\n{approach}\n\n"
    "Based on the student's approach, provide adaptive teaching that:\n"
    "1. Identifies any gaps or misconceptions\n"
    "2. Provides targeted hints or explanations\n"
    "3. Guides them toward the correct solution method\n"
    "4. Is concise and focused on what they specifically need\n\n"
    "Your adaptive teaching:"
)


def question_text(messages: list[dict[str, Any]], params: dict[str, Any], max_chars: int) -> str:
    """The "question" of the training template for a chat request, defused."""
    users = [m for m in messages if m.get("role") == "user"]
    turns = [m for m in messages if m.get("role") not in ("system", "developer")]
    if len(users) == 1 and turns == users:
        system = "\n\n".join(prompts.content_text(m.get("content")) for m in messages
                             if m.get("role") in ("system", "developer"))
        text = prompts.content_text(users[0].get("content"))
        text = f"{system}\n\n{text}" if system else text
        if len(text) > max_chars:
            text = "[... cut ...]\n" + text[-max_chars:]
        text = prompts.defuse(text)
        tools = prompts.tools_summary(params)
        return text + ("\n\nTools the student may call:\n" + prompts.defuse(tools) if tools else "")
    return prompts.task_text(messages, params, max_chars)


class AtlasProtocol(TeacherProtocol):
    name = "atlas"
    untagged = "guidance"
    default_placement = "user"
    # ATLAS-8B-Thinking writes a Qwen3 <think> block of often a thousand tokens or more
    # before its teaching; at vLLM's single-stream speed on one GPU that is tens of seconds.
    teacher_max_tokens = 2048
    teacher_timeout = 60.0

    def probe_messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        last = messages[-1] if messages else {}
        if last.get("role") == "user" and isinstance(last.get("content"), str):
            # The training prompt: the question and the request for an approach, one message.
            probe = {**last, "content": f"Question: {last['content']}\n\n{PROBE_INSTRUCTION}"}
            return [*messages[:-1], probe]
        return [*messages, {"role": "user", "content": PROBE_INSTRUCTION}]

    def teacher_messages(
        self, messages: list[dict[str, Any]], params: dict[str, Any], probe: str, max_chars: int
    ) -> list[dict[str, Any]]:
        content = TEACHER_TEMPLATE.format(question=question_text(messages, params, max_chars),
                                          approach=prompts.defuse(probe.strip()))
        return [{"role": "user", "content": content}]
