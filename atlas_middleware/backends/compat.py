"""Every touchpoint of a dependency's private internals, in one module.

Where a dependency offers no public way to do what the middleware needs (LiteLLM's logging
object and Router hooks, aiohttp's connector, LangChain's streaming check), the one place
that reaches inside it is a small named function here. Each docstring says what it relies on
and for which releases that was checked; ``tests/test_compat.py`` holds a contract test per
function, run against both ends of the supported LiteLLM range (``make test``), and a scan
that fails when any other module uses a dependency's private name. An upgrade that changes
one of these internals then breaks this file, loudly, instead of six modules quietly.

Nothing here imports a dependency (or asyncio) at module level: importing the core pulls none
of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # asyncio is loaded by the time a pool is released, not at the core's import
    import asyncio

LITELLM_RANGE = ">=1.108,<1.111"
"""The LiteLLM releases the core supports (``pyproject.toml``); 1.108.7 and 1.110.2 are tested."""


# -- LiteLLM: responses and the logging object ----------------------------------------------

def hidden_params(response: Any) -> dict[str, Any]:
    """A LiteLLM response's ``_hidden_params`` (its ``response_cost``, the Router's
    ``model_id``), or ``{}``. LiteLLM 1.108-1.110 keep them on ``ModelResponse`` and read
    ``response_cost`` back from there in ``completion_cost``."""
    hidden = getattr(response, "_hidden_params", None)
    return hidden if isinstance(hidden, dict) else {}


def set_response_cost(response: Any, cost: float | None) -> None:
    """Replace a response's ``_hidden_params`` with just its cost: what LiteLLM learnt on an
    inner call (its price, endpoint, headers) is not the outer call's. LiteLLM 1.108-1.110
    price a response from ``_hidden_params["response_cost"]`` when it is there."""
    response._hidden_params = {"response_cost": cost}


def set_reported_cost(logging_obj: Any, cost: float | None) -> bool:
    """Have LiteLLM log ``cost`` for a call, as for providers that report their own price:
    ``Logging._provider_reported_cost`` (LiteLLM 1.108-1.110; read by
    ``_response_cost_calculator`` when it is a finite float). False where there is none."""
    if logging_obj is None or not hasattr(logging_obj, "_provider_reported_cost"):
        return False
    logging_obj._provider_reported_cost = cost
    return True


def call_details(logging_obj: Any) -> dict[str, Any] | None:
    """The logging object's ``model_call_details``: the dict LiteLLM hands its callbacks as
    ``kwargs`` (LiteLLM 1.108-1.110), so a value put there reaches the proxy's hooks."""
    details = getattr(logging_obj, "model_call_details", None)
    return details if isinstance(details, dict) else None


def stream_call_details(stream: Any) -> dict[str, Any] | None:
    """``call_details`` of the logging object a ``CustomStreamWrapper`` keeps (``.logging_obj``)."""
    return call_details(getattr(stream, "logging_obj", None))


def register_custom_provider(litellm: Any, name: str, handler: Any) -> None:
    """Make ``name/...`` models route to ``handler`` (a ``CustomLLM``), replacing an earlier one.

    ``custom_provider_map`` is public; LiteLLM 1.108-1.110 read it only in
    ``litellm.utils.custom_llm_setup`` (at its own first call), so that is called at once:
    a provider registered after LiteLLM's first call is then routable too."""
    litellm.custom_provider_map = [
        item for item in litellm.custom_provider_map if item.get("provider") != name
    ] + [{"provider": name, "custom_handler": handler}]
    from litellm.utils import custom_llm_setup

    custom_llm_setup()  # type: ignore[no-untyped-call]


def default_encoding() -> Any:
    """The tiktoken ``cl100k_base`` encoding LiteLLM ships in its package (no download);
    ``litellm.litellm_core_utils.default_encoding.encoding`` in LiteLLM 1.108-1.110."""
    from litellm.litellm_core_utils.default_encoding import encoding

    return encoding


