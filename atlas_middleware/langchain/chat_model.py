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

import asyncio
import json
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from pydantic import ConfigDict, Field, PrivateAttr, SecretStr, model_validator

from ..client import Atlas
from ..config import AtlasConfig
from ..errors import AtlasError
from ..report import CallReport
from ._convert import model_name, openai_tools, to_openai_messages, usage_metadata
from .backend import (
    CallBinding,
    Delivery,
    LangChainBackend,
    StreamedDelivery,
    StreamSink,
    bound_params,
    prepare_model,
)

# Under these policies nothing is compared before delivery, so tokens can stream as they come.
_STREAMING_POLICIES = frozenset({"off", "audit"})
REPLAY_CHARS = 48


def delivered_message(delivery: Delivery) -> AIMessage:
    """The student's message with the call's report and the call's whole usage on it."""
    report: CallReport = delivery.atlas
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


class AtlasChatModel(BaseChatModel):
    """A chat model that puts an ATLAS teacher in front of ``student``.

    ``temperature``, ``max_tokens`` and ``stop`` are passed to the student's calls when set;
    ``timeout`` and ``max_retries`` bound the teacher (the wrapper's own dependency);
    ``api_key`` is the teacher's key. Everything else of the student is configured on the
    student itself.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    student: BaseChatModel
    teacher: str | BaseChatModel | None = None
    """A LiteLLM model string, or another LangChain chat model (``None``: ``ATLAS_TEACHER``)."""
    teacher_api_base: str | None = None
    api_key: SecretStr | None = Field(default=None, alias="teacher_api_key")
    policy: str | None = None
    judge: Any = None
    ledger: Any = None
    session_id: str | None = None
    """Share one diagnosis across the calls of one task (see ``Atlas._observe``)."""
    config: AtlasConfig | None = None
    atlas_settings: dict[str, Any] = Field(default_factory=dict)
    """Further ``AtlasConfig`` fields (``probe_max_tokens``, ``skip_level``, ...)."""

    temperature: float | None = None
    max_tokens: int | None = None
    stop: list[str] | None = None
    timeout: float | None = None
    max_retries: int | None = None
    streaming: bool = False

    _atlas: Atlas = PrivateAttr()
    _backend: LangChainBackend = PrivateAttr()

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
        self._atlas = Atlas(
            teacher, teacher_api_base=self.teacher_api_base,
            teacher_api_key=self.api_key.get_secret_value() if self.api_key else None,
            policy=self.policy, judge=self.judge, ledger=self.ledger, config=self.config,
            student_backend=self._backend, teacher_backend=teacher_backend, **settings,
        )
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
                "policy": self._atlas.settings.policy}

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
              sink: StreamSink | None = None) -> tuple[str, list[dict[str, Any]], dict[str, Any], CallBinding]:
        params: dict[str, Any] = {k: v for k, v in (("temperature", self.temperature),
                                                    ("max_tokens", self.max_tokens)) if v is not None}
        params.update(kwargs)
        opts = dict(params.pop("atlas", None) or {})
        if self.session_id and "session_id" not in opts:
            opts["session_id"] = self.session_id
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

        def run(msgs: list[BaseMessage], p: dict[str, Any]) -> Any:
            runnable, call_kwargs = prepared(p)
            return runnable.invoke(msgs, **call_kwargs)

        async def arun(msgs: list[BaseMessage], p: dict[str, Any]) -> Any:
            runnable, call_kwargs = prepared(p)
            return await runnable.ainvoke(msgs, **call_kwargs)

        dicts = to_openai_messages(messages)
        binding = CallBinding(originals=messages, original_dicts=dicts, run=run, arun=arun,
                              prepare=prepared, sink=sink)
        return str(override or model_name(student)), dicts, params, binding

    def _policy(self, kwargs: dict[str, Any]) -> str:
        opts = kwargs.get("atlas") or {}
        return str(opts.get("policy") or self._atlas.settings.policy)

    def _complete(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
                  sink: StreamSink | None = None) -> Delivery:
        model, dicts, params, binding = self._call(messages, stop, kwargs, sink)
        try:
            out: Delivery = self._atlas.completion(model, dicts, **bound_params(params, binding))
        finally:
            if sink is not None:
                sink.close()
        return out

    async def _acomplete(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any],
                         sink: StreamSink | None = None) -> Delivery:
        model, dicts, params, binding = self._call(messages, stop, kwargs, sink)
        try:
            out: Delivery = await self._atlas.acompletion(model, dicts, **bound_params(params, binding))
        finally:
            if sink is not None:
                sink.close()
        return out

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        delivery = self._complete(messages, stop, kwargs)
        return ChatResult(generations=[ChatGeneration(message=delivered_message(delivery))])

    async def _agenerate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                         run_manager: AsyncCallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        delivery = await self._acomplete(messages, stop, kwargs)
        return ChatResult(generations=[ChatGeneration(message=delivered_message(delivery))])

    # -- streaming ------------------------------------------------------------------------
    #
    # strict / verify: the policy compares answers before delivering, so the stream starts
    # after the decision and replays the delivered answer. off / audit: the delivered answer
    # is the first student answer call, and its tokens are passed on as the student yields
    # them (after the probe and the teacher, which must come first).

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        if self._policy(kwargs) not in _STREAMING_POLICIES:
            chunks: Iterator[AIMessageChunk] = iter(replay_chunks(delivered_message(self._complete(messages, stop, kwargs))))
        else:
            chunks = self._live(messages, stop, kwargs)
        for chunk in chunks:
            if run_manager is not None:
                run_manager.on_llm_new_token(chunk.text, chunk=ChatGenerationChunk(message=chunk))
            yield ChatGenerationChunk(message=chunk)

    def _live(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> Iterator[AIMessageChunk]:
        items: queue.Queue[tuple[str, Any]] = queue.Queue()
        sink = StreamSink(lambda c: items.put(("chunk", c)))

        def work() -> None:
            try:
                items.put(("done", self._complete(messages, stop, kwargs, sink)))
            except BaseException as exc:  # handed to the consumer, raised there
                items.put(("error", exc))

        threading.Thread(target=work, name="atlas-langchain-stream", daemon=True).start()
        while True:
            kind, item = items.get()
            if kind == "chunk":
                yield _passed_on(item)
            elif kind == "error":
                raise item
            else:
                yield from _tail(item, sink)
                return

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        if self._policy(kwargs) not in _STREAMING_POLICIES:
            delivery = await self._acomplete(messages, stop, kwargs)
            for chunk in replay_chunks(delivered_message(delivery)):
                if run_manager is not None:
                    await run_manager.on_llm_new_token(chunk.text, chunk=ChatGenerationChunk(message=chunk))
                yield ChatGenerationChunk(message=chunk)
            return
        items: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        sink = StreamSink(lambda c: items.put_nowait(("chunk", c)))
        task = asyncio.ensure_future(self._acomplete(messages, stop, kwargs, sink))
        task.add_done_callback(lambda t: items.put_nowait(("done", t)))
        try:
            while True:
                kind, item = await items.get()
                if kind == "chunk":
                    out = [_passed_on(item)]
                else:
                    out = list(_tail(item.result(), sink))
                for chunk in out:
                    if run_manager is not None:
                        await run_manager.on_llm_new_token(chunk.text, chunk=ChatGenerationChunk(message=chunk))
                    yield ChatGenerationChunk(message=chunk)
                if kind == "done":
                    return
        finally:
            if not task.done():
                task.cancel()


def _tail(delivery: Delivery, sink: StreamSink) -> Iterator[AIMessageChunk]:
    """What follows the streamed tokens: the final chunk (or the whole answer, if none streamed)."""
    if sink.broken is not None:
        raise sink.broken
    message = delivered_message(delivery)
    if sink.streamed_id is None:
        yield from replay_chunks(message)
        return
    if not (isinstance(delivery, StreamedDelivery) and delivery.stream_id == sink.streamed_id):
        # Under off/audit the first answer call is the one delivered; anything else is a bug.
        raise AtlasError("the streamed answer is not the delivered one")
    yield final_chunk(message)
