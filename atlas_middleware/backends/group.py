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
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .._redact import register_secret
from ..errors import ConfigError, is_transient
from ..messages import ChatRequest, ChatResponse
from ..runtime.chunks import ChatChunk
from .base import current_cancel_token
from .compat import (
    hidden_params,
    router_apick,
    router_event,
    router_failure,
    router_forget,
    router_pick,
    router_skip,
    router_strategy_logger,
    router_success,
)
from .litellm import STREAM_USAGE, OpenAIStream, from_model_response, import_litellm

GROUP_NAME = "atlas-teacher"
ROUTER_DEFAULTS: dict[str, Any] = {"routing_strategy": "simple-shuffle", "allowed_fails": 0, "cooldown_time": 30.0}
"""A replica that fails (a timeout, a 429, a 5xx) is cooled down at once, for 30 s: a
teacher call lost to a hung replica costs a user's call its guidance. A lone deployment is
never cooled down (LiteLLM's rule)."""
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
            from .http.transport import LeanHTTPBackend

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
        return router_strategy_logger(self.router)

    def _event(self, dep_id: str, request: ChatRequest, exc: BaseException | None = None,
               stream: bool = False) -> dict[str, Any]:
        """The kwargs LiteLLM's logging hands the Router's hooks after a routed call."""
        return router_event(self.params[dep_id]["model"], request.messages, self.name, dep_id, exc=exc,
                            stream=stream)

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
        router_success(self.router, kwargs, response_obj, start, end)
        return kwargs, response_obj, start, end

    def _failure(self, dep_id: str, request: ChatRequest, exc: BaseException, start: datetime) -> tuple[Any, ...]:
        kwargs, end = self._event(dep_id, request, exc), datetime.now()
        # Failure counts and the cooldown decision; the Router schedules its cooldown event
        # on the running loop (a sync caller gets one for the call: failures are rare).
        _on_a_loop(router_failure, self.router, kwargs, start, end)
        return kwargs, None, start, end

    def _pick(self, request: ChatRequest, skipped: tuple[str, ...]) -> str:
        deployment = router_pick(self.router, self.name, request.messages, skipped)
        return str(deployment["model_info"]["id"])

    async def _apick(self, request: ChatRequest, skipped: tuple[str, ...]) -> str:
        deployment = await router_apick(self.router, self.name, request.messages, skipped)
        return str(deployment["model_info"]["id"])

    def _router_kwargs(self, request: ChatRequest, timeout: float | None, skipped: tuple[str, ...]) -> dict[str, Any]:
        kwargs = {**request.params, "model": self.name, "messages": request.messages, "num_retries": 0,
                  **router_skip(skipped)}
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

    # -- one call, written once: a plan of steps that thin sync and async loops run ----------

    def _plan(self, request: ChatRequest, stream: bool) -> _Plan:
        """The call's attempts, hooks and answer as steps, no I/O (like ``teaching/flow.py``):
        ``_Emit`` hands the caller the response, or each chunk of a stream. A stream is
        retried only until its first chunk."""
        lean = self._lean_ok(request)
        for attempt in self._attempts(request):
            try:
                if lean:
                    answer, sent = yield from self._lean_attempt(request, attempt, stream)
                else:
                    answer = yield _Route(self._router_kwargs(request, attempt.timeout(), attempt.skipped), stream)
            except Exception as exc:
                attempt.failed(exc)
                continue
            attempt.done = True
            if not stream:
                yield _Emit(answer if lean else from_model_response(answer, self._priced(request, answer),
                                                                    self._litellm))
            elif lean:
                yield from self._lean_chunks(sent, *answer)
            else:
                yield from self._router_chunks(request, *answer)
            return

    def _lean_attempt(self, request: ChatRequest, attempt: _Attempt,
                      stream: bool) -> Generator[_Step, Any, tuple[Any, _Sent]]:
        """One lean attempt: a deployment from the Router, the POST, its outcome reported
        (a stream's success is reported at its end, by ``_lean_chunks``)."""
        dep_id = attempt.dep_id = yield _Pick(request, attempt.skipped)
        sub = self._request_for(dep_id, request, attempt.timeout())
        self._pre(dep_id, sub)
        sent = _Sent(dep_id, sub, datetime.now())
        try:
            answer = yield _Lean(sub, stream)
        except asyncio.CancelledError:
            # The driver gave up on the call. At its deadline that is this deployment not
            # answering in time: a timeout, as the sync path's transport reports it.
            if attempt.deadline is not None and time.monotonic() >= attempt.deadline - _MARGIN:
                late = self._litellm.Timeout(message=f"no answer from {dep_id} within the teacher's timeout",
                                             model=sub.model, llm_provider="openai")
                yield _Hook("failure", self._failure(dep_id, sub, late, sent.start))
            raise
        except Exception as exc:
            yield _Hook("failure", self._failure(dep_id, sub, exc, sent.start))
            raise
        if not stream:
            yield _Hook("success", self._success(dep_id, sub, answer, sent.start))
        return answer, sent

    def _lean_chunks(self, sent: _Sent, first: Any, chunks: Any) -> _Plan:
        last, chunk = None, first
        try:
            while chunk is not _END:
                last = chunk
                yield _Emit(chunk)
                chunk = yield _Next(chunks)
        except Exception as exc:
            yield _Hook("failure", self._failure(sent.dep_id, sent.request, exc, sent.start))
            raise
        if last is not None and last.usage is not None:
            response = ChatResponse(content=None, usage=last.usage)
            yield _Hook("success", self._success(sent.dep_id, sent.request, response, sent.start))

    def _router_chunks(self, request: ChatRequest, piece: Any, pieces: Any) -> _Plan:
        reader = OpenAIStream(request, self._litellm)
        while piece is not _END:
            chunk = reader.read(piece)
            if chunk is not None:
                yield _Emit(chunk)
            piece = yield _Next(pieces)
        yield _Emit(reader.end())

    def _run(self, plan: _Plan) -> Iterator[Any]:
        outcome: _Outcome = _NOTHING
        while (step := _advance(plan, outcome)) is not None:
            if isinstance(step, _Emit):
                yield step.value
            outcome = _NOTHING if isinstance(step, _Emit) else _outcome(step.run, self)

    async def _arun(self, plan: _Plan) -> AsyncIterator[Any]:
        outcome: _Outcome = _NOTHING
        while (step := _advance(plan, outcome)) is not None:
            if isinstance(step, _Emit):
                yield step.value
            outcome = _NOTHING if isinstance(step, _Emit) else await _aoutcome(step.arun, self)

    def complete(self, request: ChatRequest) -> ChatResponse:
        [response] = self._run(self._plan(request, stream=False))
        return response  # type: ignore[no-any-return]

    async def acomplete(self, request: ChatRequest) -> ChatResponse:
        [response] = [r async for r in self._arun(self._plan(request, stream=False))]
        return response  # type: ignore[no-any-return]

    def stream(self, request: ChatRequest) -> Iterator[ChatChunk]:
        return self._run(self._plan(request, stream=True))

    def astream(self, request: ChatRequest) -> AsyncIterator[ChatChunk]:
        return self._arun(self._plan(request, stream=True))

    def _priced(self, request: ChatRequest, raw: Any) -> ChatRequest:
        """The request as the deployment that answered saw it: its model string prices it."""
        dep_id = str(hidden_params(raw).get("model_id") or "")
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

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        if self.lean is not None:
            self.lean.close()
        # The Router registers its hooks in LiteLLM's global callback lists: take them out.
        router_forget(self._litellm, self.router)

    async def aclose(self) -> None:
        if self.lean is not None:
            await self.lean.aclose()
        self.close()