# -- LiteLLM: the request body a completion would send --------------------------------------

class CaptureUnavailable(Exception):
    """This LiteLLM cannot be stopped before sending: no undecorated ``completion``."""


class _Captured(BaseException):
    """Stops LiteLLM at its pre-call log. A BaseException, so that LiteLLM's own handlers
    (``except Exception``: exception mapping, failure logging) never see it."""


_logging_class: Any = None


def _capturing_logging() -> Any:
    """A LiteLLM ``Logging`` that keeps the request at its pre-call log and stops there."""
    global _logging_class
    if _logging_class is None:
        from litellm.litellm_core_utils.litellm_logging import Logging

        class CapturingLogging(Logging):
            captured: dict[str, Any] | None = None

            def pre_call(self, input: Any, api_key: Any, model: Any = None, additional_args: Any = None) -> None:
                self.captured = dict(additional_args or {})
                raise _Captured

        _logging_class = CapturingLogging
    return _logging_class


def capture_request_body(litellm: Any, model: str, messages: list[dict[str, Any]], kwargs: dict[str, Any],
                         call_id: str) -> Any:
    """What ``litellm.completion(model, messages, **kwargs)`` logs as ``complete_input_dict``
    just before sending, without sending; None when it logged no request.

    Relies on (LiteLLM 1.108-1.110): ``litellm.main.completion.__wrapped__`` (the function
    under its ``client`` decorator: no callbacks, caching or retries), its
    ``litellm_logging_obj`` argument, and ``Logging.pre_call(..., additional_args)`` being
    called with the body right before the HTTP request. LiteLLM's own refusals (an
    unsupported parameter, ...) propagate; ``CaptureUnavailable`` when there is no
    undecorated function."""
    completion = getattr(litellm.main.completion, "__wrapped__", None)
    if completion is None:
        raise CaptureUnavailable("this LiteLLM has no undecorated completion to learn from")
    log = _capturing_logging()(
        model=model, messages=messages, stream=False, call_type="completion", start_time=datetime.now(),
        litellm_call_id=call_id, function_id="atlas-capture", supports_correlation_logging=False,
    )
    try:
        completion(model=model, messages=messages, litellm_logging_obj=log, **kwargs)
    except _Captured:
        pass
    if log.captured is None:
        return None
    return log.captured.get("complete_input_dict")


# -- LiteLLM: the Router's hooks, for calls it routes but does not make ----------------------

ROUTER_SKIP = "_retry_skipped_deployment_ids"
"""The request kwarg the Router's own retries use to leave deployments out of a pick
(``get_available_deployment(request_kwargs=...)``, LiteLLM 1.108-1.110)."""
_STRATEGY_LOGGERS = ("leastbusy_logger", "lowesttpm_logger", "lowesttpm_logger_v2", "lowestlatency_logger",
                     "lowestcost_logger")


def router_skip(skipped: Sequence[str]) -> dict[str, Any]:
    """Request kwargs that leave the deployment ids ``skipped`` out of the Router's pick."""
    return {ROUTER_SKIP: tuple(skipped)}


def router_pick(router: Any, group: str, messages: Any, skipped: Sequence[str]) -> dict[str, Any]:
    """The deployment the Router picks for a call it will not make, the ``skipped`` ids left
    out: ``get_available_deployment`` (LiteLLM 1.108-1.110), which reserves nothing."""
    deployment: dict[str, Any] = router.get_available_deployment(model=group, messages=messages,
                                                                 request_kwargs=router_skip(skipped))
    return deployment


