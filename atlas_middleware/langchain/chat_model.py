"""``AtlasChatModel``: any LangChain chat model, taught by a teacher, as a chat model.

The wrapper holds no teaching logic: each call becomes one ``Atlas.completion`` (or
``acompletion``) whose student backend is a ``LangChainBackend`` bound to this call, so
the probe, guided and baseline requests run the wrapped ``student`` with the caller's own
messages, tools and keywords, and the core's policy decides what is delivered.

Usage has one owner, this wrapper: the inner calls (probe, teacher, guided, baseline,
judge) run out of sight of the caller's callbacks, and the delivered ``AIMessage`` carries
their sum in ``usage_metadata``, so ``get_usage_metadata_callback()`` and tracers count
every provider call exactly once. The per-role split is in ``response_metadata["atlas"]``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.messages.utils import message_chunk_to_message
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableConfig, ensure_config
from langchain_core.tools import BaseTool
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from ..client import Atlas
from ..config import FLAT, AtlasConfig, is_setting, unknown_setting
from ..errors import ConfigError
from ..messages import CallContext
from ..report import CallReport
from ..runtime.chunks import ChatChunk
from ..runtime.streaming import LiveCompletionStream
from ._convert import model_name, openai_tools, to_openai_messages, usage_metadata
from .backend import CallBinding, Delivery, LangChainBackend, bound_params, prepare_model, role_metadata

REPLAY_CHARS = 48
# The run metadata key that names a call's task (its family, ``teaching/families.py``):
# ``model.invoke(x, config={"metadata": {"atlas_task": "billing-faq"}})``.
RUN_TASK_KEY = "atlas_task"
# ... and the one that names its tenant (``_tenants.py``), for a model or agent that serves
# several users: ``config={"metadata": {"atlas_tenant": user_id}}``.
RUN_TENANT_KEY = "atlas_tenant"


def delivered_message(delivery: Delivery, report: CallReport | None = None) -> AIMessage:
    """The student's message with the call's report and the call's whole usage on it."""
    report = report or delivery.atlas
    assert report is not None
    message = delivery.message
    return message.model_copy(update={
        "response_metadata": {**message.response_metadata, "atlas": report.model_dump(mode="json")},
        "usage_metadata": usage_metadata(report.usage.total()),
    })


def replay_chunks(message: AIMessage) -> list[AIMessageChunk]:
    """A delivered message as stream chunks; the last carries usage and the report."""
    text = message.text
    out = [AIMessageChunk(content=text[i:i + REPLAY_CHARS], id=message.id)
           for i in range(0, len(text), REPLAY_CHARS)]
    for i, tc in enumerate(message.tool_calls):
        out.append(AIMessageChunk(content="", id=message.id, tool_call_chunks=[
            tool_call_chunk(name=tc["name"], args=json.dumps(tc["args"]), id=tc["id"], index=i)]))
    out.append(final_chunk(message))
    return out


def final_chunk(message: AIMessage) -> AIMessageChunk:
    return AIMessageChunk(content="", id=message.id, usage_metadata=message.usage_metadata,
                          response_metadata=message.response_metadata, chunk_position="last")


def _passed_on(chunk: AIMessageChunk) -> AIMessageChunk:
    """A student chunk as forwarded: its usage and metadata come once, in the final chunk."""
    return chunk.model_copy(update={"usage_metadata": None, "chunk_position": None, "response_metadata": {}})


