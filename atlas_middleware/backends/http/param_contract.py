"""The lean path's parameter contract: send the body LiteLLM would send, learnt from LiteLLM.

What ``litellm.completion`` sends depends on the model: ``max_tokens`` becomes
``max_completion_tokens`` for o-series and gpt-5 models, ``user`` is dropped for servers
outside OpenAI's catalogue, ``drop_params`` drops what a model does not take, a vLLM server
gets tool schemas without ``strict``, an o-series model gets its system message as a user
message, ``extra_body`` is merged into the body, and so on, release after release. Copying
those rules would drift; so the lean path asks LiteLLM itself, once per model and parameter
set, and then replays the answer.

How a body is learnt (``capture``): LiteLLM's own ``completion`` runs (the undecorated
function, so no callbacks, caching or retries) with a logging object that stops it at its
pre-call log, where it holds the exact request body, before any connection is opened
(``compat.capture_request_body``: the LiteLLM internals this relies on). The
openai SDK merges ``extra_body`` into the JSON afterwards; that step is done here.

What is learnt per key (``Plan``): the key is the model, ``api_base``, LiteLLM's global
switches, every parameter's name, and the value of every parameter that may change the
mapping (``temperature`` decides whether an o-series model takes it, ``tools`` are
rewritten for vLLM, ``reasoning_effort`` gates sampling parameters, ...). The values of the
few parameters LiteLLM only forwards or renames (``max_tokens``, ``seed``, ``user``, ...)
are not part of the key: they are replaced by unique sentinels while learning, so the plan
records which body field each lands in (or that it is dropped), and every other field is a
constant of the key. A second capture, with other sentinels and without the dropped ones,
must give the same constants, or the value mattered after all. Messages are checked one
shape at a time (roles, keys, value types, part types; not their text): a shape LiteLLM
sends unchanged, or with its null fields removed, is replayed. Any other shape, a
parameter the contract does not know, a value it cannot key, a body that is not a
chat-completions body, or a request LiteLLM refuses means "not sure": the caller sends that
request through LiteLLM, which then does (or refuses) it itself.

Learning costs about a LiteLLM call's CPU (milliseconds; the very first one also imports
LiteLLM's lazy modules) once per key, and once per new message shape; replaying costs a
dictionary look-up and one pass over the messages.
"""

from __future__ import annotations

import copy
import json
import threading
import uuid
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..compat import CaptureUnavailable, capture_request_body
from ..litellm import import_litellm

# Parameters the lean path may serve; anything else (``functions``, ``stream``, LiteLLM's
# own options such as ``num_retries`` or ``metadata``) goes through LiteLLM.
BODY_PARAMS = frozenset(
    {
        "temperature", "top_p", "n", "stop", "max_tokens", "max_completion_tokens",
        "presence_penalty", "frequency_penalty", "logit_bias", "user", "tools", "tool_choice",
        "parallel_tool_calls", "response_format", "seed", "logprobs", "top_logprobs",
        "reasoning_effort", "service_tier", "verbosity", "safety_identifier", "prompt_cache_key",
        "store", "extra_body", "drop_params",
    }
)
# Parameters of the transport (URL, key, deadline, headers): never in the body.
TRANSPORT_PARAMS = frozenset({"api_base", "base_url", "api_key", "timeout", "extra_headers", "max_retries"})
_NOT_IN_KEY = frozenset({"api_key", "timeout", "extra_headers"})
# Parameters whose value LiteLLM forwards or renames but never looks at: keyed by name and
# type only, so a new seed or end-user id costs no new capture.
BY_NAME = frozenset({"max_tokens", "max_completion_tokens", "seed", "user", "safety_identifier", "prompt_cache_key"})
# Content part and tool call types LiteLLM passes through without looking inside (a
# ``file`` part may be fetched or turned into a video URL, depending on its text).
PLAIN_TYPES = frozenset({"text", "image_url", "function"})
_SDK_OPTIONS = ("extra_headers", "extra_query")
MAX_SHAPES = 1024  # message shapes learnt per plan

_STR = "<str>"
_AS_IS, _CLEAN, _UNSURE = "as_is", "clean", "unsure"
_RANK = {_AS_IS: 0, _CLEAN: 1, _UNSURE: 2}


class NotSure(Exception):
    """LiteLLM's body could not be learnt for this request: send it through LiteLLM."""


@dataclass
class Plan:
    """What LiteLLM sends for one key: constant fields, and where by-name values go."""

    constants: dict[str, Any]
    fields: tuple[tuple[str, str], ...]
    sample_model: str
    sample_params: dict[str, Any]
    shapes: dict[Hashable, str] = field(default_factory=dict)


Capture = Callable[[str, list[dict[str, Any]], dict[str, Any]], dict[str, Any]]


