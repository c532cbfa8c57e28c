"""``Atlas``: the teaching loop around one chat-completion call, sync or async.

``Atlas.completion`` takes ``litellm.completion``'s arguments and returns what the student's
backend returned (a ``litellm.ModelResponse`` for LiteLLM models), with the call's
``CallReport`` attached as ``.atlas``. Per-call options go in ``atlas={...}`` (or
``metadata={"atlas": {...}}``, as the proxy passes them):

* ``teach``: ``False`` opts this call out (the student answers alone);
* ``policy``: override the policy for this call (``adaptive``, the default, chooses one
  per task family: ``learning/adaptive.py``);
* ``on_policy``: a callable given the policy the call will run under (``strict``, ``verify``,
  ``audit`` or ``off``; under ``adaptive``, its family's mode) before any model call: for
  adapters that behave by policy (the LangChain middleware's streaming);
* ``session_id``: share one diagnosis across an agent's successive calls;
* ``tenant``: whose sessions and family guidance the call may use (``_tenants.py``); without
  it, the call's ``api_key`` decides (a digest of it), else the ``default`` tenant;
* ``keep_answers``: ``True`` keeps the guided and baseline texts on ``report.answers``;
* ``task``: name the task this call is an instance of (its family, ``t:<task>``); without
  it the family is derived from the request (``teaching/families.py``);
* ``learn``: ``False`` keeps the gate from learning from this call when it ends; the caller
  reports a better outcome itself with ``Atlas.learn`` (the evaluation's graded answers);
* ``bindings``: an adapter's own objects for this call, by adapter name (the LangChain
  adapters' ``CallBinding``): they ride beside the request and every request derived from it
  (``ChatRequest.context``) to the student's backend, and are never sent to a model.

``stream=True`` returns a stream of OpenAI chunks with the report as ``.atlas``. When the
delivered answer is one nothing is compared with first (``off``, ``audit``, the student's
own answer when it is delivered alone), it is a live stream: its chunks come as the student
writes them and the report is completed when it ends. Under ``strict`` and ``verify`` the
stream starts once the decision is made and replays the delivered answer.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

from ._redact import redact, register_secret, secret_logger
from ._tenants import DEFAULT_TENANT, scoped, tenant_of
from .attach import attach_report
from .backends import ChatBackend, RetryingBackend, teacher_backend_for
from .backends.routing import ModelRouter
from .backends.served import served_check
from .budgets import Budget
from .config import POLICY_SETTINGS, AtlasConfig
from .errors import ConfigError, InvalidRequestError
from .learning.gate import TeachingGate, gate_key
from .learning.outcomes import Outcome
from .learning.rebuild import rebuild
from .ledger import Ledger, LedgerRecord, NullLedger, open_ledger
from .ledger.spool import SpooledWriter
from .messages import NO_CONTEXT, CallContext, ChatRequest, is_large, validate_messages
from .pricing import split_prices
from .report import GUIDANCE_LOST, BudgetInfo, CallReport, Reason
from .runtime.drivers import AsyncDriver, AsyncLiveStream, Delivered, LiveStream, SyncDriver
from .state import BreakerStore, SessionStore, SharedState, open_state
from .state.baselines import fair_baseline
from .state.sessions import check_session_id
from .teaching.deadline import seconds_of
from .teaching.families import family_of
from .teaching.flow import CallOptions, LoopSettings, Slots, sampled, teach
from .teaching.judges import Judge
from .teaching.protocols import ATLAS, served_as_atlas
from .tracing import traced

if TYPE_CHECKING:
    from .runtime.streaming import AtlasStream

log = secret_logger("atlas_middleware")

# Guidance that lost (``GUIDANCE_LOST``: the session is taught afresh next time) or whose
# guided call failed is never stored for a session.
_GUIDANCE_FAILED = GUIDANCE_LOST | {Reason.GUIDED_ERROR}
_TEACHER_DOWN = frozenset({Reason.TEACHER_TIMEOUT, Reason.TEACHER_ERROR})
T = TypeVar("T")
SHADOW_SALT = "shadow:"
"""The shadow coin's salt: independent of the audit's and the gate's coins on one call id."""


SWITCHED_OFF = frozenset({"false", "0", "off", "no"})
"""How a per-call switch (``teach``, ``learn``) is turned off in text: headers, metadata."""


