"""A LiteLLM custom provider: ``litellm.completion(model="atlas/<student model>", ...)``.

    import litellm
    from atlas_middleware.provider import register
    register(teacher="hosted_vllm/Arc-Intelligence/ATLAS-8B-Thinking",
             teacher_api_base="http://127.0.0.1:8001/v1")
    resp = litellm.completion(model="atlas/openai/gpt-4o-mini", messages=[...])
    resp.atlas.decision                       # the CallReport

Sync, async and ``stream=True`` calls run the teaching loop around the student named after
``atlas/``. Teacher, policy and ledger come from the provider's configuration (keywords, an
``AtlasConfig``, YAML or ``ATLAS_*`` variables, as for ``Atlas``). Per-request options go
in ``metadata={"atlas": {"teach": False, "policy": "verify", "session_id": "...", "task": "..."}}``
(or the ``x-atlas-teach``, ``x-atlas-policy``, ``x-atlas-session-id``, ``x-atlas-task``,
``x-atlas-learn`` headers).

Tenants (``tenants.py``): called directly, a call's tenant is the one it names
(``metadata={"atlas": {"tenant": ...}}``), else its ``api_key``'s. Behind the LiteLLM proxy a
client's word does not count: the tenant is the key the proxy authenticated (and its team),
or one an admin named, which the proxy's hooks grant (``proxy/tenants.py``).

Accounting, so that LiteLLM's own callbacks count each user call exactly once:

* the inner calls (probe, teacher, guided, baseline, judge) are made with LiteLLM's
  ``no-log`` flag, so success callbacks and cost tracking do not see them;
* the outer call's ``usage`` is the delivered answer's (what the user got);
* its ``response_cost`` is the report's cost: every inner call priced by its own model.
  When some part has no known price (a self-hosted teacher), the known parts are summed
  and the report's ``cost_usd`` stays ``None``.

Streams are ``Atlas``'s streams: live where nothing is compared before delivery (``off``,
``audit``, the student's own answer delivered alone), the student's tokens passed on as it
writes them; replayed once the decision is made under ``strict`` and ``verify``. The report
of a stream is ``report_of(stream)`` once the first chunk has arrived, and complete (the
streamed call's usage, the price LiteLLM logs) once the stream has ended. LiteLLM wraps
what a custom provider yields into its own chunk objects; what that path cannot carry (a
reasoning model's ``delta.reasoning_content``) is said in ``GenericWriter``.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import litellm
from litellm.exceptions import BadRequestError
from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import GenericStreamingChunk, ModelResponse, ModelResponseStream
from pydantic import BaseModel, ConfigDict, field_validator

from .attach import report_of
from .backends import LiteLLMBackend, teacher_backend_for
from .backends.base import ChatBackend
from .backends.compat import (
    call_details,
    register_custom_provider,
    set_reported_cost,
    set_response_cost,
    stream_call_details,
)
from .backends.routing import ModelRouter
from .client import SWITCHED_OFF, Atlas
from .config import AtlasConfig, is_setting
from .errors import InvalidRequestError
from .pricing import PRICE_PARAMS
from .redact import redact, scrub, secret_logger, secrets_in
from .report import CallReport
from .tenants import GRANT_FIELD, TenantGrant, authenticated_tenant
from .tracing import parented

log = secret_logger("atlas_middleware")

PROVIDER = "atlas"
NO_LOG = {"no-log": True}
REPORT_KEY = "atlas_report"
# Request headers a client (or the proxy) may set instead of ``metadata["atlas"]``.
HEADER_OPTIONS = {"x-atlas-teach": "teach", "x-atlas-policy": "policy", "x-atlas-session-id": "session_id",
                  "x-atlas-task": "task", "x-atlas-learn": "learn", "x-atlas-tenant": "tenant"}
# LiteLLM's proxy writes the authenticated key's hash and team into every request's
# metadata, over whatever the client sent under these names.
PROXY_KEY_FIELD, PROXY_TEAM_FIELD = "user_api_key_hash", "user_api_key_team_id"


class RequestOptions(BaseModel):
    """Per-request options, typed; read from LiteLLM's untyped ``litellm_params``."""

    model_config = ConfigDict(extra="ignore")

    teach: bool | None = None
    policy: str | None = None
    session_id: Any = None
    """The agent session's id; checked by ``Atlas`` (``sessions.check_session_id``), so a bad one is a 400."""
    task: Any = None
    """The task's name (its family); checked by ``Atlas``, so a bad one is a 400."""
    learn: bool | None = None
    """False: the gate does not learn from this call (the caller reports a graded outcome)."""
    tenant: Any = None
    """The tenant the request names; checked by ``Atlas``. Behind the proxy only a grant counts
    (``call_tenant``)."""

    @field_validator("teach", "learn", mode="before")
    @classmethod
    def _teach(cls, v: Any) -> Any:
        if isinstance(v, str):
            return v.strip().lower() not in SWITCHED_OFF
        return v

    @classmethod
    def from_litellm(cls, litellm_params: dict[str, Any] | None, optional_params: dict[str, Any]) -> RequestOptions:
        options = cls.model_validate(gathered(litellm_params, optional_params))
        options.tenant = call_tenant(litellm_params, options.tenant)
        return options

    def as_call_options(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def gathered(litellm_params: dict[str, Any] | None, optional_params: dict[str, Any]) -> dict[str, Any]:
    """The request's atlas options, unchecked: headers, then ``metadata["atlas"]``, then ``atlas=``."""
    data: dict[str, Any] = {}
    for key in ("metadata", "litellm_metadata"):
        meta = (litellm_params or {}).get(key)
        if not isinstance(meta, dict):
            continue
        headers = meta.get("headers")
        if isinstance(headers, dict):
            for name, value in headers.items():
                field = HEADER_OPTIONS.get(str(name).lower())
                if field and value not in (None, ""):
                    data[field] = value
        if isinstance(meta.get("atlas"), dict):
            data.update(meta["atlas"])
    if isinstance(optional_params.get("atlas"), dict):  # litellm.completion(..., atlas={...})
        data.update(optional_params["atlas"])
    return data


def call_tenant(litellm_params: dict[str, Any] | None, named: Any) -> Any:
    """The call's tenant (``tenants.py``): behind the proxy, the hooks' grant, else the key the
    proxy authenticated (a tenant the client named is ignored: any key could name any tenant);
    called directly, the one ``named`` (None: ``Atlas`` takes the call's ``api_key``'s)."""
    metas = [m for m in ((litellm_params or {}).get(k) for k in ("metadata", "litellm_metadata"))
             if isinstance(m, dict)]
    for meta in metas:
        if isinstance(meta.get(GRANT_FIELD), TenantGrant):
            return str(meta[GRANT_FIELD])
    for meta in metas:
        if PROXY_KEY_FIELD in meta:
            return authenticated_tenant(meta.get(PROXY_KEY_FIELD), meta.get(PROXY_TEAM_FIELD))
    return named


class ReportStore:
    """The latest reports by LiteLLM call id, bounded, so proxy hooks can find them."""

    def __init__(self, capacity: int = 4096) -> None:
        self._items: OrderedDict[str, CallReport] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()

    def put(self, call_id: str | None, report: CallReport) -> None:
        if not call_id:
            return
        with self._lock:
            self._items[call_id] = report
            self._items.move_to_end(call_id)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)

    def get(self, call_id: str | None) -> CallReport | None:
        if not call_id:
            return None
        with self._lock:
            return self._items.get(call_id)


