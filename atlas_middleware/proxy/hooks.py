"""The LiteLLM proxy's hooks: the ``x-atlas-*`` headers, the report in the body, metrics.

The proxy's config names two objects of the small module in ``integrations/litellm_proxy``,
which builds them here with ``build()``:

* ``atlas_provider``: the ``atlas`` custom provider (``custom_provider_map``), which runs
  the teaching loop for every ``atlas/<student>`` model of the ``model_list``;
* ``proxy_handler_instance``: a ``CustomLogger`` registered in ``callbacks`` that adds the
  headers to plain and streaming responses, the ``atlas`` field to plain bodies, and
  mounts ``/atlas/metrics`` on the proxy's app. Before an ``atlas/`` model is called it
  checks the request (the message list, ``stream``), so that a malformed one is a 400
  naming the field (LiteLLM's own checks crash on some shapes, or answer 500), and that a
  provider that cannot be built is a 503 that says why; a tenant it names is granted to an
  admin and refused (403) to any other key (``_tenants.py``).

``build()`` also builds the provider's ``Atlas`` at once (an error is logged, not raised,
so the proxy still starts and answers its probes) and puts the gate of ``gate.py`` in
front of the proxy's app: a model call without a valid key is a 401 before its body is
read; oversized, slow, deeply nested and non-object bodies get a 413, 408 or 400; and
``/health/readiness`` a 503 while the provider cannot be built.

LiteLLM hands hooks untyped dicts; only ``CallReport`` objects leave this module.
"""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from typing import Any

from litellm.exceptions import BadRequestError, ServiceUnavailableError
from litellm.integrations.custom_logger import CustomLogger
from litellm.types.utils import ModelResponse

from .._redact import guard_loggers, redact, secret_logger
from ..errors import AtlasError, InvalidRequestError
from ..messages import validate_messages, validate_user_parts
from ..provider import PROVIDER, AtlasLLM, PendingStream, find_report
from ..report import CallReport
from . import auth, gate, tenants
from .headers import BODY_FIELD, report_body, report_headers
from .metrics import AtlasMetrics
from .teacher import TeacherWatch

log = secret_logger("atlas_middleware.proxy")
# Seconds between two attempts to build a provider that failed for a reason outside the
# configuration (an OSError, say). A configuration error is final: the configuration is
# read once, and a retry could load an in-process teacher again for nothing.
RETRY_SECONDS = 30.0
CHAT_CALL_TYPES = frozenset({"completion", "acompletion"})  # the proxy's /chat/completions