def _context(opts: dict[str, Any]) -> CallContext:
    """What rides beside the caller's request: an adapter's bindings (the flow adds each
    call's role and policy)."""
    bindings = opts.get("bindings")
    if bindings is None:
        return NO_CONTEXT
    if not isinstance(bindings, dict):
        raise InvalidRequestError("bindings must be a dict of an adapter's objects by adapter name")
    return CallContext(bindings=bindings)


def _is_false(value: Any) -> bool:
    """A per-call switch set off: ``False``, or one of ``SWITCHED_OFF`` (headers)."""
    return value is False or str(value).lower() in SWITCHED_OFF


def _permitted(options: CallOptions) -> bool:
    """Whether ``_prepare`` asked the breaker for this call and was let through."""
    return options.teach and not options.prior_guidance


class _CallerWaits:
    """The caller's deadline for the call's ledger write, while the caller waits for it.

    A call's record is written before ``completion`` returns; with ``timeout=`` the write
    must not outlast what is left of it (a slow write is spooled, ``ledger/spool.py``).
    Writes made once the caller has its answer (an audit's, a live stream's at its end) are
    bounded by ``ledger_timeout`` alone.
    """

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.deadline: float | None = None

    def until(self, timeout: float | None) -> None:
        self.deadline = None if timeout is None else self.started + timeout

    def over(self) -> None:
        self.deadline = None