def _quiet(backend: ChatBackend) -> ChatBackend:
    """The backend, with its LiteLLM calls made under ``no-log`` so callbacks skip them.

    (The lean HTTP path and in-process models do not go through LiteLLM at all.)
    """
    if isinstance(backend, LiteLLMBackend):
        return LiteLLMBackend({**backend.defaults, **NO_LOG})
    if isinstance(backend, ModelRouter):
        backend.fallback = _quiet(backend.fallback)
    return backend


@contextmanager
def _boundary(model: str, kwargs: dict[str, Any]) -> Iterator[None]:
    """What leaves the provider for LiteLLM (and, through the proxy, for a client and its log).

    The caller's mistakes (bad messages, an unknown policy) become LiteLLM's 400 error;
    everything else (the student's own errors) passes through as it is, its type and fields
    unchanged, scrubbed of the call's key (redact.py): a provider may quote it, and the
    proxy sends the message to clients who never held that key.
    """
    try:
        yield
    except InvalidRequestError as exc:
        raise BadRequestError(message=str(scrub(exc, secrets_in(kwargs))), model=model,
                              llm_provider=PROVIDER) from exc
    except Exception as exc:
        scrub(exc, secrets_in(kwargs))
        raise


def _student_prices(litellm_params: dict[str, Any] | None) -> dict[str, Any]:
    """The per-token prices a deployment sets for its model (LiteLLM's custom pricing
    parameters, or its ``model_info``), to pass on to the student's calls.

    They are the student's prices: ``Atlas`` prices each student call by them
    (``pricing.py``), as LiteLLM would price the deployment's own call, while the teacher
    keeps its own. Without them a student missing from LiteLLM's cost map would be unpriced,
    and the spend the proxy logs would be the teacher's alone. Only the keys atlas prices by
    are passed: LiteLLM's other pricing keys (per second, per tier) would reach the
    student's request as unknown parameters and send it through LiteLLM.
    """
    params = litellm_params or {}
    info = params.get("model_info")
    info = info if isinstance(info, dict) else {}
    out = {}
    for name in PRICE_PARAMS:
        value = params.get(name)
        value = info.get(name) if value is None else value
        if value is not None:
            out[name] = value
    return out


