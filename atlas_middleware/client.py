"""``Atlas``: the teaching loop around one chat-completion call, sync or async.

``Atlas.completion`` takes ``litellm.completion``'s arguments and returns what the student's
backend returned (a ``litellm.ModelResponse`` for LiteLLM models), with the call's
``CallReport`` attached as ``.atlas``. Per-call options go in ``atlas={...}`` (or
``metadata={"atlas": {...}}``, as the proxy passes them):

* ``teach``: ``False`` opts this call out (the student answers alone);
* ``policy``: override the policy for this call;
* ``session_id``: share one diagnosis across an agent's successive calls;
* ``keep_answers``: ``True`` keeps the guided and baseline texts on ``report.answers``;
* ``task``: name the task this call is an instance of (its family, ``t:<task>``); without
  it the family is derived from the request (``teaching/families.py``);
* ``learn``: ``False`` keeps the gate from learning from this call when it ends; the caller
  reports a better outcome itself with ``Atlas.learn`` (the evaluation's graded answers).

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
import logging
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from .backends import ChatBackend, RetryingBackend, teacher_backend_for
from .backends.routing import ModelRouter
from .config import AtlasConfig
from .drivers import AsyncDriver, AsyncLiveStream, Delivered, LiveStream, SyncDriver
from .errors import ConfigError, InvalidRequestError
from .judges import Judge, resolve_judge
from .learning.gate import TeachingGate
from .learning.outcomes import Outcome
from .learning.rebuild import rebuild
from .ledger import Ledger, LedgerRecord, NullLedger, open_ledger
from .ledger.spool import SpooledWriter
from .messages import ChatRequest, validate_messages
from .redact import redact, register_secret
from .report import GUIDANCE_LOST, CallReport, Reason
from .state import BreakerStore, SessionStore, SharedState, open_state
from .teaching.deadline import seconds_of
from .teaching.families import family_of
from .teaching.flow import POLICIES, CallOptions, LoopSettings, teach

log = logging.getLogger("atlas_middleware")

# Guidance that lost (``GUIDANCE_LOST``: the session is taught afresh next time) or whose
# guided call failed is never stored for a session.
_GUIDANCE_FAILED = GUIDANCE_LOST | {Reason.GUIDED_ERROR}
_TEACHER_DOWN = frozenset({Reason.TEACHER_TIMEOUT, Reason.TEACHER_ERROR})
T = TypeVar("T")


SWITCHED_OFF = frozenset({"false", "0", "off", "no"})
"""How a per-call switch (``teach``, ``learn``) is turned off in text: headers, metadata."""


def _is_false(value: Any) -> bool:
    """A per-call switch set off: ``False``, or one of ``SWITCHED_OFF`` (headers)."""
    return value is False or str(value).lower() in SWITCHED_OFF


def _permitted(options: CallOptions) -> bool:
    """Whether ``_prepare`` asked the breaker for this call and was let through."""
    return options.teach and not options.prior_guidance


class Atlas:
    """The middleware. Build once, share across threads and tasks, ``close()`` at the end."""

    def __init__(
        self,
        teacher: str | None = None,
        *,
        teacher_api_base: str | None = None,
        teacher_api_key: str | None = None,
        policy: str | None = None,
        judge: str | Judge | Any | None = None,
        ledger: str | Ledger | None = None,
        config: AtlasConfig | None = None,
        config_file: str | None = None,
        student_backend: ChatBackend | None = None,
        teacher_backend: ChatBackend | None = None,
        **settings: Any,
    ) -> None:
        overrides = dict(settings, teacher=teacher, teacher_api_base=teacher_api_base,
                         teacher_api_key=teacher_api_key, policy=policy,
                         ledger=ledger if isinstance(ledger, str) else None)
        judge_spec = judge
        if judge is not None and not isinstance(judge, str):
            judge = None  # an object judge is not a config value
        overrides["judge"] = judge
        if config is None:
            config = AtlasConfig.load(config_file, **overrides)
        else:
            merged = config.model_dump()
            merged.update({k: v for k, v in overrides.items() if v is not None})
            config = AtlasConfig.build(merged)
        if not config.teacher and teacher_backend is None:
            raise ConfigError("no teacher model: pass teacher=... or set ATLAS_TEACHER")
        self.config = config
        key = config.teacher_api_key.get_secret_value() if config.teacher_api_key else None
        register_secret(key)

        self.settings: LoopSettings = config.loop_settings()
        if not self.settings.teacher_model:
            self.settings = dataclasses.replace(self.settings, teacher_model="teacher")
        self.judge: Judge = resolve_judge(
            judge_spec if judge_spec is not None else config.judge,
            teacher_model=self.settings.teacher_model,
            timeout=self.settings.teacher_timeout,
            max_tokens=self.settings.teacher_max_tokens,
        )
        self.ledger: Ledger = ledger if ledger is not None and not isinstance(ledger, str) else open_ledger(config.ledger_url())
        # Failed ledger writes wait in a local spool and are written when the ledger is back.
        self.ledger_writer = SpooledWriter.for_ledger(self.ledger, config.spool)
        teacher_inner = teacher_backend or teacher_backend_for(config)
        # A teacher group retries across its deployments itself (backends/group.py).
        attempts = 1 if getattr(teacher_inner, "retries_inside", False) else config.teacher_retries
        self.backends: dict[str, ChatBackend] = {
            "student": student_backend or ModelRouter(lean=config.lean_http),
            "teacher": RetryingBackend(teacher_inner, attempts=attempts, budget=self.settings.teacher_timeout),
        }
        # Sessions and breaker: this process's memory, or shared by the fleet (state/).
        self.state: SharedState = open_state(
            config.state, session_ttl=config.session_ttl, failures=config.circuit_failures,
            cooldown=config.circuit_cooldown, timeout=config.state_timeout, prefix=config.state_prefix)
        self.breaker: BreakerStore = self.state.breaker
        self.sessions: SessionStore = self.state.sessions
        # Per task family: the learned gate and guidance reuse (learning/gate.py).
        self.gate = TeachingGate(self.state.families, config.gate_rule(), learned=config.gate == "learned",
                                 reuse=config.reuse == "family", audit_rate=config.audit_rate)
        if self.gate.active:
            self._rebuild_gate()
        self._owned = [b for b in (None if student_backend else self.backends["student"],
                                    None if teacher_backend else teacher_inner) if b is not None]
        self._sync = SyncDriver(self.backends)
        self._async = AsyncDriver(self.backends)

    def _rebuild_gate(self) -> None:
        """The gate's evidence from the ledger (``learning/rebuild.py``); a ledger that
        cannot be read costs the gate its history, never the start."""
        if isinstance(self.ledger, NullLedger):
            return
        try:
            rebuild(self.gate, self.ledger, self.config.gate_rebuild)
        except Exception as exc:
            log.warning("teaching gate: could not rebuild its evidence from the ledger; starting from none: %s",
                        redact(f"{type(exc).__name__}: {exc}"))

    # -- the two entry points -------------------------------------------------------------

    def completion(self, model: str, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        request, settings, options, stream = self._prepare(model, messages, kwargs)
        options.stream = stream is not None
        flow = teach(request, settings, self.judge, options)
        delivered = self._sync.run(flow, lambda report, out: self._done(report, request, out, options.learn))
        self._observe(delivered.report, _permitted(options))
        return self._finish(delivered, stream)

    async def acompletion(self, model: str, messages: list[dict[str, Any]], **kwargs: Any) -> Any:
        request, settings, options, stream = await self._off_loop(self._prepare, model, messages, kwargs)
        options.stream = stream is not None
        flow = teach(request, settings, self.judge, options)

        async def done(report: CallReport, out: Delivered) -> None:
            import asyncio  # loaded: this runs on its event loop (see drivers.py)

            await asyncio.to_thread(self._done, report, request, out, options.learn)

        delivered = await self._async.run(flow, done)
        await self._off_loop(self._observe, delivered.report, _permitted(options))
        return self._finish(delivered, stream)

    async def _off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn`` (``_prepare``/``_observe``, which read and write the state) without stalling
        the event loop when the state may wait on the network.

        A shared state's operations are bounded by ``state_timeout`` and skipped during a
        back-off after a failure, so a thread is enough; a redis.asyncio twin of the state and
        its fallback wrapper would be the same logic written twice. Memory state is called in
        place: a thread hop would cost more than the lookup.
        """
        if not self.state.blocking:
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
        request = ChatRequest(model=model, messages=messages, params=kwargs)

        settings = self.settings
        policy = opts.get("policy")
        if policy is not None:
            if policy not in POLICIES:
                raise InvalidRequestError(f"unknown policy {policy!r}; choose one of {', '.join(POLICIES)}")
            settings = dataclasses.replace(settings, policy=policy)
        # A ledger that stores texts keeps both answers too (a training export compares them).
        keep = bool(opts.get("keep_answers")) or self.config.store_texts
        options = CallOptions(session_id=opts.get("session_id"), keep_answers=keep,
                              timeout=timeout, task_family=family_of(messages, kwargs, opts.get("task")))
        options.learn = not _is_false(opts.get("learn"))
        if _is_false(opts.get("teach")):
            options.teach = False
            return request, settings, options, stream
        if options.session_id:
            guidance = self.sessions.lookup(options.session_id)
            if guidance is not None:
                if guidance:
                    options.prior_guidance = guidance
                else:
                    options.teach, options.skip_reason = False, Reason.STRONG_STUDENT
                return request, settings, options, stream
        if self.gate.active and options.task_family:
            settings = self._admit(model, options, settings)
        if _permitted(options) and not self.breaker.allow():
            options.teach, options.skip_reason = False, Reason.CIRCUIT_OPEN
        return request, settings, options, stream

    def _admit(self, model: str, options: CallOptions, settings: LoopSettings) -> LoopSettings:
        """The gate's word on this call (``learning/gate.py``): skipped, measured under
        ``strict``, or given its family's guidance; the settings it runs under. A gate that
        fails says nothing: the call is taught as without it."""
        assert options.task_family is not None
        options.call_id = uuid.uuid4().hex  # the gate's coins are drawn from it
        try:
            admission = self.gate.admit(model, options.task_family, options.call_id, settings.policy)
        except Exception as exc:
            log.warning("teaching gate: could not decide for call %s, teaching it: %s", options.call_id,
                        redact(f"{type(exc).__name__}: {exc}"))
            return settings
        options.gate = admission.info
        if not admission.teach:
            options.teach, options.skip_reason = False, Reason.GATE_SKIPPED
            return settings
        if admission.guidance:
            options.prior_guidance, options.reused_from = admission.guidance, admission.reused_from
        if admission.measure and settings.policy != "strict":
            return dataclasses.replace(settings, policy="strict")
        return settings

    def _observe(self, report: CallReport, permitted: bool) -> None:
        """Update the breaker and the session cache from a delivered call.

        ``permitted``: the breaker let this call through (``_permitted``). Only such a call
        may ``release`` a half-open trial slot; a call refused by the breaker, opted out or
        served from its session never held it, and releasing would let a second trial go.
        """
        if report.reason in _TEACHER_DOWN:
            self.breaker.failure()
        elif report.usage.teacher.calls:
            self.breaker.success()
        elif permitted:
            self.breaker.release()
        sid = report.session_id
        if not sid:
            return
        if report.guidance_reused and report.reason in GUIDANCE_LOST:
            self.sessions.drop(sid)
        elif not report.guidance_reused and report.guidance and report.reason not in _GUIDANCE_FAILED:
            self.sessions.put(sid, report.guidance)
        elif report.reason in (Reason.STRONG_STUDENT, Reason.NO_GUIDANCE):
            self.sessions.put(sid, "")

    def _finish(self, delivered: Delivered | LiveStream | AsyncLiveStream, stream: dict[str, Any] | None) -> Any:
        """The caller's answer. ``_observe`` has run already, for a live stream too: a stream
        nobody reads to its end must not hold a half-open breaker's trial call."""
        if isinstance(delivered, (LiveStream, AsyncLiveStream)):
            from .streaming import LiveCompletionStream

            assert stream is not None
            return LiveCompletionStream(delivered, stream["include_usage"])
        report = delivered.report
        if delivered.error is not None:
            raise delivered.error
        response = delivered.response
        assert response is not None
        if stream is not None:
            from .streaming import CompletionStream, chunks

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
        try:
            out.atlas = report
        except (AttributeError, TypeError, ValueError):
            object.__setattr__(out, "atlas", report)
        return out

    def _done(self, report: CallReport, request: ChatRequest, delivered: Delivered, learn: bool = True) -> None:
        """The call is over (its audit too): record it, and let the gate learn from it."""
        self._record(report, request, delivered)
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

    def _record(self, report: CallReport, request: ChatRequest, delivered: Delivered) -> None:
        if isinstance(self.ledger, NullLedger):
            return  # nothing keeps it: skip building the record
        answer = delivered.response.text if delivered.response is not None else None
        prompt = json.dumps(request.messages, sort_keys=True, ensure_ascii=False, default=str)
        record = LedgerRecord.from_report(report, prompt, answer, self.config.store_texts)
        self.ledger_writer.write(record)  # never raises: a failed write is spooled

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