async def router_apick(router: Any, group: str, messages: Any, skipped: Sequence[str]) -> dict[str, Any]:
    """``router_pick`` on the event loop. LiteLLM 1.108: ``async_get_available_deployment``.
    LiteLLM 1.110 deprecates that for ``Router.select``, which holds a least-busy reservation
    for the call it expects to follow; this caller reports the call itself
    (``log_pre_api_call``), so it picks as the deprecated member did, without one
    (``least_busy.picks_reserve(False)``)."""
    select = getattr(router, "select", None)
    if select is None:
        old: dict[str, Any] = await router.async_get_available_deployment(
            model=group, messages=messages, request_kwargs=router_skip(skipped))
        return old
    from litellm.router_strategy.least_busy import (  # type: ignore[attr-defined, unused-ignore]
        picks_reserve,  # LiteLLM 1.110
    )

    with picks_reserve(False):
        deployment: dict[str, Any] = await select(group, router_skip(skipped), messages=messages)
    return deployment


def router_strategy_logger(router: Any) -> Any:
    """The Router's routing-strategy logger (least-busy's in-flight counts, latency-based
    routing's latencies), or None for ``simple-shuffle``: one of its ``*_logger`` attributes
    in LiteLLM 1.108-1.110. It is a ``CustomLogger``: ``log_pre_api_call``,
    ``(async_)log_success_event``, ``(async_)log_failure_event``."""
    for attr in _STRATEGY_LOGGERS:
        selector = getattr(router, attr, None)
        if selector is not None:
            return selector
    return None


def router_event(model: str, messages: Any, group: str, deployment_id: str, *,
                 exc: BaseException | None = None, stream: bool = False) -> dict[str, Any]:
    """The ``kwargs`` LiteLLM's logging hands the Router's hooks after a routed call, with
    what those hooks read: the group and deployment (``litellm_params.metadata``,
    ``model_info.id``) and the exception (LiteLLM 1.108-1.110)."""
    kwargs: dict[str, Any] = {
        "model": model, "messages": messages, "call_type": "completion", "stream": stream,
        "litellm_params": {"metadata": {"model_group": group, "deployment": model},
                           "model_info": {"id": deployment_id}},
    }
    if exc is not None:
        kwargs["exception"] = exc
    return kwargs


def router_success(router: Any, kwargs: Mapping[str, Any], response_obj: Any, start: datetime,
                   end: datetime) -> None:
    """Count a success for the deployment in ``kwargs``: ``Router.sync_deployment_callback_on_success``
    (LiteLLM 1.108-1.110; the callback its logging calls after a routed call)."""
    router.sync_deployment_callback_on_success(kwargs, response_obj, start, end)


def router_failure(router: Any, kwargs: Mapping[str, Any], start: datetime, end: datetime) -> None:
    """Count a failure, and cool the deployment down by the Router's rules:
    ``Router.deployment_callback_on_failure`` (LiteLLM 1.108-1.110). It schedules its cooldown
    event with ``asyncio.create_task``: call it where a loop runs."""
    router.deployment_callback_on_failure(kwargs, None, start, end)


def router_cooled_down(router: Any, deployment_ids: Sequence[str]) -> set[str]:
    """Which of ``deployment_ids`` the Router has in cooldown now. LiteLLM 1.110:
    ``Router.health().cooldowns``; 1.108: ``Router.cooldown_cache`` (deprecated in 1.110);
    both a ``CooldownCache`` whose ``get_active_cooldowns`` gives ``(id, details)`` pairs."""
    health = getattr(router, "health", None)
    cache = health().cooldowns if health is not None else router.cooldown_cache
    active = cache.get_active_cooldowns(model_ids=list(deployment_ids), parent_otel_span=None)
    return {str(dep_id) for dep_id, _ in active}


def router_forget(litellm: Any, router: Any) -> None:
    """Take a Router's hooks out of LiteLLM's global callback lists.

    LiteLLM 1.110: ``Router.retire`` takes them all out (``discard`` is deprecated). LiteLLM
    1.108: ``Router.discard`` takes out the Router's own, not its routing-strategy logger's,
    which it added to ``litellm.callbacks`` and ``litellm.input_callback`` too."""
    retire = getattr(router, "retire", None)
    if retire is not None:
        retire()
        return
    router.discard()
    selector = router_strategy_logger(router)
    if selector is None:
        return
    for name in ("callbacks", "input_callback"):
        hooks = getattr(litellm, name, None)
        if isinstance(hooks, list):
            setattr(litellm, name, [h for h in hooks if h is not selector])


