"""Typed requests and responses: the only shapes the core ever sees.

Adapters (LiteLLM, LangChain, the proxy) convert their own objects to these at the
boundary. A request keeps every OpenAI parameter it was given in ``params`` untouched, so
tools, response formats and provider options pass through the teaching loop unchanged.

What is *about* a request rather than *in* it rides beside it in ``ChatRequest.context``
(a ``CallContext``, like httpx's ``Request.extensions``): the call's role in the teaching
loop, the policy it runs under, an adapter's bindings. No backend puts it on the wire and
the task family never reads it, so a backend, an adapter or a test double knows which call
it serves without working it out from the prompts' wording.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .errors import InvalidRequestError
from .usage import ZERO_USAGE, Role, Usage

VALID_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
# The content part types LiteLLM accepts in a user message (its ``ValidUserMessageContentTypes``,
# 1.108; a test keeps the two equal). LiteLLM rejects any other type in every call, with a 500
# through its proxy; here it is the caller's mistake, named before any call is made.
USER_PART_TYPES = frozenset({"text", "image_url", "input_audio", "audio_url", "document", "guarded_text",
                             "grounding_source", "query", "video_url", "file"})


LARGE_REQUEST_CHARS = 262_144
"""A request with more characters of text than this is *large*: the async path reads and
builds its texts (the fingerprint, the prompts, the body it sends, a token count) in worker
threads, not on the event loop; below it a thread hop costs more than the work. Every such
pass is linear, and a thread frees the loop of the Python-level work and of what releases
the GIL (tiktoken's counting, ~60 ms a MB); a single C call that holds the GIL (encoding
the body's JSON, ~6 ns a character) still pauses the loop for as long as it runs."""


def text_chars(messages: Any) -> int:
    """The characters of text a message list carries: string contents, the strings of its
    content parts (one level into them: an image's data URL counts) and tool-call arguments.
    0 for what is not a list. Counts lengths only, so it costs the same for any size."""
    if not isinstance(messages, list):
        return 0
    total = 0
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        content = msg.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            total += sum(_strings_chars(part) for part in content)
        calls = msg.get("tool_calls")
        if isinstance(calls, list):
            total += sum(_strings_chars(c.get("function")) for c in calls if isinstance(c, dict))
    return total


def _strings_chars(part: Any) -> int:
    if not isinstance(part, dict):
        return 0
    total = 0
    for value in part.values():
        if isinstance(value, str):
            total += len(value)
        elif isinstance(value, dict):
            total += sum(len(v) for v in value.values() if isinstance(v, str))
    return total


def is_large(messages: Any) -> bool:
    """Whether ``messages`` make a large request (``LARGE_REQUEST_CHARS``)."""
    return text_chars(messages) > LARGE_REQUEST_CHARS


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Check the OpenAI message list shape; raise ``InvalidRequestError`` with the reason.

    Only what every provider rejects is rejected here, so nothing valid is refused.
    """
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages must be a non-empty list of message dicts")
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise InvalidRequestError(f"messages[{i}] must be a dict, got {type(msg).__name__}")
        role = msg.get("role")
        if role not in VALID_ROLES:
            raise InvalidRequestError(
                f"messages[{i}].role must be one of {sorted(VALID_ROLES)}, got {role!r}"
            )
        content = msg.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise InvalidRequestError(
                f"messages[{i}].content must be a string, a list of parts or null"
            )
        if content is None and role in ("user", "system", "developer") :
            raise InvalidRequestError(f"messages[{i}] ({role}) has no content")
    validate_user_parts(messages)
    return messages


def validate_user_parts(messages: list[Any]) -> None:
    """Refuse exactly what LiteLLM refuses in every call: a user content part of an unknown type.

    Separate from ``validate_messages`` so that the proxy can apply it to the models it
    does not teach too (LiteLLM answers them 500 for it).
    """
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") != "user" or not isinstance(msg.get("content"), list):
            continue
        for j, part in enumerate(msg["content"]):
            if isinstance(part, dict) and part.get("type") not in USER_PART_TYPES:
                raise InvalidRequestError(f"messages[{i}].content[{j}].type must be one of "
                                          f"{sorted(USER_PART_TYPES)}, got {part.get('type')!r}")


Judging = Literal["pairwise", "score"]


@dataclass(frozen=True, slots=True)
class CallContext:
    """What a request is for, beside it and never in it: not sent, not fingerprinted.

    The flow sets ``role`` (and ``judging``) on every request it makes; a request a caller
    hands the core has none. Requests derived from one (``replace``, ``with_params``) keep
    its context, so an adapter's ``bindings`` reach the probe, guided and baseline calls.
    """

    role: Role | None = None
    """The call's part in the teaching loop (the usage accounting's names); None outside the loop."""
    judging: Judging | None = None
    """A judge's call: a pairwise comparison or a grade of one answer."""
    policy: str | None = None
    """The policy this user call runs under (under ``adaptive``, its family's mode)."""
    bindings: Mapping[str, Any] = field(default_factory=dict)
    """An adapter's own objects for this user call, by adapter (``"langchain"``: its ``CallBinding``)."""

    def replace(self, **changes: Any) -> CallContext:
        return dataclasses.replace(self, **changes)


