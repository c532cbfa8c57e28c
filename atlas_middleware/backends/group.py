"""Teacher groups: several teacher deployments (vLLM replicas) behind one LiteLLM ``Router``.

LiteLLM's ``Router`` does what a group needs and the middleware does not do it again: it
chooses the deployment of every attempt (its routing strategy: ``simple-shuffle``,
``least-busy``, ``latency-based-routing``, ...), counts each deployment's failures and
successes, cools a failing one down (``allowed_fails``, ``cooldown_time``) and leaves the
ones that failed this request out of the next pick. ``TeacherGroupBackend`` is the
``ChatBackend`` of such a group, on the two paths a single teacher has:

* **LiteLLM path**: each attempt is ``router.completion`` / ``router.acompletion`` on the
  group; the Router picks, calls and records the outcome through its own callbacks.
* **lean path**, when ``lean_http`` is on and every deployment can take the request there
  (``hosted_vllm/`` or ``openai/`` with an ``api_base``, a body the parameter contract is
  sure of): each attempt asks the Router for a deployment (``get_available_deployment`` /
  ``async_get_available_deployment``), posts over the lean backend's pool, and reports
  the outcome to the Router through the hooks LiteLLM's logging calls after a routed
  call: the Router's deployment callbacks (failure and success counts, cooldowns) and the
  routing strategy's logger (least-busy's in-flight counts, latency-based-routing's
  latencies). The kwargs they get carry what those hooks read: the group, the deployment
  id, the exception, the response's usage.

Retries happen in one loop, here: ``attempts`` per teacher call (``teacher_retries``, or
``teacher_router.num_retries + 1``), each on the deployment the Router picks with the
deployments that already failed this call left out (``_retry_skipped_deployment_ids``,
the key the Router's own retries use). The Router's retries are off (``num_retries=0``),
so are the OpenAI SDK's (``max_retries=0`` per deployment), and ``Atlas`` wraps no
``RetryingBackend`` around a group (``retries_inside``). Every attempt's timeout is what is
left of the call's own (the flow's deadline for the teacher, ``teacher_timeout`` at most),
capped by ``teacher_router.timeout`` when that is set: the whole call stays within
``teacher_timeout`` however many attempts it makes.

What the Router does not do, this does not do either: LiteLLM never cools a deployment
down for an ``APIConnectionError`` (the lean path's refused connection). A stopped replica
is then skipped within each call (the next attempt goes elsewhere, a refused connection
costs a millisecond) rather than cooled down. A timeout (408), a 429 or a 5xx does cool it
down.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from ..chunks import ChatChunk
from ..errors import ConfigError
from ..messages import ChatRequest, ChatResponse
from ..redact import register_secret
from .base import current_cancel_token
from .litellm import STREAM_USAGE, OpenAIStream, from_model_response, import_litellm
from .retry import is_transient

GROUP_NAME = "atlas-teacher"
ROUTER_DEFAULTS: dict[str, Any] = {"routing_strategy": "simple-shuffle", "allowed_fails": 0, "cooldown_time": 30.0}
"""A replica that fails (a timeout, a 429, a 5xx) is cooled down at once, for 30 s: a
teacher call lost to a hung replica costs a user's call its guidance. A lone deployment is
never cooled down (LiteLLM's rule)."""
_SELECTORS = ("leastbusy_logger", "lowesttpm_logger", "lowesttpm_logger_v2", "lowestlatency_logger",
              "lowestcost_logger")
"""The Router's attributes for its routing strategy's logger (at most one is set)."""
_SKIP = "_retry_skipped_deployment_ids"
_ROUTER_ONLY = frozenset({"order", "weight", "rpm", "tpm", "cooldown_time", "max_parallel_requests"})
"""Deployment params the Router reads for itself; the lean path does not send them."""
_MARGIN = 0.05
"""Seconds an attempt's transport gives up before the call's deadline: the failure then
reaches the Router (a timeout the driver cuts off by cancelling would not)."""


class TeacherGroupBackend:
    """A teacher group: one ``litellm.Router`` over ``deployments`` (flat LiteLLM params:
    ``model``, ``api_base``, ``api_key``, ...). See the module docstring."""

    retries_inside = True
    """Retries across deployments happen here; ``Atlas`` adds no retry wrapper."""

    def __init__(self, deployments: Sequence[Mapping[str, Any]], *, router_settings: Mapping[str, Any] | None = None,
                 attempts: int = 3, lean: bool = True, defaults: Mapping[str, Any] | None = None,
                 name: str = GROUP_NAME) -> None:
        if not deployments:
            raise ConfigError("a teacher group needs at least one deployment")
        self._litellm = litellm = import_litellm()
        settings = {**ROUTER_DEFAULTS, **(router_settings or {})}
        self.attempt_timeout: float | None = settings.pop("timeout", None)
        num_retries = settings.pop("num_retries", None)
        self.attempts = max(1, int(num_retries) + 1 if num_retries is not None else attempts)
        self.name = name
        base = {k: v for k, v in (defaults or {}).items() if v is not None}
        self.params: dict[str, dict[str, Any]] = {}
        for i, deployment in enumerate(deployments):
            params = {**base, **deployment}
            params.setdefault("max_retries", 0)  # the SDK's retries would multiply ours
            if params.get("api_key"):
                register_secret(str(params["api_key"]))
            self.params[f"{name}-{i}"] = params
        model_list = [{"model_name": name, "litellm_params": dict(params), "model_info": {"id": dep_id}}
                      for dep_id, params in self.params.items()]
        try:
            self.router: Any = litellm.Router(model_list=model_list, num_retries=0, **settings)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"teacher_router: {exc}") from None
        self.lean: Any = None
        if lean:
            from .openai_http import LeanHTTPBackend

            self.lean = LeanHTTPBackend()

    @property
    def model(self) -> str:
        """The first deployment's model string (protocol detection, reports)."""
        return str(next(iter(self.params.values()))["model"])

    # -- one attempt's pieces ---------------------------------------------------------------

    def _request_for(self, dep_id: str, request: ChatRequest, timeout: float | None) -> ChatRequest:
        params = {k: v for k, v in self.params[dep_id].items() if k not in _ROUTER_ONLY}
        model = params.pop("model")
        merged = {**request.params, **params}
        if timeout is not None:
            merged["timeout"] = timeout
        return ChatRequest(model=model, messages=request.messages, params=merged)

    def _lean_ok(self, request: ChatRequest) -> bool:
        lean = self.lean
        return lean is not None and all(lean.accepts(self._request_for(d, request, 1.0)) for d in self.params)

    def _selector(self) -> Any:
        for attr in _SELECTORS:
            selector = getattr(self.router, attr, None)
            if selector is not None:
                return selector
        return None

    def _event(self, dep_id: str, request: ChatRequest, exc: BaseException | None = None,
               stream: bool = False) -> dict[str, Any]:
        """The kwargs LiteLLM's logging hands the Router's hooks after a routed call."""
        model = self.params[dep_id]["model"]
        kwargs: dict[str, Any] = {
            "model": model, "messages": request.messages, "call_type": "completion", "stream": stream,
            "litellm_params": {"metadata": {"model_group": self.name, "deployment": model},
                               "model_info": {"id": dep_id}},
        }
        if exc is not None:
            kwargs["exception"] = exc
        return kwargs

    def _response_obj(self, response: ChatResponse) -> Any:
        """What latency-based routing reads from a response: its usage."""
        lm, usage = self._litellm, response.usage
        return lm.ModelResponse(usage=lm.Usage(prompt_tokens=usage.prompt_tokens,
                                               completion_tokens=usage.completion_tokens,
                                               total_tokens=usage.prompt_tokens + usage.completion_tokens))

    def _pre(self, dep_id: str, request: ChatRequest) -> None:
        selector = self._selector()
        if selector is not None:
            selector.log_pre_api_call(self.params[dep_id]["model"], request.messages, self._event(dep_id, request))

    def _success(self, dep_id: str, request: ChatRequest, response: ChatResponse, start: datetime) -> tuple[Any, ...]:
        kwargs, end = self._event(dep_id, request), datetime.now()
        response_obj = self._response_obj(response)
        self.router.sync_deployment_callback_on_success(kwargs, response_obj, start, end)
        return kwargs, response_obj, start, end

    def _failure(self, dep_id: str, request: ChatRequest, exc: BaseException, start: datetime) -> tuple[Any, ...]:
        kwargs, end = self._event(dep_id, request, exc), datetime.now()
        # Failure counts and the cooldown decision; the Router schedules its cooldown event
        # on the running loop (a sync caller gets one for the call: failures are rare).
        _on_a_loop(self.router.deployment_callback_on_failure, kwargs, None, start, end)
        return kwargs, None, start, end

    def _pick(self, request: ChatRequest, skipped: tuple[str, ...]) -> str:
        deployment = self.router.get_available_deployment(
            model=self.name, messages=request.messages, request_kwargs={_SKIP: skipped})
        return str(deployment["model_info"]["id"])

    async def _apick(self, request: ChatRequest, skipped: tuple[str, ...]) -> str:
        deployment = await self.router.async_get_available_deployment(
            model=self.name, messages=request.messages, request_kwargs={_SKIP: skipped})
        return str(deployment["model_info"]["id"])

    def _router_kwargs(self, request: ChatRequest, timeout: float | None, skipped: tuple[str, ...]) -> dict[str, Any]:
        kwargs = {**request.params, "model": self.name, "messages": request.messages, "num_retries": 0,
                  _SKIP: skipped}
        if timeout is not None:
            kwargs["timeout"] = timeout
        return kwargs

    # -- the attempt loop ---------------------------------------------------------------------

    def _attempts(self, request: ChatRequest) -> Iterator[_Attempt]:
        """Yield one ``_Attempt`` per try until one succeeds or the call must give up."""
        state = _Attempt(self, _deadline(request))
        for n in range(self.attempts):
            yield state
            if state.done:
                return
            if n + 1 == self.attempts or not state.retry():
                break
        assert state.error is not None
        raise state.error

    def complete(self, request: ChatRequest) -> ChatResponse:
        lean = self._lean_ok(request)
        for attempt in self._attempts(request):
            timeout = attempt.timeout()
            try:
                if lean:
                    dep_id = attempt.dep_id = self._pick(request, attempt.skipped)
                    sub = self._request_for(dep_id, request, timeout)
                    self._pre(dep_id, sub)
                    start = datetime.now()
                    try:
                        response: ChatResponse = self.lean.complete(sub)
                    except Exception as exc:
                        self._call(self._selector(), "log_failure_event", *self._failure(dep_id, sub, exc, start))
                        raise
                    self._call(self._selector(), "log_success_event", *self._success(dep_id, sub, response, start))
                else:
                    raw = self.router.completion(**self._router_kwargs(request, timeout, attempt.skipped))
                    response = from_model_response(raw, self._priced(request, raw), self._litellm)
            except Exception as exc:
                attempt.failed(exc)
                continue
            attempt.done = True
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        lean = self._lean_ok(request)
        for attempt in self._attempts(request):
            timeout = attempt.timeout()
            try:
                if lean:
                    response = await self._alean(request, attempt, timeout)
                else:
                    raw = await self.router.acompletion(**self._router_kwargs(request, timeout, attempt.skipped))
                    response = from_model_response(raw, self._priced(request, raw), self._litellm)
            except Exception as exc:
                attempt.failed(exc)
                continue
            attempt.done = True
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    async def _alean(self, request: ChatRequest, attempt: _Attempt, timeout: float | None) -> ChatResponse:
        dep_id = attempt.dep_id = await self._apick(request, attempt.skipped)
        sub = self._request_for(dep_id, request, timeout)
        self._pre(dep_id, sub)
        start = datetime.now()
        selector = self._selector()
        try:
            response: ChatResponse = await self.lean.acomplete(sub)
        except asyncio.CancelledError:
            # The driver gave up on the call. At its deadline that is this deployment not
            # answering in time: a timeout, as the sync path's transport reports it.
            late = attempt.deadline is not None and time.monotonic() >= attempt.deadline - 0.05
            exc = self._litellm.Timeout(message=f"no answer from {dep_id} within the teacher's timeout",
                                        model=sub.model, llm_provider="openai") if late else None
            if exc is not None:
                await self._acall(selector, "async_log_failure_event", *self._failure(dep_id, sub, exc, start))
            raise
        except Exception as exc:
            await self._acall(selector, "async_log_failure_event", *self._failure(dep_id, sub, exc, start))
            raise
        await self._acall(selector, "async_log_success_event", *self._success(dep_id, sub, response, start))
        return response

    def _priced(self, request: ChatRequest, raw: Any) -> ChatRequest:
        """The request as the deployment that answered saw it: its model string prices it."""
        hidden = getattr(raw, "_hidden_params", None) or {}
        dep_id = str(hidden.get("model_id") or "")
        if dep_id in self.params:
            return ChatRequest(model=self.params[dep_id]["model"], messages=request.messages, params=request.params)
        return ChatRequest(model=self.model, messages=request.messages, params=request.params)

    @staticmethod
    def _call(selector: Any, hook: str, *args: Any) -> None:
        if selector is not None:
            getattr(selector, hook)(*args)

    @staticmethod
    async def _acall(selector: Any, hook: str, *args: Any) -> None:
        if selector is not None:
            await getattr(selector, hook)(*args)

    # -- streams: retried only until the first chunk ----------------------------------------

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        if self._lean_ok(request):
            chunks: Iterator[ChatChunk] = self._lean_stream(request)
        else:
            chunks = self._router_stream(request)
        return chunks

    def _lean_stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        for attempt in self._attempts(request):
            dep_id = attempt.dep_id = self._pick(request, attempt.skipped)
            sub = self._request_for(dep_id, request, attempt.timeout())
            self._pre(dep_id, sub)
            start = datetime.now()
            try:
                chunks = self.lean.stream(sub)
                first = next(chunks, None)
            except Exception as exc:
                self._call(self._selector(), "log_failure_event", *self._failure(dep_id, sub, exc, start))
                attempt.failed(exc)
                continue
            attempt.done = True
            yield from self._reported(dep_id, sub, start, first, chunks)
            return

    def _reported(self, dep_id: str, sub: ChatRequest, start: datetime, first: ChatChunk | None,
                  chunks: Iterator[ChatChunk]) -> Iterator[ChatChunk]:
        last = first
        try:
            if first is not None:
                yield first
            for last in chunks:
                yield last
        except Exception as exc:
            self._call(self._selector(), "log_failure_event", *self._failure(dep_id, sub, exc, start))
            raise
        usage = last.usage if last is not None and last.usage is not None else None
        if usage is not None:
            response = ChatResponse(content=None, usage=usage)
            self._call(self._selector(), "log_success_event", *self._success(dep_id, sub, response, start))

    def _router_stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        for attempt in self._attempts(request):
            try:
                raw = self.router.completion(**self._router_kwargs(request, attempt.timeout(), attempt.skipped),
                                             **STREAM_USAGE)
                pieces = iter(raw)
                head = next(pieces, None)
            except Exception as exc:
                attempt.failed(exc)
                continue
            attempt.done = True
            reader = OpenAIStream(request, self._litellm)
            for piece in ([head] if head is not None else []):
                chunk = reader.read(piece)
                if chunk is not None:
                    yield chunk
            for piece in pieces:
                chunk = reader.read(piece)
                if chunk is not None:
                    yield chunk
            yield reader.end()
            return

    async def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        # The teaching flow reads a teacher whole; a stream of a group is its whole answer,
        # with the same attempts and the same reporting as ``acomplete``.
        yield ChatChunk.whole(await self.acomplete(request))

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        if self.lean is not None:
            self.lean.close()
        # The Router registers its hooks in LiteLLM's global callback lists: take them out.
        self.router.discard()
        selector = self._selector()
        lm = self._litellm
        for name in ("callbacks", "input_callback"):
            hooks = getattr(lm, name, None)
            if isinstance(hooks, list) and selector is not None:
                setattr(lm, name, [h for h in hooks if h is not selector])

    async def aclose(self) -> None:
        if self.lean is not None:
            await self.lean.aclose()
        self.close()