def _with_run_options(config: RunnableConfig | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with the run metadata's task and tenant as ``atlas`` options, unless set."""
    metadata = ensure_config(config).get("metadata") or {}
    opts = dict(kwargs.get("atlas") or {})
    found = {option: metadata[key] for key, option in ((RUN_TASK_KEY, "task"), (RUN_TENANT_KEY, "tenant"))
             if metadata.get(key) is not None and option not in opts}
    return {**kwargs, "atlas": {**opts, **found}} if found else kwargs


class _Relay:
    """The student's chunks of a live stream, passed on as the student shaped them, then the
    final chunk: the student's message metadata, the call's whole usage and its report."""

    def __init__(self) -> None:
        self.full: AIMessageChunk | None = None

    def feed(self, chunk: ChatChunk) -> AIMessageChunk | None:
        raw = chunk.raw
        if not isinstance(raw, AIMessageChunk):  # a whole answer as one chunk (no native stream)
            if not chunk.written:
                return None
            raw = AIMessageChunk(content=chunk.content or "", tool_call_chunks=[
                tool_call_chunk(name=tc.name, args=tc.arguments, id=tc.id, index=tc.index) for tc in chunk.tool_calls])
        self.full = raw if self.full is None else self.full + raw
        return _passed_on(raw) if chunk.written else None

    def end(self, report: CallReport) -> AIMessageChunk:
        message = message_chunk_to_message(self.full) if self.full is not None else AIMessage(content="")
        assert isinstance(message, AIMessage)
        return final_chunk(delivered_message(Delivery(message, message, report)))


class AtlasChatModel(BaseChatModel):
    """A chat model that puts an ATLAS teacher in front of ``student``.

    ``temperature``, ``max_tokens`` and ``stop`` are passed to the student's calls when set;
    ``timeout`` and ``max_retries`` bound the teacher (the wrapper's own dependency);
    ``api_key`` is the teacher's key. Every ``AtlasConfig`` setting (``policy``,
    ``teacher_api_base``, ``gate={...}``, ...) is taken as a keyword too, or in
    ``atlas_settings={...}``, and checked by ``AtlasConfig``. Everything else of the student
    is configured on the student itself.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    student: BaseChatModel
    teacher: str | BaseChatModel | None = None
    """A LiteLLM model string, or another LangChain chat model (``None``: ``ATLAS_TEACHER``)."""
    api_key: SecretStr | None = Field(default=None, alias="teacher_api_key")
    judge: Any = None
    """A judge setting, or a judge object."""
    ledger: Any = None
    session_id: str | None = None
    """Share one diagnosis across the calls of one task (see ``Atlas._observe``)."""
    tenant: str | None = None
    """Whose sessions and family guidance these calls use (``_tenants.py``). None: the run's
    ``atlas_tenant`` metadata, else the default tenant (the student's key is not seen here)."""
    config: AtlasConfig | None = None
    atlas_settings: dict[str, Any] = Field(default_factory=dict)
    """``AtlasConfig`` settings (``policy``, ``teacher={...}``, ``probe_max_tokens``, ...); the
    same given as keywords land here."""

    temperature: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    timeout: float | None = None
    max_retries: int | None = None
    streaming: bool = False

    _atlas: Atlas = PrivateAttr()
    _backend: LangChainBackend = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _known_settings(cls, data: Any) -> Any:
        # LangChain's models ignore unknown keywords; here a misspelling (``polcy="off"``)
        # would silently leave the default policy on, so it is refused as ``Atlas`` does.
        if isinstance(data, dict):
            known = {name for name, field in cls.model_fields.items()} | {
                field.alias for field in cls.model_fields.values() if field.alias}
            settings = {k: v for k, v in data.items() if k not in known and is_setting(k)}
            unknown = sorted(set(data) - known - set(settings))
            if unknown:
                raise ConfigError(unknown_setting(unknown[0], known | set(AtlasConfig.model_fields) | set(FLAT),
                                                  "AtlasChatModel"))
            if settings:  # AtlasConfig's settings as keywords: ``Atlas`` checks them with the rest
                data = {k: v for k, v in data.items() if k not in settings}
                data["atlas_settings"] = {**settings, **(data.get("atlas_settings") or {})}
        return data

    @model_validator(mode="after")
    def _build(self) -> AtlasChatModel:
        # Built here so a bad policy, judge or ledger fails at construction, not at first call.
        settings = dict(self.atlas_settings)
        if self.timeout is not None:
            settings.setdefault("teacher_timeout", self.timeout)
        if self.max_retries is not None:
            settings.setdefault("teacher_retries", max(1, self.max_retries))
        teacher_backend = LangChainBackend(self.teacher) if isinstance(self.teacher, BaseChatModel) else None
        teacher = model_name(self.teacher) if isinstance(self.teacher, BaseChatModel) else self.teacher
        self._backend = LangChainBackend()
        if self.api_key is not None:
            settings.setdefault("teacher_api_key", self.api_key.get_secret_value())
        self._atlas = Atlas(teacher, judge=self.judge, ledger=self.ledger, config=self.config,
                            student_backend=self._backend, teacher_backend=teacher_backend, **settings)
        return self

    @property
    def atlas(self) -> Atlas:
        """The ``Atlas`` this model runs (its ledger, sessions and settings)."""
        return self._atlas

    @property
    def _llm_type(self) -> str:
        return "atlas"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"student": model_name(self.student), "teacher": self._atlas.settings.teacher_model,
                "policy": self._atlas.config.policy}

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(ls_provider="atlas", ls_model_name=kwargs.get("model") or model_name(self.student),
                                 ls_model_type="chat")
        temperature = kwargs.get("temperature", self.temperature)
        if temperature is not None:
            params["ls_temperature"] = temperature
        max_tokens = kwargs.get("max_tokens", self.max_tokens)
        if max_tokens is not None:
            params["ls_max_tokens"] = max_tokens
        if stop or self.stop:
            params["ls_stop"] = stop or self.stop
        return params

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | dict[str, Any] | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools for the student; the teacher sees their names, the judge checks calls."""
        if tool_choice is not None:
            kwargs["tool_choice"] = tool_choice
        return self.bind(tools=openai_tools(tools), **kwargs)

    def close(self) -> None:
        self._atlas.close()

    # -- one call -------------------------------------------------------------------------

    def _call(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
              run_manager: Any = None) -> tuple[str, list[dict[str, Any]], dict[str, Any], CallBinding]:
        params: dict[str, Any] = {k: v for k, v in (("temperature", self.temperature),
                                                    ("max_tokens", self.max_tokens)) if v is not None}
        params.update(kwargs)
        opts = dict(params.pop("atlas", None) or {})
        if self.session_id and "session_id" not in opts:
            opts["session_id"] = self.session_id
        # The task (its family) may come with the run: ``config={"metadata": {"atlas_task": ...}}``.
        run_metadata = getattr(run_manager, "metadata", None) or {}
        if "task" not in opts and run_metadata.get(RUN_TASK_KEY) is not None:
            opts["task"] = run_metadata[RUN_TASK_KEY]
        tenant = run_metadata.get(RUN_TENANT_KEY, self.tenant)
        if "tenant" not in opts and tenant is not None:
            opts["tenant"] = tenant
        params["atlas"] = opts
        stop = stop or self.stop
        if stop:
            params["stop"] = stop
        override = params.pop("model", None)
        student = self.student

        def prepared(p: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            runnable, call_kwargs = prepare_model(student, p)
            if override is not None:
                call_kwargs["model"] = override
            return runnable, call_kwargs

        # The call's role goes in the student's run metadata (``atlas_role``), as the agent
        # middleware's child runs carry it: never in what the model is sent.
        def run(msgs: list[BaseMessage], p: dict[str, Any], context: CallContext) -> Any:
            runnable, call_kwargs = prepared(p)
            return runnable.invoke(msgs, config={"metadata": role_metadata(context)}, **call_kwargs)

        async def arun(msgs: list[BaseMessage], p: dict[str, Any], context: CallContext) -> Any:
            runnable, call_kwargs = prepared(p)
            return await runnable.ainvoke(msgs, config={"metadata": role_metadata(context)}, **call_kwargs)

        dicts = to_openai_messages(messages)
        binding = CallBinding(originals=messages, original_dicts=dicts, run=run, arun=arun, prepare=prepared)
        return str(override or model_name(student)), dicts, params, binding

    def _complete(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
                  run_manager: Any = None) -> Delivery:
        model, dicts, params, binding = self._call(messages, stop, kwargs, run_manager)
        out: Delivery = self._atlas.completion(model, dicts, **bound_params(params, binding))
        return out

    async def _acomplete(self, messages: list[BaseMessage], stop: list[str] | None,
                         kwargs: dict[str, Any], run_manager: Any = None) -> Delivery:
        model, dicts, params, binding = self._call(messages, stop, kwargs, run_manager)
        out: Delivery = await self._atlas.acompletion(model, dicts, **bound_params(params, binding))
        return out

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        delivery = self._complete(messages, stop, kwargs, run_manager)
        return ChatResult(generations=[ChatGeneration(message=delivered_message(delivery))])

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        delivery = await self._acomplete(messages, stop, kwargs, run_manager)
        return ChatResult(generations=[ChatGeneration(message=delivered_message(delivery))])

    # -- streaming ------------------------------------------------------------------------
    #
    # One ``Atlas`` stream: live where the core delivers an answer without comparing it first
    # (off, audit, the student alone), the student's own chunks passed on as it yields them
    # (after the probe and the teacher, which must come first); replayed from the delivered
    # message under strict and verify, which compare whole answers before delivering.

    # LangChain's ``stream``/``astream`` give ``_stream`` no run manager: the run's metadata
    # (``atlas_task``, ``atlas_tenant``) is read from the config here and passed on as options.

    def stream(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
               stop: list[str] | None = None, **kwargs: Any) -> Iterator[AIMessageChunk]:
        return super().stream(input, config, stop=stop, **_with_run_options(config, kwargs))

    def astream(self, input: LanguageModelInput, config: RunnableConfig | None = None, *,
                stop: list[str] | None = None, **kwargs: Any) -> AsyncIterator[AIMessageChunk]:
        return super().astream(input, config, stop=stop, **_with_run_options(config, kwargs))

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        model, dicts, params, binding = self._call(messages, stop, kwargs, run_manager)
        stream = self._atlas.completion(model, dicts, stream=True, **bound_params(params, binding))
        for chunk in self._relayed(stream):
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=ChatGenerationChunk(message=chunk))
            yield ChatGenerationChunk(message=chunk)

    @staticmethod
    def _relayed(stream: Any) -> Iterator[AIMessageChunk]:
        if not isinstance(stream, LiveCompletionStream):
            yield from replay_chunks(delivered_message(stream.response.raw, stream.atlas))
            return
        relay = _Relay()
        for item in stream.chat_chunks():
            chunk = relay.feed(item)
            if chunk is not None:
                yield chunk
        yield relay.end(stream.atlas)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        model, dicts, params, binding = self._call(messages, stop, kwargs, run_manager)
        stream = await self._atlas.acompletion(model, dicts, stream=True, **bound_params(params, binding))
        async for chunk in self._arelayed(stream):
            if run_manager is not None:
                await run_manager.on_llm_new_token(chunk.text, chunk=ChatGenerationChunk(message=chunk))
            yield ChatGenerationChunk(message=chunk)

    @staticmethod
    async def _arelayed(stream: Any) -> AsyncIterator[AIMessageChunk]:
        if not isinstance(stream, LiveCompletionStream):
            for chunk in replay_chunks(delivered_message(stream.response.raw, stream.atlas)):
                yield chunk
            return
        relay = _Relay()
        async for item in stream.chat_chunks():
            out = relay.feed(item)
            if out is not None:
                yield out
        yield relay.end(stream.atlas)