def known_cost(report: CallReport) -> float:
    """The summed price of every inner call whose price is known."""
    usage = report.usage
    parts = (usage.probe, usage.teacher, usage.guided, usage.baseline, usage.judge)
    return float(sum(p.cost_usd for p in parts if p.cost_usd is not None))


class AtlasLLM(CustomLLM):
    """The ``atlas`` provider. Build it with ``Atlas`` keywords, or pass a ready ``Atlas``.

    The ``Atlas`` is built on first use (so that a proxy can import the module before its
    environment is complete) and shared by every call.
    """

    def __init__(self, atlas: Atlas | None = None, *, config: AtlasConfig | None = None,
                 config_file: str | None = None, on_report: list[Callable[[CallReport], None]] | None = None,
                 **atlas_kwargs: Any) -> None:
        super().__init__()
        self.on_report = list(on_report or [])
        self._atlas = atlas
        self._config = config
        self._config_file = config_file
        self._kwargs = atlas_kwargs
        self._lock = threading.Lock()
        self._owned: list[ChatBackend] = []
        self.reports = ReportStore()

    @property
    def atlas(self) -> Atlas:
        if self._atlas is None:
            with self._lock:
                if self._atlas is None:
                    self._atlas = self._build()
        return self._atlas

    def _config_fields(self) -> dict[str, Any]:
        # Config values (strings, numbers) build the AtlasConfig; objects (a judge, a
        # ledger, backends) go to Atlas itself.
        return {k: v for k, v in self._kwargs.items()
                if is_setting(k) and (k not in ("judge", "ledger") or isinstance(v, str))}

    @property
    def config(self) -> AtlasConfig:
        """The configuration, read on first use: before the ``Atlas`` is built, and also when
        building it fails later (the proxy's gate reads its limits here)."""
        if self._config is None:
            self._config = AtlasConfig.load(self._config_file, **self._config_fields())
        return self._config

    def _build(self) -> Atlas:
        fields = self._config_fields()
        extra = {k: v for k, v in self._kwargs.items() if k not in fields}
        config = self.config
        teacher = extra.pop("teacher_backend", None)
        if teacher is None and config.teacher.model:
            teacher = self._own(teacher_backend_for(config))  # a model string or a group
        student = extra.pop("student_backend", None) or self._own(ModelRouter(lean=config.lean_http))
        return Atlas(config=config, student_backend=_quiet(student),
                     teacher_backend=_quiet(teacher) if teacher is not None else None, **extra)

    def _own(self, backend: ChatBackend) -> ChatBackend:
        self._owned.append(backend)
        return backend

    def close(self) -> None:
        """Close the ``Atlas`` (its ledger) and the connection pools this provider opened."""
        if self._atlas is not None:
            self._atlas.close()
        for backend in self._owned:
            close = getattr(backend, "close", None)
            if callable(close):
                close()

    # -- LiteLLM's four entry points ------------------------------------------------------

    def completion(self, model: str, messages: list[Any], api_base: str | None, custom_prompt_dict: dict[str, Any],
                   model_response: ModelResponse, print_verbose: Any, encoding: Any, api_key: Any,
                   logging_obj: Any, optional_params: dict[str, Any], acompletion: Any = None,
                   litellm_params: dict[str, Any] | None = None, logger_fn: Any = None,
                   headers: dict[str, Any] | None = None, timeout: Any = None, client: Any = None) -> ModelResponse:
        kwargs = self._call_kwargs(optional_params, litellm_params, api_base, api_key, headers, timeout, stream=False)
        with _boundary(model, kwargs), parented(litellm_params):
            response = self.atlas.completion(model, messages, **kwargs)
        return self._deliver(response, litellm_params, logging_obj)

    async def acompletion(self, model: str, messages: list[Any], api_base: str | None,
                          custom_prompt_dict: dict[str, Any], model_response: ModelResponse, print_verbose: Any,
                          encoding: Any, api_key: Any, logging_obj: Any, optional_params: dict[str, Any],
                          acompletion: Any = None, litellm_params: dict[str, Any] | None = None,
                          logger_fn: Any = None, headers: dict[str, Any] | None = None, timeout: Any = None,
                          client: Any = None) -> ModelResponse:
        kwargs = self._call_kwargs(optional_params, litellm_params, api_base, api_key, headers, timeout, stream=False)
        with _boundary(model, kwargs), parented(litellm_params):
            response = await self.atlas.acompletion(model, messages, **kwargs)
        return self._deliver(response, litellm_params, logging_obj)

    def streaming(self, model: str, messages: list[Any], api_base: str | None, custom_prompt_dict: dict[str, Any],
                  model_response: ModelResponse, print_verbose: Any, encoding: Any, api_key: Any,
                  logging_obj: Any, optional_params: dict[str, Any], acompletion: Any = None,
                  litellm_params: dict[str, Any] | None = None, logger_fn: Any = None,
                  headers: dict[str, Any] | None = None, timeout: Any = None,
                  client: Any = None) -> Iterator[GenericStreamingChunk]:
        # The decision happens here, before LiteLLM wraps the iterator: a stream that starts
        # is a stream whose answer is chosen (and, live, whose first chunk has come).
        kwargs = self._call_kwargs(optional_params, litellm_params, api_base, api_key, headers, timeout, stream=True)
        with _boundary(model, kwargs), parented(litellm_params):
            stream = self.atlas.completion(model, messages, **kwargs)
        self._remember(stream.atlas, litellm_params, logging_obj, stream=True, observe=False)
        return self._generic(stream, litellm_params, logging_obj, model, kwargs)

    def _generic(self, stream: Any, litellm_params: dict[str, Any] | None, logging_obj: Any, model: str,
                 kwargs: dict[str, Any]) -> Iterator[GenericStreamingChunk]:
        writer = GenericWriter()
        with _boundary(model, kwargs):  # a failure after the first chunk
            for chunk in stream:
                yield from writer.feed(chunk)
        # The stream has ended: its report is complete (the streamed call's usage and price).
        self._remember(stream.atlas, litellm_params, logging_obj, stream=True)
        yield writer.end()

    # A plain method returning an async iterator (not an async generator): the proxy's
    # header hook must be able to run the loop (``prime()``) before the body starts.
    def astreaming(self, model: str, messages: list[Any], api_base: str | None,  # type: ignore[override,misc]
                   custom_prompt_dict: dict[str, Any], model_response: ModelResponse, print_verbose: Any,
                   encoding: Any, api_key: Any, logging_obj: Any, optional_params: dict[str, Any],
                   acompletion: Any = None, litellm_params: dict[str, Any] | None = None, logger_fn: Any = None,
                   headers: dict[str, Any] | None = None, timeout: Any = None,
                   client: Any = None) -> AsyncIterator[GenericStreamingChunk]:
        kwargs = self._call_kwargs(optional_params, litellm_params, api_base, api_key, headers, timeout, stream=True)
        return PendingStream(self, model, messages, kwargs, litellm_params, logging_obj)

    # -- helpers --------------------------------------------------------------------------

    def _call_kwargs(self, optional_params: dict[str, Any], litellm_params: dict[str, Any] | None,
                     api_base: str | None, api_key: Any, headers: dict[str, Any] | None, timeout: Any,
                     *, stream: bool) -> dict[str, Any]:
        options = RequestOptions.from_litellm(litellm_params, optional_params)
        kwargs = {k: v for k, v in optional_params.items() if k not in ("atlas", "stream", "stream_options")}
        # The student's endpoint, key, version and headers, when the caller gave them; never
        # the teacher's (its calls are built from the teacher's own settings).
        if api_base:
            kwargs["api_base"] = api_base
        if api_key:
            kwargs["api_key"] = api_key
        if (litellm_params or {}).get("api_version"):
            kwargs["api_version"] = (litellm_params or {})["api_version"]
        if headers:  # LiteLLM has merged ``headers`` and ``extra_headers`` into this
            kwargs["extra_headers"] = {**dict(headers), **(kwargs.get("extra_headers") or {})}
        # The caller's deadline bounds the whole taught call (teaching/deadline.py); LiteLLM
        # hands every call one (its default of 600 s when the caller set none).
        if timeout is not None:
            kwargs["timeout"] = timeout
        kwargs.update(_student_prices(litellm_params))
        kwargs["atlas"] = options.as_call_options()
        if stream:
            # The replay always carries the usage; LiteLLM drops it unless it was asked for.
            kwargs["stream"] = True
            kwargs["stream_options"] = {"include_usage": True}
        return kwargs

    def _remember(self, report: CallReport, litellm_params: dict[str, Any] | None, logging_obj: Any,
                  *, stream: bool = False, observe: bool = True) -> None:
        """Make the report findable (proxy hooks, ``report_of``); tell the observers once,
        when it is complete (``observe``: at the end of a stream)."""
        call_id = (litellm_params or {}).get("litellm_call_id") or getattr(logging_obj, "litellm_call_id", None)
        self.reports.put(call_id, report)
        self.reports.put(report.call_id, report)
        for observer in self.on_report if observe else ():
            try:
                observer(report)
            except Exception as exc:  # an observer (metrics) never fails the user's call
                log.warning("atlas report observer failed: %s", redact(str(exc)))
        details = call_details(logging_obj)
        if details is not None:
            details[REPORT_KEY] = report
        if stream:
            # LiteLLM cannot price an assembled ``atlas`` stream (no such model in its map).
            # Like providers that report their own price, this one reports the report's
            # cost; tests pin the logged figure to it.
            set_reported_cost(logging_obj, known_cost(report))

    def _deliver(self, response: Any, litellm_params: dict[str, Any] | None, logging_obj: Any) -> ModelResponse:
        report: CallReport = response.atlas
        self._remember(report, litellm_params, logging_obj)
        if not isinstance(response, ModelResponse):  # a backend without a LiteLLM object
            data = response.model_dump(exclude={"atlas"})
            response = ModelResponse(**data)
            response.atlas = report
        # Forget what LiteLLM learned on the inner call (its price, endpoint, headers):
        # the outer call is priced from the report, and says nothing about the student's host.
        set_response_cost(response, known_cost(report))
        delivered: ModelResponse = response
        return delivered