class Atlas:
    """The middleware. Build once, share across threads and tasks, ``close()`` at the end."""

    def __init__(
        self,
        teacher: str | list[dict[str, Any]] | dict[str, Any] | None = None,
        *,
        judge: str | Judge | Any | None = None,
        ledger: str | Ledger | None = None,
        config: AtlasConfig | None = None,
        config_file: str | None = None,
        student_backend: ChatBackend | None = None,
        teacher_backend: ChatBackend | None = None,
        **settings: Any,
    ) -> None:
        """``config`` (else ``AtlasConfig.load(config_file)``: the file and ``ATLAS_*``), with
        ``teacher`` and ``**settings`` (``AtlasConfig`` settings, nested or flat) over it;
        ``judge`` and ``ledger`` may be objects instead of settings."""
        overrides = dict(settings, teacher=teacher, judge=judge if isinstance(judge, str) else None,
                         ledger=ledger if isinstance(ledger, str) else None)
        config = config.merged(overrides) if config is not None else AtlasConfig.load(config_file, **overrides)
        if not config.teacher.model and teacher_backend is None:
            raise ConfigError("no teacher model: pass teacher=... or set ATLAS_TEACHER")
        self.config = config
        register_secret(config.teacher.key)

        self.settings: LoopSettings = config.loop_settings()
        if not self.settings.teacher_model:
            self.settings = dataclasses.replace(self.settings, teacher_model="teacher")
        # teacher_protocol: auto asks a self-hosted teacher's server once what it serves.
        self._served = served_check(config) if teacher_backend is None else None
        self._protocol_warned = False
        self._judge_object = None if isinstance(judge, str) else judge  # None: the config's judge
        self.judge: Judge = config.judge_for(self.settings, self._judge_object)
        self.ledger: Ledger = ledger if ledger is not None and not isinstance(ledger, str) else open_ledger(config.ledger_url())
        # Failed ledger writes wait in a local spool and are written when the ledger is back.
        self.ledger_writer = SpooledWriter.for_ledger(self.ledger, config.ledger.spool, timeout=config.ledger.timeout)
        teacher_inner = teacher_backend or teacher_backend_for(config)
        # A teacher group retries across its deployments itself (backends/group.py).
        attempts = 1 if getattr(teacher_inner, "retries_inside", False) else config.teacher.retries
        self.backends: dict[str, ChatBackend] = {
            "student": student_backend or ModelRouter(lean=config.lean_http),
            "teacher": RetryingBackend(teacher_inner, attempts=attempts, budget=self.settings.teacher_timeout),
        }
        # Sessions and breaker: this process's memory, or shared by the fleet (state/).
        state = config.state
        self.state: SharedState = open_state(
            state.url, session_ttl=state.session_ttl, failures=state.circuit_failures,
            cooldown=state.circuit_cooldown, timeout=state.timeout, prefix=state.prefix)
        self.breaker: BreakerStore = self.state.breaker
        self.sessions: SessionStore = self.state.sessions
        # Per task family: the learned gate and guidance reuse (learning/gate.py).
        # policy: adaptive serves a family strict whenever the shared state is down (learning/modes.py).
        self.gate = TeachingGate(self.state.families, config.gate.rule(), learned=config.gate.mode == "learned",
                                 reuse=config.gate.reuse == "family", audit_rate=config.audit_rate,
                                 adaptive=config.adaptive.rule(),
                                 # shadow's comparisons are the adaptive policy's evidence too (its sample is unbiased)
                                 adaptive_default=config.policy in ("adaptive", "shadow"),
                                 available=lambda: not self.state.status().degraded)
        if self.gate.active:
            self._rebuild_gate()
        self._owned = [b for b in (None if student_backend else self.backends["student"],
                                    None if teacher_backend else teacher_inner) if b is not None]
        # Teaching spend per UTC day, capped (budgets.py); shadow's background comparisons, bounded.
        self.budget = (Budget(self.state.budgets, daily_usd=config.budget.daily_usd,
                              family_daily_usd=config.budget.family_daily_usd) if config.budget.active else None)
        self._shadow_slots = Slots(config.shadow.max_pending)
        self._sync = SyncDriver(self.backends)
        self._async = AsyncDriver(self.backends)
        # Whether ``_done`` may wait on I/O: a ledger write, or the shared state (the gate's
        # evidence, baselines, budgets); else ``acompletion`` runs it on the event loop.
        self._done_blocks = not isinstance(self.ledger, NullLedger) or self.state.blocking

    def _rebuild_gate(self) -> None:
        """The gate's evidence from the ledger (``learning/rebuild.py``); a ledger that
        cannot be read costs the gate its history, never the start."""
        if isinstance(self.ledger, NullLedger):
            return
        try:
            rebuild(self.gate, self.ledger, self.config.gate.rebuild, self.state.baselines)
        except Exception as exc:
            log.warning("teaching gate: could not rebuild its evidence from the ledger; starting from none: %s",
                        redact(f"{type(exc).__name__}: {exc}"))

    # -- the two entry points -------------------------------------------------------------

    # ``stream=True`` gives a stream (``AtlasStream``); otherwise the student's backend's own
    # response: a ``litellm.ModelResponse`` for LiteLLM models and the lean HTTP path, an
    # OpenAI-shaped ``CompletionResponse`` for in-process models, a custom backend's ``raw``.
    # Read the report of either with ``report_of``.
    @overload
    def completion(self, model: str, messages: list[dict[str, Any]], *, stream: Literal[True],
                   **kwargs: Any) -> AtlasStream: ...
    @overload
    def completion(self, model: str, messages: list[dict[str, Any]], **kwargs: Any) -> Any: ...

    def completion(self, model: str, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        if self._served is not None:
            self._resolve_protocol()
        waiting = _CallerWaits()
        request, settings, options, stream = self._begin(model, messages, kwargs)
        options.stream = stream is not None
        flow = traced(teach(request, settings, self.judge, options), model, options.stream)
        waiting.until(options.timeout)
        delivered = self._sync.run(
            flow, lambda report, out: self._done(report, request, out, options.learn, waiting.deadline))
        waiting.over()
        self._observe(delivered.report, _permitted(options))
        return self._finish(delivered, stream)

    @overload
    async def acompletion(self, model: str, messages: list[dict[str, Any]], *, stream: Literal[True],
                          **kwargs: Any) -> AtlasStream: ...
    @overload
    async def acompletion(self, model: str, messages: list[dict[str, Any]], **kwargs: Any) -> Any: ...

    async def acompletion(self, model: str, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        # A large request's texts are read and built in worker threads (messages.py): one
        # caller's megabytes must not hold the other callers of this event loop.
        large = is_large(messages)
        if self._served is not None:
            import asyncio  # loaded: this runs on its event loop

            await asyncio.to_thread(self._resolve_protocol)
        waiting = _CallerWaits()
        request, settings, options, stream = await self._off_loop(self._begin, model, messages, kwargs, large=large)
        options.stream = stream is not None
        flow = traced(teach(request, settings, self.judge, options), model, options.stream)
        waiting.until(options.timeout)

        observed = False  # whether ``_observe`` has run for this call

        def end(report: CallReport, out: Delivered) -> None:
            nonlocal observed
            self._done(report, request, out, options.learn, waiting.deadline)
            if not observed:  # the flow ended at delivery: the same thread hop observes it
                observed = True
                self._observe(out.report, _permitted(options))

        async def done(report: CallReport, out: Delivered) -> None:
            if not self._done_blocks:  # no ledger, state in memory: a thread hop would cost more
                end(report, out)
                return
            import asyncio  # loaded: this runs on its event loop (see drivers.py)

            await asyncio.to_thread(end, report, out)

        delivered = await self._async.run(flow, done, offload=large)
        waiting.over()
        if not observed:  # a live stream, or an audit still running: observe the delivery now
            observed = True
            await self._off_loop(self._observe, delivered.report, _permitted(options))
        return self._finish(delivered, stream)

    def _resolve_protocol(self) -> None:
        """``teacher_protocol: auto`` for a teacher served under another name: the first
        call asks the server what it loaded (once, bounded: ``backends/served.py``)."""
        check = self._served
        if check is None:
            return
        root = check.resolve()
        if served_as_atlas(root) and self.settings.protocol is not ATLAS:
            log.warning("teacher %s is served as %s: teacher_protocol auto speaks the atlas protocol to it",
                        check.model, root)
            self.settings = dataclasses.replace(self.config.loop_settings(ATLAS),
                                                teacher_model=self.settings.teacher_model)
            self.judge = self.config.judge_for(self.settings, self._judge_object)  # the protocol's caps
        self._served = None

    async def _off_loop(self, fn: Callable[..., T], *args: Any, large: bool = False) -> T:
        """``fn`` (``_prepare``/``_observe``, which read and write the state) without stalling
        the event loop when the state may wait on the network, or when the request is
        ``large`` (``_prepare`` validates and fingerprints its text).

        A shared state's operations are bounded by ``state_timeout`` and skipped during a
        back-off after a failure, so a thread is enough; a redis.asyncio twin of the state and
        its fallback wrapper would be the same logic written twice. Memory state is called in
        place: a thread hop would cost more than the lookup.
        """
        if not self.state.blocking and not large:
            return fn(*args)
        import asyncio  # loaded: this runs on its event loop

        return await asyncio.to_thread(fn, *args)

    # -- around the flow ------------------------------------------------------------------

    def _prepare(
        self, model: str, messages: Any, kwargs: dict[str, Any]
    ) -> tuple[ChatRequest, LoopSettings, CallOptions, dict[str, Any] | None]:
        if not isinstance(model, str) or not model:
            raise InvalidRequestError("model must be a non-empty model string")
        validate_messages(messages)
        opts = dict(kwargs.pop("atlas", None) or {})
        context = _context(opts)  # from the caller's own ``atlas=``: never from a request body's metadata
        metadata = kwargs.get("metadata")
        if isinstance(metadata, dict) and isinstance(metadata.get("atlas"), dict):
            opts = {**metadata["atlas"], **opts}
        stream = None
        if kwargs.pop("stream", False):
            stream = {"include_usage": bool((kwargs.pop("stream_options", None) or {}).get("include_usage"))}
        try:  # the whole call's deadline, not each inner call's (teaching/deadline.py)
            timeout = seconds_of(kwargs.pop("timeout", None))
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"timeout: {exc}") from None
        request = ChatRequest(model=model, messages=messages, params=kwargs, context=context)

        settings = self.settings
        policy = opts.get("policy")
        if policy is not None:
            if policy not in POLICY_SETTINGS:
                raise InvalidRequestError(f"unknown policy {policy!r}; choose one of {', '.join(POLICY_SETTINGS)}")
            if policy != "adaptive":
                settings = dataclasses.replace(settings, policy=policy)
        adaptive = (policy or self.config.policy) == "adaptive"
        if adaptive and policy is not None:
            settings = dataclasses.replace(settings, policy="strict")  # the safe start; the family's mode follows
        hook = opts.get("on_policy")
        if hook is not None and not callable(hook):
            raise InvalidRequestError("on_policy must be a callable (an adapter's hook), not a value")
        # A ledger that stores texts keeps both answers too (a training export compares them).
        keep = bool(opts.get("keep_answers")) or self.config.ledger.store_texts
        options = CallOptions(session_id=check_session_id(opts.get("session_id")), keep_answers=keep,
                              timeout=timeout, task_family=family_of(messages, kwargs, opts.get("task")),
                              tenant=tenant_of(opts.get("tenant"), kwargs.get("api_key")))
        options.learn = not _is_false(opts.get("learn"))
        settings = self._teaching(model, opts, options, settings, adaptive)
        if hook is not None:  # an adapter that behaves by policy learns the one this call runs under
            hook(settings.policy)
        return request, settings, options, stream

    def _teaching(self, model: str, opts: dict[str, Any], options: CallOptions, settings: LoopSettings,
                  adaptive: bool) -> LoopSettings:
        """Whether and how the call is taught: opted out, the adaptive policy's mode for its
        family (which comes first: a skipped family is not taught from a session either), the
        session's guidance, the gate, the breaker. The settings it runs under."""
        if _is_false(opts.get("teach")):
            options.teach = False
            return settings
        if settings.policy == "shadow" and not self._shadow_sampled(options):
            return settings
        if adaptive and options.task_family:
            settings = self._admit(model, options, settings, adaptive=True)
            if not options.teach:
                return settings
        if not self._within_budget(model, options):
            return settings
        if options.session_id:
            guidance = self.sessions.lookup(scoped(options.tenant or DEFAULT_TENANT, options.session_id))
            if guidance is not None:
                options.reused_from = None  # the session's own guidance comes before the family's
                if guidance:
                    options.prior_guidance = guidance
                else:
                    options.teach, options.skip_reason = False, Reason.STRONG_STUDENT
                return settings
        if not adaptive and self.gate.active and options.task_family:
            settings = self._admit(model, options, settings)
        if _permitted(options) and not self.breaker.allow():
            options.teach, options.skip_reason = False, Reason.CIRCUIT_OPEN
        return settings

    def _shadow_sampled(self, options: CallOptions) -> bool:
        """``policy: shadow``: whether this call is taught in the background (``shadow.rate``, a
        coin from its call id, drawn here so that an unsampled call asks nothing of the state)."""
        options.call_id = options.call_id or uuid.uuid4().hex
        if sampled(options.call_id, self.config.shadow.rate, SHADOW_SALT):
            options.background = self._shadow_slots
            return True
        options.teach, options.skip_reason = False, Reason.SHADOW_UNSAMPLED
        return False

    def _within_budget(self, model: str, options: CallOptions) -> bool:
        """Whether the day's teaching budget lets this call be taught (``budgets.py``); a check
        that fails counts as a state that cannot tell: untaught."""
        if self.budget is None:
            return True
        key = gate_key(model, options.task_family, options.tenant or DEFAULT_TENANT) if options.task_family else None
        try:
            info = self.budget.check(key)
        except Exception as exc:
            log.warning("teaching budget: could not read the day's spend for call %s: %s", options.call_id,
                        redact(f"{type(exc).__name__}: {exc}"))
            info = BudgetInfo(why="state_unavailable")
        if info is None:
            return True
        options.teach, options.skip_reason, options.budget = False, Reason.BUDGET_EXHAUSTED, info
        return False

    def _charge(self, report: CallReport) -> None:
        """Add a finished call's teaching spend to the day's budget counters."""
        if self.budget is None:
            return
        family = report.task_family
        key = gate_key(report.student_model, family, report.tenant or DEFAULT_TENANT) if family else None
        try:
            self.budget.charge(key, report.usage)
        except Exception as exc:  # an uncounted spend costs the budget accuracy, never the call
            log.warning("teaching budget: could not count call %s: %s", report.call_id,
                        redact(f"{type(exc).__name__}: {exc}"))

    def _shadow_verdict(self, report: CallReport) -> None:
        """A shadow's teacher ran after delivery (``_observe`` saw none): its verdict now."""
        why = report.shadow.reason if report.shadow is not None else None
        if why in _TEACHER_DOWN:
            self.breaker.failure()
        elif why is not None and report.usage.teacher.calls:
            self.breaker.success()

    def _begin(
        self, model: str, messages: Any, kwargs: dict[str, Any]
    ) -> tuple[ChatRequest, LoopSettings, CallOptions, dict[str, Any] | None]:
        """``_prepare``, with the student's prices taken out of the request (``pricing.py``:
        they price the student's calls and never reach a backend) and, for a call that may
        run no baseline, its family's measured baselines to estimate the counterfactual."""
        try:
            kwargs, prices = split_prices(kwargs)
        except ValueError as exc:
            raise InvalidRequestError(str(exc)) from None
        request, settings, options, stream = self._prepare(model, messages, kwargs)
        options.student_prices = prices
        # strict (and a call the gate measures) always runs a baseline: no look-up to pay for.
        if options.teach and settings.policy != "strict" and options.task_family:
            key = gate_key(model, options.task_family, options.tenant or DEFAULT_TENANT)
            try:
                options.baseline_estimate = self.state.baselines.get(key)
            except Exception as exc:  # no estimate costs the report a figure, never the call
                log.warning("baseline means: could not read family %s: %s", options.task_family,
                            redact(f"{type(exc).__name__}: {exc}"))
        return request, settings, options, stream

    def _remember_baseline(self, report: CallReport) -> None:
        """Add the call's measured baseline to its family's means, when it is a fair sample of
        what the student alone spends (``state.baselines.fair_baseline``)."""
        baseline = fair_baseline(report)
        if baseline is None or report.task_family is None:
            return
        key = gate_key(report.student_model, report.task_family, report.tenant or DEFAULT_TENANT)
        try:
            self.state.baselines.add(key, baseline)
        except Exception as exc:
            log.warning("baseline means: could not add call %s: %s", report.call_id,
                        redact(f"{type(exc).__name__}: {exc}"))

    def _admit(self, model: str, options: CallOptions, settings: LoopSettings, adaptive: bool = False) -> LoopSettings:
        """The gate's word on this call (``learning/gate.py``): skipped, measured under
        ``strict``, or given its family's guidance; under ``adaptive``, the family's mode
        (``learning/adaptive.py``). The settings it runs under. A gate that fails says
        nothing: the call is taught as without it (under ``adaptive``: as ``strict``)."""
        assert options.task_family is not None
        options.call_id = options.call_id or uuid.uuid4().hex  # the gate's coins are drawn from it
        tenant = options.tenant or DEFAULT_TENANT
        try:
            if adaptive:
                admission = self.gate.adapt(model, options.task_family, options.call_id, tenant)
            else:
                admission = self.gate.admit(model, options.task_family, options.call_id, settings.policy, tenant)
        except Exception as exc:
            log.warning("teaching gate: could not decide for call %s, teaching it: %s", options.call_id,
                        redact(f"{type(exc).__name__}: {exc}"))
            return dataclasses.replace(settings, policy="strict") if adaptive else settings
        options.gate, options.mode, options.adaptive = admission.info, admission.mode, admission.adaptive
        if not admission.teach:
            options.teach, options.skip_reason = False, Reason.GATE_SKIPPED
            return settings
        if admission.guidance:
            options.prior_guidance, options.reused_from = admission.guidance, admission.reused_from
        if admission.policy is not None:
            return dataclasses.replace(settings, policy=admission.policy,  # type: ignore[arg-type]
                                       audit_rate=admission.audit_rate or settings.audit_rate)
        if admission.measure and settings.policy != "strict":
            return dataclasses.replace(settings, policy="strict")
        return settings

    def _observe(self, report: CallReport, permitted: bool) -> None:
        """Update the breaker and the session cache from a delivered call.

        ``permitted``: the breaker let this call through (``_permitted``). Only such a call
        may ``release`` a half-open trial slot; a call refused by the breaker, opted out or
        served from its session never held it, and releasing would let a second trial go.
        """
        if report.reason == Reason.TEACHER_UNPARSEABLE and not self._protocol_warned:
            self._warn_protocol(report)
        if report.reason in _TEACHER_DOWN:
            self.breaker.failure()
        elif report.usage.teacher.calls:
            self.breaker.success()
        elif permitted:
            self.breaker.release()
        if not report.session_id:
            return
        sid = scoped(report.tenant or DEFAULT_TENANT, report.session_id)  # one caller's session is not another's
        if report.guidance_reused and report.reason in GUIDANCE_LOST:
            self.sessions.drop(sid)
        elif not report.guidance_reused and report.guidance and report.reason not in _GUIDANCE_FAILED:
            self.sessions.put(sid, report.guidance)
        elif report.reason in (Reason.STRONG_STUDENT, Reason.NO_GUIDANCE):
            self.sessions.put(sid, "")

    def _warn_protocol(self, report: CallReport) -> None:
        """Once: the teacher's replies are not in its protocol's form. Under ``structured``
        an untagged reply is what an ATLAS teacher writes, so every call falls back."""
        self._protocol_warned = True
        hint = ("an ATLAS teacher served under another name writes no tags: set teacher_protocol: atlas"
                if report.protocol == "structured" else "a general-purpose teacher needs teacher_protocol: structured")
        log.warning("teacher %s: its reply does not follow the %r teacher protocol (teacher_unparseable: the "
                    "student answers alone); %s", self.settings.teacher_model, report.protocol, hint)

    def _finish(self, delivered: Delivered | LiveStream | AsyncLiveStream, stream: dict[str, Any] | None) -> Any:
        """The caller's answer. ``_observe`` has run already, for a live stream too: a stream
        nobody reads to its end must not hold a half-open breaker's trial call."""
        if isinstance(delivered, (LiveStream, AsyncLiveStream)):
            from .runtime.streaming import LiveCompletionStream

            assert stream is not None
            return LiveCompletionStream(delivered, stream["include_usage"])
        report = delivered.report
        if delivered.error is not None:
            raise delivered.error
        response = delivered.response
        assert response is not None
        if stream is not None:
            from .runtime.streaming import CompletionStream, chunks

            return CompletionStream(chunks(response, stream["include_usage"]), report, response)
        if isinstance(response.raw, dict):  # the lean HTTP path: the provider's JSON
            from .backends.litellm import import_litellm

            out_model = import_litellm().ModelResponse(**response.raw)
            out_model.atlas = report
            return out_model
        if response.raw is None:
            out = response.to_openai()
            out.atlas = report
            return out
        # A shallow copy: LiteLLM's logging thread may still be serialising the object it
        # returned, and adding an attribute to that one changes a dict it is iterating.
        out = copy.copy(response.raw)
        attach_report(out, report)
        return out

    def _done(self, report: CallReport, request: ChatRequest, delivered: Delivered, learn: bool = True,
              deadline: float | None = None) -> None:
        """The call is over (its audit too): record it, and let the gate learn from it.
        ``deadline``: when the caller, still waiting, must have its answer (``_CallerWaits``)."""
        self._record(report, request, delivered, deadline)
        self._remember_baseline(report)
        self._charge(report)
        if report.reason == Reason.SHADOW_SAMPLED:
            self._shadow_verdict(report)
        if learn:
            self.learn(report)

    def learn(self, report: CallReport, graded: Outcome | None = None) -> None:
        """Teach the gate (``gate: learned``, ``reuse: family``) what a finished call showed.

        Calls do this themselves when they end. Call it for a call made with
        ``atlas={"learn": False}`` once you know better than its comparison did: ``graded``
        is the outcome of grading both answers against a gold answer
        (``learning.outcomes.from_grades``), as ``atlas-middleware eval`` does. Never raises:
        the answer is delivered, learning from it is a bonus.
        """
        if not self.gate.active:
            return
        try:
            self.gate.observe(report, graded)
        except Exception as exc:
            log.warning("teaching gate: could not learn from call %s: %s", report.call_id,
                        redact(f"{type(exc).__name__}: {exc}"))

    async def alearn(self, report: CallReport, graded: Outcome | None = None) -> None:
        """``learn`` for async callers (off the event loop when the state is Redis)."""
        await self._off_loop(self.learn, report, graded)

    def _record(self, report: CallReport, request: ChatRequest, delivered: Delivered,
                deadline: float | None = None) -> None:
        if isinstance(self.ledger, NullLedger):
            return  # nothing keeps it: skip building the record
        answer = delivered.response.text if delivered.response is not None else None
        prompt = json.dumps(request.messages, sort_keys=True, ensure_ascii=False, default=str)
        record = LedgerRecord.from_report(report, prompt, answer, self.config.ledger.store_texts)
        # Never raises, never waits past the deadline: a failed or slow write is spooled.
        self.ledger_writer.write(record, deadline)

    # -- lifecycle ------------------------------------------------------------------------

    def flush(self) -> None:
        """Wait for background work (audits) started by sync calls; retry spooled records."""
        self._sync.join()
        self.ledger_writer.flush()

    async def aflush(self) -> None:
        """Wait for background work (audits) started by async calls; retry spooled records."""
        import asyncio

        await self._async.join()
        await asyncio.to_thread(self.ledger_writer.flush)

    def close(self) -> None:
        self._sync.close()
        self.ledger_writer.flush()  # what the spool still holds goes in now, if it can
        for backend in self._owned:
            close = getattr(backend, "close", None)
            if callable(close):
                close()
        self.ledger.close()
        self.state.close()

    async def aclose(self) -> None:
        await self._async.join()
        for backend in self._owned:
            aclose = getattr(backend, "aclose", None)
            if callable(aclose):
                await aclose()  # this loop's connection pool, closed on its own loop
        self.close()

    def __enter__(self) -> Atlas:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    async def __aenter__(self) -> Atlas:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()