class _Attempt:
    """One teacher call's attempts: what failed, which deployments to leave out, time left."""

    def __init__(self, group: TeacherGroupBackend, deadline: float | None) -> None:
        self.group, self.deadline = group, deadline
        self.done = False
        self.dep_id: str | None = None
        self.skipped: tuple[str, ...] = ()
        self.error: BaseException | None = None

    def timeout(self) -> float | None:
        """This attempt's timeout: what is left of the call's, capped by the group's."""
        cap = self.group.attempt_timeout
        left = None if self.deadline is None else max(0.001, self.deadline - time.monotonic() - _MARGIN)
        if cap is None:
            return left
        return cap if left is None else min(cap, left)

    def failed(self, exc: BaseException) -> None:
        self.error = exc
        failed = self.dep_id or getattr(exc, "failed_deployment_id", None)
        if failed and failed not in self.skipped:
            self.skipped = (*self.skipped, str(failed))
        self.dep_id = None

    def retry(self) -> bool:
        """Whether another attempt may follow the one that just failed."""
        token = current_cancel_token()
        if token is not None and token.cancelled:
            return False
        if self.error is None or not is_transient(self.error):
            return False
        if self.deadline is not None and time.monotonic() >= self.deadline - 2 * _MARGIN:
            return False  # no time left for an answer
        if len(self.skipped) >= len(self.group.params):
            # Every deployment failed this call: start over among them (the Router leaves out
            # the cooled-down ones), unless this was the last attempt anyway.
            self.skipped = ()
        return True


def _deadline(request: ChatRequest) -> float | None:
    timeout = request.params.get("timeout")
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
        return time.monotonic() + float(timeout)
    return None


def _on_a_loop(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn`` where ``asyncio.create_task`` works: on this thread's running loop, or on a
    loop made for the call (a sync caller's thread has none)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        async def run() -> Any:
            return fn(*args)

        return asyncio.run(run())
    return fn(*args)