# -- aiohttp: a pool closed from outside its event loop --------------------------------------

def release_session(session: Any) -> None:
    """Close an ``aiohttp.ClientSession``'s pool from outside its event loop
    (``session.close()`` must run on that loop).

    Relies on (aiohttp 3.9-3.13): ``BaseConnector._loop``, ``._conns`` (key -> deque of
    ``(protocol, expiry)``) and ``._close()``, which closes the connections and marks the
    connector closed without waiting; once the loop itself is closed it touches nothing, so
    the transports are closed here (``_close_transport``).
    """
    connector = session.connector
    session.detach()  # the session counts as closed: no "unclosed session" warning later
    if connector is None:
        return
    loop: asyncio.AbstractEventLoop = connector._loop
    if loop.is_closed():
        for conns in list(connector._conns.values()):
            for protocol, _ in conns:
                _close_transport(protocol.transport)
        connector._close()
    elif loop.is_running() and _running_loop() is not loop:
        loop.call_soon_threadsafe(connector._close)  # the loop lives in another thread
    else:
        connector._close()


def _close_transport(transport: Any) -> None:
    """Close a transport whose loop has closed (``transport.close()`` would schedule that on
    the loop). asyncio's selector transports (CPython 3.11-3.13) keep their socket as ``_sock``
    and their finaliser warns "unclosed transport" while it is set: it is closed and cleared,
    as the transport's own close ends. Others (uvloop, TLS): the socket they expose is closed
    (asyncio's ``TransportSocket`` keeps the real one as ``_sock``)."""
    if transport is None:
        return
    raw = getattr(transport, "_sock", None)
    if raw is not None:
        transport._sock = None
    else:
        sock = transport.get_extra_info("socket")
        raw = getattr(sock, "_sock", sock)
    if raw is not None:
        try:
            raw.close()
        except OSError:
            pass


def _running_loop() -> asyncio.AbstractEventLoop | None:
    import asyncio

    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


# -- LangChain --------------------------------------------------------------------------------

def streams_to(handlers: Sequence[Any]) -> bool:
    """Whether one of a run's callback handlers streams tokens: what LangChain itself checks
    before it streams a model (``BaseChatModel._should_stream``), an instance of
    ``langchain_core.tracers._streaming._StreamingCallbackHandler`` (langchain-core 1.x).
    A LangChain without it: True whenever there is a handler."""
    try:
        from langchain_core.tracers._streaming import _StreamingCallbackHandler
    except ImportError:  # pragma: no cover - a LangChain without it
        return bool(handlers)
    return any(isinstance(h, _StreamingCallbackHandler) for h in handlers)


# -- the LiteLLM proxy (the ``proxy`` extra, LiteLLM 1.108.7) ---------------------------------

def proxy_auth_error(message: str) -> Exception:
    """The 401 LiteLLM's proxy answers for a wrong key: ``litellm.proxy._types.ProxyException``."""
    from litellm.proxy._types import ProxyException

    return ProxyException(message=message, type="auth_error", param="api_key", code=401)


def proxy_key_auth(fields: Mapping[str, Any]) -> Any:
    """A ``litellm.proxy._types.UserAPIKeyAuth``: what a ``custom_auth`` returns for a good key."""
    from litellm.proxy._types import UserAPIKeyAuth

    return UserAPIKeyAuth.model_validate(dict(fields))


# -- torch ------------------------------------------------------------------------------------

def raise_recompile_limit(torch: Any, at_least: int) -> None:
    """Let ``torch.compile`` keep ``at_least`` graphs per code object before it falls back to
    eager: ``torch._dynamo.config.recompile_limit`` (``cache_size_limit`` before torch 2.6)."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, name, max(getattr(config, name), at_least))