# -- the plan's steps: each says what to do, and does it on either side ------------------------

_END = object()
"""The end of a stream (a step's answer when there is no next chunk)."""


class _Emit:
    """Hand ``value`` to the caller: the response, or a stream's next chunk."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class _Pick:
    """The Router's pick of a deployment, the ones in ``skipped`` left out."""

    def __init__(self, request: ChatRequest, skipped: tuple[str, ...]) -> None:
        self.request, self.skipped = request, skipped

    def run(self, group: TeacherGroupBackend) -> str:
        return group._pick(self.request, self.skipped)

    async def arun(self, group: TeacherGroupBackend) -> str:
        return await group._apick(self.request, self.skipped)


class _Lean:
    """The lean backend's call: the response, or a stream's first chunk (``_END``: none) and the rest."""

    def __init__(self, request: ChatRequest, stream: bool) -> None:
        self.request, self.stream = request, stream

    def run(self, group: TeacherGroupBackend) -> Any:
        if not self.stream:
            return group.lean.complete(self.request)
        chunks = group.lean.stream(self.request)
        return next(chunks, _END), chunks

    async def arun(self, group: TeacherGroupBackend) -> Any:
        if not self.stream:
            return await group.lean.acomplete(self.request)
        chunks = group.lean.astream(self.request)
        return await anext(chunks, _END), chunks