class PendingStream:
    """The async stream LiteLLM wraps: runs the loop on first use, then passes chunks on.

    ``prime()`` runs the loop without consuming a chunk (until a live stream's first chunk
    has come), so that the proxy can send the ``x-atlas-*`` headers of a stream before its
    body. ``report`` is complete once the stream has ended.
    """

    def __init__(self, provider: AtlasLLM, model: str, messages: list[Any], kwargs: dict[str, Any],
                 litellm_params: dict[str, Any] | None, logging_obj: Any) -> None:
        self._provider, self._model, self._messages, self._kwargs = provider, model, messages, kwargs
        self._litellm_params, self._logging_obj = litellm_params, logging_obj
        self._chunks: AsyncIterator[GenericStreamingChunk] | None = None
        self._error: BaseException | None = None
        self._lock = asyncio.Lock()
        self.report: CallReport | None = None

    async def prime(self) -> CallReport | None:
        """Run the loop once; the student's error, if any, is raised by the first ``__anext__``."""
        async with self._lock:
            if self._chunks is None and self._error is None:
                try:
                    with _boundary(self._model, self._kwargs), parented(self._litellm_params):
                        stream = await self._provider.atlas.acompletion(self._model, self._messages, **self._kwargs)
                except Exception as exc:
                    self._error = exc
                    return None
                self.report = stream.atlas
                self._provider._remember(stream.atlas, self._litellm_params, self._logging_obj, stream=True,
                                         observe=False)
                self._chunks = self._generic(stream)
        return self.report

    async def _generic(self, stream: Any) -> AsyncIterator[GenericStreamingChunk]:
        writer = GenericWriter()
        with _boundary(self._model, self._kwargs):  # a failure after the first chunk
            async for chunk in stream:
                for item in writer.feed(chunk):
                    yield item
        self.report = stream.atlas  # complete now: the streamed call's usage and price
        self._provider._remember(stream.atlas, self._litellm_params, self._logging_obj, stream=True)
        yield writer.end()

    def __aiter__(self) -> PendingStream:
        return self

    async def __anext__(self) -> GenericStreamingChunk:
        await self.prime()
        if self._error is not None:
            error, self._error, self._chunks = self._error, None, _nothing()
            raise error
        assert self._chunks is not None
        return await anext(self._chunks)

    async def aclose(self) -> None:
        chunks, self._chunks = self._chunks, _nothing()
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