NO_CONTEXT = CallContext()


class ChatRequest(BaseModel):
    """One chat-completion request: model, messages and every other parameter as given,
    and beside them its ``context`` (see the module docstring)."""

    model_config = ConfigDict(defer_build=True, frozen=True, arbitrary_types_allowed=True)

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any] = Field(default_factory=dict)
    # A factory, not ``default=``: pydantic deep-copies an unhashable default for every
    # request (5 µs each, several per taught call; bench/overhead.py).
    context: CallContext = Field(default_factory=lambda: NO_CONTEXT, exclude=True, repr=False)

    def replace(self, **changes: Any) -> ChatRequest:
        return self.model_copy(update=changes)

    def in_context(self, **changes: Any) -> ChatRequest:
        """This request with its context changed (``role=...``, ``policy=...``)."""
        return self.model_copy(update={"context": self.context.replace(**changes)})

    def with_params(self, drop: frozenset[str] = frozenset(), **set_: Any) -> ChatRequest:
        params = {k: v for k, v in self.params.items() if k not in drop}
        params.update(set_)
        return self.model_copy(update={"params": params})


class ToolCall(BaseModel):
    model_config = ConfigDict(defer_build=True, frozen=True)

    id: str | None = None
    name: str
    arguments: str = "{}"

    def parsed_arguments(self) -> Any:
        """The arguments as JSON, or raise ``ValueError`` when they are not valid JSON."""
        return json.loads(self.arguments or "{}")


class ChatResponse(BaseModel):
    """The parts of a provider's response the teaching loop reasons about.

    ``raw`` keeps the provider's own object (a ``litellm.ModelResponse``, ...) so that
    the delivered answer reaches the user exactly as the provider shaped it.
    """

    model_config = ConfigDict(defer_build=True, arbitrary_types_allowed=True)

    content: str | None = None
    tool_calls: list[ToolCall] = Field(default_factory=list)
    finish_reason: str | None = None
    reasoning: str | None = None
    """The provider's separate reasoning text (``reasoning_content`` of vLLM's reasoning
    parsers, LiteLLM and DeepSeek; ``reasoning`` of newer vLLM and OpenRouter), if any.
    Never the answer: ``content`` alone is what the loop compares and judges, and the
    delivered response keeps this field beside it, as the provider returned it."""
    usage: Usage = ZERO_USAGE
    model: str | None = None
    raw: Any = Field(default=None, exclude=True, repr=False)

    @property
    def text(self) -> str:
        return self.content or ""

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    def to_openai(self) -> CompletionResponse:
        """An OpenAI-shaped response, for backends that have no provider object of their own."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning is not None:  # where LiteLLM and vLLM put it
            message["reasoning_content"] = self.reasoning
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": tc.id or f"call_{uuid.uuid4().hex[:24]}",
                    "type": "function",
                    "function": {"name": tc.name, "arguments": tc.arguments},
                }
                for tc in self.tool_calls
            ]
        return CompletionResponse(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=self.model or "",
            choices=[
                Choice(index=0, message=_Message(**message), finish_reason=self.finish_reason or "stop")
            ],
            usage=self.usage.openai_usage(),
        )


class _Message(BaseModel):
    model_config = ConfigDict(defer_build=True, extra="allow")

    role: str = "assistant"
    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class Choice(BaseModel):
    model_config = ConfigDict(defer_build=True)

    index: int = 0
    message: _Message
    finish_reason: str | None = "stop"


class CompletionResponse(BaseModel):
    """OpenAI ``chat.completion`` shape, with the call's report under ``atlas``."""

    model_config = ConfigDict(defer_build=True, extra="allow")

    id: str
    object: str = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: dict[str, Any]
    atlas: Any = None