class AtlasProxyHooks(CustomLogger):
    def __init__(self, provider: AtlasLLM, metrics: AtlasMetrics | None = None) -> None:
        super().__init__()
        self.provider = provider
        self.metrics = metrics
        self._ready = False
        self._problem: BaseException | None = None
        self._failed_at = 0.0
        self._check_lock = threading.Lock()
        self.teacher = TeacherWatch()

    def check(self) -> BaseException | None:
        """None once the provider's ``Atlas`` is built (building it now if needed), else why not.

        Blocking (it may open the ledger or load an in-process teacher); ``acheck`` runs it
        off the event loop.
        """
        with self._check_lock:
            if self._ready:
                return None
            if self._problem is not None and (isinstance(self._problem, AtlasError)
                                              or time.monotonic() - self._failed_at < RETRY_SECONDS):
                return self._problem
            try:
                self.provider.atlas  # noqa: B018 (builds it)
            except Exception as exc:
                self._problem, self._failed_at = exc, time.monotonic()
                log.error("the atlas provider cannot be built, /health/readiness answers 503: %s",
                          redact(str(exc)))
                return exc
            self._ready, self._problem = True, None
        # Once built: check the teacher in the background (bounded; a WARNING if it is down
        # or misnamed), so that a proxy that falls back on every call says so at start.
        config = getattr(self.provider, "config", None)
        if config is not None:
            self.teacher.start(config)
        return None

    async def acheck(self) -> BaseException | None:
        if self._ready:
            return None
        return await asyncio.to_thread(self.check)

    def teacher_status(self) -> dict[str, str]:
        """The teacher's state words for ``/health/readiness``: the start-up check's result
        and the circuit breaker's (``closed``, ``open``, ``half-open``)."""
        atlas = self.provider._atlas
        circuit = "unknown"
        if atlas is not None:
            try:
                circuit = atlas.breaker.state
            except Exception:  # a shared state that is down: readiness still answers
                circuit = "unknown"
        return {"teacher": self.teacher.result.state, "teacher_circuit": circuit}

    async def ateacher_status(self) -> dict[str, str]:
        # The breaker may live in Redis (bounded by state_timeout): off the event loop.
        return await asyncio.to_thread(self.teacher_status)

    def report_for(self, data: dict[str, Any], response: Any) -> CallReport | None:
        report = find_report(response) or self.provider.reports.get(data.get("litellm_call_id"))
        if report is None:
            # After the success hook the body field is a JSON dict; the proxy may also have
            # turned the whole response into a dict.
            body = response.get(BODY_FIELD) if isinstance(response, dict) else getattr(response, BODY_FIELD, None)
            if isinstance(body, dict):
                report = self.provider.reports.get(body.get("call_id"))
        return report

    enforces_request_content = True  # it reads the messages of the request

    async def async_pre_call_hook(self, user_api_key_dict: Any, cache: Any, data: dict[str, Any],
                                  call_type: Any) -> dict[str, Any]:
        model = data.get("model")
        if not isinstance(model, str):
            return data
        taught = _served_by_atlas(model)
        if taught:  # every route to an atlas/ model: a key names no tenant but its own
            _check_tenant(data, user_api_key_dict, model)
        kind = getattr(call_type, "value", call_type)
        if kind not in CHAT_CALL_TYPES or "messages" not in data:
            return data  # (Anthropic-style /v1/messages have other part types; the provider checks them)
        try:
            if taught:
                validate_request(data)
            elif isinstance(data["messages"], list):  # LiteLLM refuses these with a 500
                validate_user_parts(data["messages"])
        except InvalidRequestError as exc:
            raise BadRequestError(message=str(exc), model=model, llm_provider=PROVIDER if taught else "") from None
        if taught:
            problem = await self.acheck()
            if problem is not None:  # LiteLLM would answer 500 from inside the provider
                raise ServiceUnavailableError(message=f"the atlas provider cannot be built: {redact(str(problem))}",
                                              llm_provider=PROVIDER, model=model)
        return data

    async def async_post_call_success_hook(self, data: dict[str, Any], user_api_key_dict: Any,
                                           response: Any) -> Any:
        # Plain responses only: LiteLLM does not run this hook for streams.
        report = self.report_for(data, response)
        if report is not None and isinstance(response, ModelResponse):
            setattr(response, BODY_FIELD, report_body(report))
        return response

    async def async_post_call_response_headers_hook(
        self, data: dict[str, Any], user_api_key_dict: Any, response: Any,
        request_headers: dict[str, str] | None = None, litellm_call_info: dict[str, Any] | None = None,
    ) -> dict[str, str] | None:
        stream = getattr(response, "completion_stream", None)
        if isinstance(stream, PendingStream):
            # Headers go out before the body: decide now; the body replays the answer.
            await stream.prime()
        report = self.report_for(data, response)
        return report_headers(report) if report is not None else None


def _check_tenant(data: dict[str, Any], user_api_key_dict: Any, model: str) -> None:
    """The tenant a request names: granted to an admin, a 403 for any other key (``_tenants.py``)."""
    try:
        tenants.grant(data, user_api_key_dict)
    except tenants.TenantRefused as exc:
        from fastapi import HTTPException  # the proxy's own web framework: loaded

        raise HTTPException(status_code=403, detail=str(exc)) from None
    except InvalidRequestError as exc:
        raise BadRequestError(message=str(exc), model=model, llm_provider=PROVIDER) from None