async def _nothing() -> AsyncIterator[GenericStreamingChunk]:
    return
    yield  # an async generator with no items


class GenericWriter:
    """``Atlas``'s chunks (LiteLLM's ``ModelResponseStream``) as the provider-neutral
    ``GenericStreamingChunk`` dicts a ``CustomLLM`` must yield, as they come; LiteLLM's
    ``CustomStreamWrapper`` turns them back into its own chunks for the caller.

    Text and tool calls are passed on at once; the finish reason and the usage, which
    LiteLLM reads from the chunk that ends the stream, go into one last chunk (with the
    reasoning and cached token details). What the pinned LiteLLM (1.108) cannot carry this
    way is a reasoning model's thinking: a ``GenericStreamingChunk`` has no reasoning field,
    and ``provider_specific_fields`` would put it on ``delta.provider_specific_fields`` (never
    ``delta.reasoning_content``), where ``stream_chunk_builder`` keeps only the last fragment;
    so it is not passed on. A chunk with several tool-call fragments becomes several chunks
    (one ``tool_use`` each), which ``stream_chunk_builder`` joins as before.
    """

    def __init__(self) -> None:
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def feed(self, chunk: ModelResponseStream) -> list[GenericStreamingChunk]:
        usage = getattr(chunk, "usage", None)
        if usage is not None:
            self.usage = usage.model_dump(exclude_none=True)
        if not chunk.choices:
            return []
        choice = chunk.choices[0]
        if choice.finish_reason:
            self.finish_reason = choice.finish_reason
        text, calls = choice.delta.content or "", choice.delta.tool_calls or []
        out = [_generic(text if i == 0 else "", _tool_use(tc)) for i, tc in enumerate(calls)]
        if text and not calls:
            out.append(_generic(text, None))
        return out

    def end(self) -> GenericStreamingChunk:
        return _generic("", None, finish_reason=self.finish_reason or "stop", usage=self.usage)


