"""AtlasLLM: LiteLLM's CustomLLM interface around an Atlas."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from litellm.llms.custom_llm import CustomLLM
from litellm.types.utils import GenericStreamingChunk, ModelResponse

from .._redact import redact, secret_logger
from ..backends import LiteLLMBackend, teacher_backend_for
from ..backends.base import ChatBackend
from ..backends.compat import call_details, set_reported_cost, set_response_cost
from ..backends.routing import ModelRouter
from ..client import Atlas
from ..config import AtlasConfig, is_setting
from ..report import CallReport
from ..tracing import parented
from .options import NO_LOG, RequestOptions, _boundary
from .pricing import _student_prices, known_cost
from .reports import REPORT_KEY, ReportStore
from .streams import GenericWriter, PendingStream

log = secret_logger("atlas_middleware")


def _quiet(backend: ChatBackend) -> ChatBackend:
    """The backend, with its LiteLLM calls made under ``no-log`` so callbacks skip them.

    (The lean HTTP path and in-process models do not go through LiteLLM at all.)
    """
    if isinstance(backend, LiteLLMBackend):
        return LiteLLMBackend({**backend.defaults, **NO_LOG})
    if isinstance(backend, ModelRouter):
        backend.fallback = _quiet(backend.fallback)
    return backend


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
        return self._generic_chunks(stream, litellm_params, logging_obj, model, kwargs)

    def _generic_chunks(self, stream: Any, litellm_params: dict[str, Any] | None, logging_obj: Any, model: str,
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