def validate_request(data: dict[str, Any]) -> None:
    """The fields of a chat request that an ``atlas/`` model reads before any call.

    ``stream`` must be a boolean: LiteLLM takes any truthy value for one and, for a custom
    provider, then answers 200 with Python reprs where server-sent events belong.
    """
    validate_messages(data.get("messages"))
    stream = data.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequestError(f"stream must be a boolean, got {stream!r}"[:200])


def _served_by_atlas(model_name: str) -> bool:
    """Whether the proxy's router sends this model name to an ``atlas/`` deployment."""
    module = sys.modules.get("litellm.proxy.proxy_server")
    router = getattr(module, "llm_router", None) if module is not None else None
    if router is None:
        return model_name.startswith(PROVIDER + "/")
    try:
        deployments = router.get_model_list(model_name=model_name) or []
    except Exception:  # an unknown name: LiteLLM answers it as usual
        return False
    return any(str((d.get("litellm_params") or {}).get("model", "")).startswith(PROVIDER + "/")
               for d in deployments if isinstance(d, dict))


def _proxy_app() -> Any:
    """The running LiteLLM proxy's FastAPI app, when this module is loaded by the proxy."""
    module = sys.modules.get("litellm.proxy.proxy_server")
    return getattr(module, "app", None) if module is not None else None


_built: dict[str | None, tuple[AtlasLLM, AtlasProxyHooks]] = {}
_build_lock = threading.Lock()


def build(config_file: str | None = None, *, metrics: bool = True, **atlas_kwargs: Any) -> tuple[AtlasLLM, AtlasProxyHooks]:
    """The provider and the hooks, sharing one ``Atlas`` (built on the first call).

    Configuration comes from ``config_file`` or ``ATLAS_CONFIG`` (the proxy's config.yaml
    may carry an ``atlas:`` section) and ``ATLAS_*`` variables.

    The proxy executes the hook module once per config entry that names it (the provider
    map and the callbacks), so the pair is built once per process and shared: the hooks
    must see the reports of the provider that served the call.
    """
    with _build_lock:
        if config_file not in _built or atlas_kwargs:
            _built[config_file] = _build(config_file, metrics, atlas_kwargs)
        return _built[config_file]


# The proxy's own loggers: it logs every failed call's error with its traceback (the chained
# provider errors included). Errors leaving the provider are scrubbed already (provider.py);
# this filter also masks whatever else LiteLLM logs about a call whose key we know.
LITELLM_LOGGERS = ("LiteLLM", "LiteLLM Proxy", "LiteLLM Proxy.stdout", "LiteLLM Router", "uvicorn.error")


def _gate_limits(provider: AtlasLLM) -> gate.GateLimits:
    """The gate's bounds from the atlas configuration; the defaults when it is invalid (the
    taught models answer 503 then, and LiteLLM's own models are still bounded)."""
    try:
        return gate.GateLimits.of(provider.config)
    except AtlasError:
        return gate.GateLimits()


def _build(config_file: str | None, metrics: bool, atlas_kwargs: dict[str, Any]) -> tuple[AtlasLLM, AtlasProxyHooks]:
    guard_loggers(*LITELLM_LOGGERS)
    observer = AtlasMetrics() if metrics else None
    provider = AtlasLLM(config_file=config_file, on_report=[observer.observe] if observer else None,
                        **atlas_kwargs)
    hooks = AtlasProxyHooks(provider, observer)
    app = _proxy_app()
    if observer is not None:  # the shared state's health and the ledger's losses, read at each scrape
        observer.watch_state(lambda: provider._atlas.state.status() if provider._atlas is not None else None)
        observer.watch_ledger(
            lambda: provider._atlas.ledger_writer.status() if provider._atlas is not None else None)
    if app is not None:
        if observer is not None:
            observer.mount(app)
        gate.install(app, hooks.acheck, _gate_limits(provider), auth.key_problem, hooks.ateacher_status)
        # Build it now, so that a bad configuration shows in the log and on
        # /health/readiness at start rather than at the first request.
        hooks.check()
    return provider, hooks