class ParamContract:
    """Bodies for the lean path, equal to LiteLLM's, learnt once per key and replayed."""

    def __init__(self, capture: Capture | None = None, limit: int = 4096) -> None:
        self._capture = capture or capture_litellm_body
        self._plans: dict[Hashable, Plan | None] = {}
        self._limit = limit
        self._lock = threading.Lock()

    def body(self, model: str, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The JSON body LiteLLM would send, or None when that is not certain."""
        key = _key(model, params)
        if key is None:
            return None
        try:
            plan = self._plans[key]
        except KeyError:
            plan = self._learn(key, model, messages, params)
        if plan is None:
            return None
        sent = self._messages(plan, messages)
        if sent is None:
            return None
        body = {**plan.constants, "messages": sent}
        for name, target in plan.fields:
            body[target] = params[name]
        return body

    # -- learning (once per key) -------------------------------------------------------

    def _learn(self, key: Hashable, model: str, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> Plan | None:
        plan: Plan | None
        try:
            plan = self._plan(model, messages, params)
        except Exception:  # NotSure, or LiteLLM failing in a way it will report itself
            plan = None
        with self._lock:
            while len(self._plans) >= self._limit:
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = plan
        return plan

    def _plan(self, model: str, messages: list[dict[str, Any]], params: Mapping[str, Any]) -> Plan:
        params = {k: v for k, v in params.items() if k != "timeout"}
        named = sorted(k for k, v in params.items() if _by_name(k, v))
        # First ask with sentinels in place of the by-name values: where each lands.
        first = {**params, **{k: _sentinel(params[k], i) for i, k in enumerate(named)}}
        sent = self._capture(model, messages, first)
        out_messages = sent.pop("messages", None)
        if not isinstance(out_messages, list) or "model" not in sent:
            raise NotSure("LiteLLM would not send a chat-completions body")
        fields = _landing(sent, {k: first[k] for k in named})
        if named:
            # Then ask again with other sentinels, and without the values that landed
            # nowhere: the rest of the body must not move (a value LiteLLM clamps, copies or
            # drops only sometimes is not a by-name value, and this plan would be wrong).
            landed = [k for k, _ in fields]
            second = {k: v for k, v in params.items() if k not in named or k in landed}
            second.update({k: _sentinel(params[k], i + len(named)) for i, k in enumerate(landed)})
            again = self._capture(model, messages, second)
            again.pop("messages", None)
            if _landing(again, {k: second[k] for k in landed}) != fields or again != sent:
                raise NotSure("LiteLLM's body depends on a by-name value")
        plan = Plan(constants=sent, fields=fields, sample_model=model, sample_params=copy.deepcopy(first))
        self._judge(plan, messages, out_messages)
        return plan

    def _judge(self, plan: Plan, given: list[dict[str, Any]], sent: list[Any]) -> None:
        """Record, per message shape, whether LiteLLM sent it as given, cleaned, or changed."""
        if len(sent) != len(given):
            # Messages added, removed or merged: learn each shape on its own.
            for message in given:
                shape = _shape(message)
                if shape not in plan.shapes:
                    self._learn_shape(plan, message, shape)
            return
        for message, out in zip(given, sent, strict=True):
            shape = _shape(message)
            verdict = _verdict(message, out)
            if _RANK[verdict] > _RANK[plan.shapes.get(shape, _AS_IS)]:
                plan.shapes[shape] = verdict
            else:
                plan.shapes.setdefault(shape, verdict)

    def _learn_shape(self, plan: Plan, message: dict[str, Any], shape: Hashable) -> str:
        try:
            sent = self._capture(plan.sample_model, [message], dict(plan.sample_params))
            out = sent.get("messages")
            verdict = _verdict(message, out[0]) if isinstance(out, list) and len(out) == 1 else _UNSURE
        except Exception:  # as in _learn: not sure
            verdict = _UNSURE
        plan.shapes[shape] = verdict
        return verdict

    # -- replaying (every call) --------------------------------------------------------

    def _messages(self, plan: Plan, messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        cleaned: list[dict[str, Any]] | None = None
        for i, message in enumerate(messages):
            shape = _shape(message)
            verdict = plan.shapes.get(shape)
            if verdict is None:
                if len(plan.shapes) >= MAX_SHAPES:
                    return None  # a client inventing shapes gets LiteLLM, not a capture each
                verdict = self._learn_shape(plan, message, shape)
            if verdict == _AS_IS:
                continue
            if verdict != _CLEAN:
                return None
            if cleaned is None:
                cleaned = list(messages)
            cleaned[i] = _without_nulls(message)
        return messages if cleaned is None else cleaned


def _key(model: str, params: Mapping[str, Any]) -> Hashable | None:
    """What decides LiteLLM's body apart from by-name values and message text; None when a
    parameter is unknown or its value cannot be keyed."""
    items: list[Hashable] = []
    for name in sorted(params):
        if name in _NOT_IN_KEY:
            continue
        if name not in BODY_PARAMS and name not in TRANSPORT_PARAMS:
            return None
        value = params[name]
        cls = type(value)
        if _by_name(name, value):
            items.append((name, cls))
        elif value is None or cls in (str, int, float, bool):
            items.append((name, cls, value))
        else:
            try:
                items.append((name, json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False)))
            except (TypeError, ValueError):
                return None  # a pydantic class as response_format, a NaN, ...: LiteLLM's job
    return model, tuple(items), _switches()


def _switches() -> tuple[Any, ...]:
    """LiteLLM's global settings that change the body (read per call: users set them late)."""
    lm = import_litellm()
    return (lm.drop_params, lm.modify_params, getattr(lm, "openai_system_messages_first", None),
            getattr(lm, "disable_stop_sequence_limit", None), bool(lm.model_alias_map))


def _by_name(name: str, value: Any) -> bool:
    return name in BY_NAME and type(value) in (int, float, str)


def _sentinel(value: Any, i: int) -> Any:
    if isinstance(value, str):
        return f"atlas-sentinel-{i}-{uuid.uuid4().hex}"
    return type(value)(982_451_653 + 7_919 * i)  # large, distinct, never a real default


def _contains(obj: Any, marks: list[Any]) -> bool:
    if not marks:
        return False
    if isinstance(obj, dict):
        return any(_contains(v, marks) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_contains(v, marks) for v in obj)
    return any(type(obj) is type(m) and obj == m for m in marks)


def _landing(body: dict[str, Any], marks: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """Which body field each sentinel landed in (removed from ``body``); a value found in
    several fields, or inside one, cannot be replayed."""
    fields = []
    for name, mark in marks.items():
        targets = [k for k, v in body.items() if type(v) is type(mark) and v == mark]
        if len(targets) > 1:
            raise NotSure(f"{name} lands in several fields")
        if targets:
            fields.append((name, targets[0]))
            del body[targets[0]]
    if _contains(body, list(marks.values())):
        raise NotSure("a by-name value is used inside another field")
    return tuple(fields)


def _shape(message: dict[str, Any]) -> Hashable:
    """A message's structure: its keys, value types, role and part types, not its text.

    Flat for the common message (string values), recursive only below it: this runs on
    every message of every lean call.
    """
    out: list[Any] = []
    for key, value in message.items():
        cls = value.__class__
        if cls is str:
            out.append((key, value) if key == "role" else key)
        elif value is None:
            out.append((key, None))
        else:
            out.append((key, _inner(value)))
    return tuple(out)


def _inner(value: Any) -> Hashable:
    cls = value.__class__
    if cls is dict:
        return tuple((k, v) if k == "type" and v.__class__ is str else (k, _inner(v)) for k, v in value.items())
    if cls is list:
        return frozenset([_inner(v) for v in value])
    if cls is str:
        return _STR
    shape: Hashable = cls
    return shape


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        if "type" in value and value["type"] not in PLAIN_TYPES:
            return False
        return all(_plain(v) for v in value.values())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return True


def _without_nulls(message: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in message.items() if v is not None}


def _verdict(given: dict[str, Any], sent: Any) -> str:
    if not _plain(given):
        return _UNSURE
    if sent == given:
        return _AS_IS
    if sent == _without_nulls(given):
        return _CLEAN
    return _UNSURE


# -- asking LiteLLM -------------------------------------------------------------------------

def capture_litellm_body(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
    """The JSON body ``litellm.completion(model, messages, **params)`` would send.

    Raises ``NotSure`` when LiteLLM refuses the request (an unsupported parameter without
    ``drop_params``, say) or would not send it as a chat-completions body.
    """
    litellm = import_litellm()
    kwargs = copy.deepcopy({k: v for k, v in params.items() if k != "timeout"})
    kwargs["api_key"] = "atlas-capture"  # the body never depends on the key: keep it out
    try:
        data = capture_request_body(litellm, model, copy.deepcopy(messages), kwargs,
                                    call_id=f"atlas-capture-{uuid.uuid4().hex}")
    except CaptureUnavailable as exc:
        raise NotSure(str(exc)) from None
    except Exception as exc:  # LiteLLM's own refusal (an unsupported parameter, ...)
        raise NotSure(f"LiteLLM refused the request: {type(exc).__name__}") from exc
    if data is None:
        raise NotSure("LiteLLM answered without a request")
    if not isinstance(data, dict):
        raise NotSure("LiteLLM's request body is not a JSON object")
    body = dict(data)
    for option in _SDK_OPTIONS:
        body.pop(option, None)
    extra = body.pop("extra_body", None)
    if isinstance(extra, dict):
        body.update(extra)  # what the openai SDK does with extra_body
    return copy.deepcopy(body)