class _Route:
    """The Router's own call: its response, or a stream's first piece (``_END``: none) and the rest."""

    def __init__(self, kwargs: dict[str, Any], stream: bool) -> None:
        self.kwargs, self.stream = ({**kwargs, **STREAM_USAGE} if stream else kwargs), stream

    def run(self, group: TeacherGroupBackend) -> Any:
        raw = group.router.completion(**self.kwargs)
        if not self.stream:
            return raw
        pieces = iter(raw)
        return next(pieces, _END), pieces

    async def arun(self, group: TeacherGroupBackend) -> Any:
        raw = await group.router.acompletion(**self.kwargs)
        if not self.stream:
            return raw
        pieces = aiter(raw)
        return await anext(pieces, _END), pieces


class _Next:
    """A stream's next chunk, or ``_END``."""

    def __init__(self, chunks: Any) -> None:
        self.chunks = chunks

    def run(self, group: TeacherGroupBackend) -> Any:
        return next(self.chunks, _END)

    async def arun(self, group: TeacherGroupBackend) -> Any:
        return await anext(self.chunks, _END)


class _Hook:
    """An outcome for the routing strategy's logger: ``success`` or ``failure``."""

    def __init__(self, kind: str, args: tuple[Any, ...]) -> None:
        self.kind, self.args = kind, args

    def run(self, group: TeacherGroupBackend) -> None:
        group._call(group._selector(), f"log_{self.kind}_event", *self.args)

    async def arun(self, group: TeacherGroupBackend) -> None:
        await group._acall(group._selector(), f"async_log_{self.kind}_event", *self.args)


@dataclass(frozen=True)
class _Sent:
    """A lean attempt that was sent: to which deployment, what, when."""

    dep_id: str
    request: ChatRequest
    start: datetime


_Step = _Pick | _Lean | _Route | _Next | _Hook
_Plan = Generator[_Step | _Emit, Any, None]
_Outcome = tuple[Any, BaseException | None]
"""What a step gave the plan: its value, or its error."""
_NOTHING: _Outcome = (None, None)


def _advance(plan: _Plan, outcome: _Outcome) -> _Step | _Emit | None:
    """The plan's next step, given the last one's outcome; None when it is done."""
    value, error = outcome
    try:
        return plan.throw(error) if error is not None else plan.send(value)
    except StopIteration:
        return None


def _outcome(run: Callable[[TeacherGroupBackend], Any], group: TeacherGroupBackend) -> _Outcome:
    try:
        return run(group), None
    except Exception as exc:  # the plan decides what a failure means
        return None, exc


async def _aoutcome(arun: Callable[[TeacherGroupBackend], Awaitable[Any]], group: TeacherGroupBackend) -> _Outcome:
    try:
        return await arun(group), None
    except (Exception, asyncio.CancelledError) as exc:  # the plan reports a cut-off attempt, then re-raises
        return None, exc


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