def _tool_use(tc: Any) -> dict[str, Any]:
    function = {"name": tc.function.name, "arguments": tc.function.arguments}
    return {"id": tc.id, "type": "function", "index": tc.index, "function": function}


def _generic(text: str, tool_use: dict[str, Any] | None, *, finish_reason: str | None = None,
             usage: dict[str, Any] | None = None) -> GenericStreamingChunk:
    return GenericStreamingChunk(text=text, tool_use=tool_use,  # type: ignore[typeddict-item]
                                 is_finished=finish_reason is not None, finish_reason=finish_reason or "",
                                 usage=usage, index=0)  # type: ignore[typeddict-item]


def find_report(obj: Any) -> CallReport | None:
    """The ``CallReport`` of a response or a LiteLLM stream (after its first chunk), or None;
    callers use ``atlas_middleware.report_of``, which looks here for LiteLLM's objects."""
    report = getattr(obj, "atlas", None)
    if isinstance(report, CallReport):
        return report
    details = stream_call_details(obj)
    if details is not None and isinstance(details.get(REPORT_KEY), CallReport):
        return details[REPORT_KEY]  # type: ignore[no-any-return]
    stream = getattr(obj, "completion_stream", None)
    if isinstance(stream, PendingStream):
        return stream.report
    return None


def register(provider: AtlasLLM | None = None, **atlas_kwargs: Any) -> AtlasLLM:
    """Make ``atlas/...`` models callable through LiteLLM; returns the provider.

    Registering again replaces the previous ``atlas`` provider.
    """
    provider = provider or AtlasLLM(**atlas_kwargs)
    register_custom_provider(litellm, PROVIDER, provider)
    return provider


__all__ = ["PROVIDER", "AtlasLLM", "PendingStream", "RequestOptions", "ReportStore", "known_cost",
           "find_report", "register", "report_of"]
