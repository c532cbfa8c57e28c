"""The teaching decision, written once and free of I/O.

``teach()`` is a generator: it yields commands (``commands.py``) and receives their
results. The sync and async drivers in ``drivers.py`` run the same generator, so there is
one copy of the logic. The data flow of one call under the ``strict`` policy::

    t=0  Start baseline ──────────────────────────────────────┐ (concurrent)
         Start probe ─► Wait ─► Start teacher ─► Wait ─► parse │
                                    Start guided ─► Wait ◄─────┘
         agree? ─► deliver the cheaper   else judge ─► deliver the better

Every failure on the guidance path (probe, teacher, parse, judge) ends in the student's
own answer being delivered, with the reason recorded. Only when the student itself fails
on every path the user depends on is the student's own exception handed back.

When the caller asked for a stream and the answer to deliver is one nothing is compared
with first (the guided answer under ``off`` and ``audit``; the student's own answer when it
is delivered alone), that call is made as a ``Stream``: the decision is made before the
answer exists, and the user reads it as the student writes it. Under ``strict`` and
``verify`` the guided answer is compared or graded whole, and the adapter replays it.

Under ``shadow`` the student's own answer is delivered first (live for a stream); on a
sampled call the flow then does what ``strict`` would have done, after delivery, as an
audit's comparison is done, and records it on ``report.shadow`` (``_shadow``).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Literal

from .._redact import redact
from ..errors import JudgeError, TeacherOutputError, TeacherTruncatedError, is_timeout
from ..messages import CallContext, ChatRequest, ChatResponse
from ..pricing import BaselineStats, Prices
from ..report import (
    AdaptiveInfo,
    AuditInfo,
    BudgetInfo,
    CallReport,
    DiagnosisInfo,
    ErrorInfo,
    GateInfo,
    JudgeInfo,
    KeptAnswer,
    Mode,
    Reason,
    ShadowInfo,
)
from ..usage import UsageByRole
from . import prompts
from .answers import same_final_answer
from .commands import CallResult, Command, Deliver, ModelCall, Start, Stream, Wait
from .deadline import Deadline
from .judges import Judge, Task, Verdict, tool_calls_valid
from .leaks import strip_leaks
from .parse import Diagnosis, split_reasoning
from .protocols import STRUCTURED, Placement, TeacherProtocol

Policy = Literal["strict", "verify", "audit", "off", "shadow"]
POLICIES: tuple[Policy, ...] = ("strict", "verify", "audit", "off", "shadow")
LeakAction = Literal["strip", "fallback", "allow"]
LEAK_ACTIONS: tuple[LeakAction, ...] = ("strip", "fallback", "allow")

# Parameters that make no sense for the probe (it must answer in short plain text).
_PROBE_DROP = frozenset(
    {
        "tools", "tool_choice", "functions", "function_call", "parallel_tool_calls",
        "response_format", "stream", "stream_options", "n", "max_tokens",
        "max_completion_tokens", "logprobs", "top_logprobs", "stop",
    }
)
# The caller's stream parameters never reach a student call as such: a call the user reads
# as it is written is a ``Stream`` (the driver asks the backend for a stream with usage).
_ANSWER_DROP = frozenset({"stream", "stream_options"})


@dataclass(frozen=True)
class LoopSettings:
    """Everything the flow needs to know, already validated (see ``config.AtlasConfig``)."""

    policy: Policy = "strict"
    teacher_model: str | None = None
    teacher_params: dict[str, Any] = field(default_factory=dict)
    """Sent with every teacher call; never prices (those are ``teacher_prices``)."""
    teacher_prices: Prices | None = None
    """The teacher's custom prices (``teacher_params``' LiteLLM pricing keys): the teacher's
    and the judge's calls; None: the backend's price (LiteLLM's cost map)."""
    protocol: TeacherProtocol = STRUCTURED
    teacher_timeout: float | None = STRUCTURED.teacher_timeout
    probe_max_tokens: int = 50
    teacher_max_tokens: int = STRUCTURED.teacher_max_tokens
    skip_level: int = 5
    audit_rate: float = 0.1
    context_chars: int = 12000
    placement: Placement = "auto"
    leak_action: LeakAction = "strip"
    shadow_timeout: float | None = 120.0
    """``shadow``: seconds the guided answer made in the background may take."""


class Slots:
    """At most ``size`` holders at once; ``acquire`` never waits. Thread-safe: the sync
    driver's background threads and an event loop's tasks share one ``Atlas``."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.held = 0
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        with self._lock:
            if self.held >= self.size:
                return False
            self.held += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.held = max(0, self.held - 1)


@dataclass
class CallOptions:
    """Per-call choices made by the caller or the adapter (opt-out, sessions, breaker)."""

    teach: bool = True
    skip_reason: Reason = Reason.OPTED_OUT
    prior_guidance: str | None = None
    reused_from: str | None = None
    """The call whose guidance ``prior_guidance`` is (``reuse: family``); None for a session's."""
    gate: GateInfo | None = None
    """The learned gate's view of the family (``learning/gate.py``), put on the report."""
    mode: Mode | None = None
    """The adaptive policy's mode for the family (``learning/adaptive.py``), put on the report."""
    adaptive: AdaptiveInfo | None = None
    """The evidence behind ``mode``, put on the report."""
    call_id: str | None = None
    """The report's call id, when the caller drew it before the flow (the gate's coins)."""
    session_id: str | None = None
    tenant: str | None = None
    """Whose sessions and family guidance the call may use (``_tenants.py``): ``CallReport.tenant``."""
    keep_answers: bool = False  # fill ``CallReport.answers`` (evaluation)
    learn: bool = True
    """Let the gate learn from this call when it ends; False: the caller will, with a
    better outcome (``Atlas.learn``, the evaluation's grades)."""
    task_family: str | None = None
    """The call's family key (``families.py``): ``CallReport.task_family``."""
    stream: bool = False
    """The caller reads the answer as a stream: one delivered without a comparison is made
    as a live ``Stream``."""
    timeout: float | None = None
    """Seconds the caller gives the whole call (``timeout=``); see ``deadline.py``."""
    student_prices: Prices | None = None
    """The student's custom prices for this call (``pricing.py``): the probe, guided and
    baseline calls; None: the backend's price."""
    baseline_estimate: BaselineStats | None = None
    """The family's measured baselines (``pricing.BaselineStats``): the counterfactual when
    this call runs none. None: no estimate (the report then has no student-alone figures)."""
    budget: BudgetInfo | None = None
    """Why the day's teaching budget kept the call untaught (``budgets.py``), put on the report."""
    background: Slots | None = None
    """``shadow``: the slots its background teaching takes one of (``shadow.max_pending``);
    None: unbounded."""


Flow = Generator[Command, Any, CallReport]


def teach(
    request: ChatRequest,
    settings: LoopSettings,
    judge: Judge,
    options: CallOptions | None = None,
    report: CallReport | None = None,
) -> Flow:
    """The whole call: yields commands, returns the final report (after any audit)."""
    options = options or CallOptions()
    report = report or CallReport(
        student_model=request.model,
        teacher_model=settings.teacher_model,
        policy=settings.policy,
        protocol=settings.protocol.name,
        session_id=options.session_id,
        tenant=options.tenant,
        task_family=options.task_family,
        gate=options.gate,
        mode=options.mode,
        adaptive=options.adaptive,
        budget=options.budget,
        learn=options.learn,
    )
    if options.call_id:
        report.call_id = options.call_id
    if options.keep_answers and report.answers is None:
        report.answers = {}
    deadline = None
    if options.timeout is not None:  # the clock starts when the driver starts the flow
        deadline = Deadline.start(options.timeout, baseline_alongside=settings.policy == "strict")
    prices = {"student": options.student_prices, "teacher": settings.teacher_prices}
    # The policy rides beside every request derived from this one (messages.CallContext);
    # ``_start`` and ``_streamed`` add each call's role.
    request = request.in_context(policy=settings.policy)
    inner = _teach(request, settings, judge, options, report)
    return (yield from _accounted(inner, report, deadline, prices, options.baseline_estimate))


def _accounted(inner: Flow, report: CallReport, deadline: Deadline | None = None,
               prices: dict[str, Prices | None] | None = None, estimate: BaselineStats | None = None) -> Flow:
    """Record usage (priced by ``prices`` per target), latency and errors of every finished
    call, whatever asked for it; hold every call made before delivery to the caller's
    deadline; and where no baseline was measured, put the family's ``estimate`` on the
    report as the counterfactual (at delivery, and again at the end: an audit's baseline
    that failed leaves none measured)."""
    send: Any = None
    delivered: ChatResponse | None = None
    while True:
        try:
            cmd = inner.send(send)
        except StopIteration as stop:
            _estimated(report, delivered, estimate)
            return stop.value  # type: ignore[no-any-return]
        if deadline is not None:
            cmd = deadline.cap(cmd)
            if isinstance(cmd, (Deliver, Stream)):
                deadline = None  # the user has the answer: what follows (an audit) is not capped
        if isinstance(cmd, Deliver):
            delivered = cmd.response
            _estimated(report, delivered, estimate)
        send = yield cmd
        if isinstance(cmd, Wait):
            for result in send:
                _record(report, result, prices)
        elif isinstance(cmd, Stream):
            _record(report, send, prices)


def _record(report: CallReport, result: CallResult, prices: dict[str, Prices | None] | None = None) -> None:
    role = result.call.role
    report.latency_ms[role] = max(report.latency_ms.get(role, 0.0), round(result.latency_ms, 3))
    if result.response is not None:
        price = (prices or {}).get(result.call.target)
        if price is not None:  # the caller's price for this model, not the backend's
            result.response = result.response.model_copy(update={"usage": price.applied(result.response.usage)})
        report.usage.add(role, result.response.usage)
        if report.answers is not None and role in ("guided", "baseline"):
            report.answers[role] = KeptAnswer(
                content=result.response.content, finish_reason=result.response.finish_reason
            )
    elif result.error is not None:
        report.errors.append(_error_info(role, result.error))


def _error_info(role: str, exc: BaseException, message: str | None = None) -> ErrorInfo:
    """What the report keeps of a failure: redacted (keys echoed by providers) and capped."""
    return ErrorInfo(role=role, type=type(exc).__name__, message=redact(message or str(exc))[:500])


def _start(role: Any, target: Any, request: ChatRequest, timeout: float | None = None) -> Start:
    return Start(ModelCall(role=role, target=target, request=request.in_context(role=role), timeout=timeout))


def _await_one(start: Start) -> Generator[Command, Any, CallResult]:
    handle = yield start
    (result,) = yield Wait((handle,))
    return result  # type: ignore[no-any-return]


def _guidance(
    request: ChatRequest, s: LoopSettings, report: CallReport
) -> Generator[Command, Any, str | None]:
    """Probe the student, ask the teacher; the guidance, or None with ``report.reason`` set."""
    protocol = s.protocol
    probe_req = request.replace(
        messages=protocol.probe_messages(request.messages)
    ).with_params(_PROBE_DROP, max_tokens=s.probe_max_tokens, **_transport_timeout(s.teacher_timeout))
    probe = yield from _await_one(_start("probe", "student", probe_req, s.teacher_timeout))
    if probe.response is None:
        report.reason = Reason.PROBE_ERROR
        return None
    # A thinking student's reasoning is not its plan, and the teacher never diagnoses nothing.
    _, plan, _ = split_reasoning(probe.response.text)
    if not plan.strip():
        report.reason = Reason.PROBE_EMPTY
        report.errors.append(ErrorInfo(role="probe", type="EmptyProbe", message=_empty_probe(probe, s)))
        return None
    report.probe = plan

    teacher_req = ChatRequest(
        model=s.teacher_model or "",
        messages=protocol.teacher_messages(request.messages, request.params, plan, s.context_chars),
        params={**s.teacher_params, "max_tokens": s.teacher_max_tokens, **_transport_timeout(s.teacher_timeout)},
        # The policy, not the student's bindings: an adapter's binding runs its student.
        context=CallContext(policy=request.context.policy),
    )
    teacher = yield from _await_one(_start("teacher", "teacher", teacher_req, s.teacher_timeout))
    if teacher.response is None:
        # The driver's deadline and the transport's timeout are the same budget; whichever
        # fires first, the teacher ran out of time.
        report.reason = Reason.TEACHER_TIMEOUT if is_timeout(teacher.error) else Reason.TEACHER_ERROR
        return None
    try:
        diagnosis = protocol.parse(teacher.response)
    except TeacherOutputError as exc:
        report.errors.append(_error_info("teacher", exc))
        truncated = isinstance(exc, TeacherTruncatedError)
        report.reason = Reason.TEACHER_TRUNCATED if truncated else Reason.TEACHER_UNPARSEABLE
        return None
    report.diagnosis = DiagnosisInfo(level=diagnosis.level, text=diagnosis.thinking)
    if diagnosis.level is not None and diagnosis.level >= s.skip_level:
        report.reason = Reason.STRONG_STUDENT
        return None
    guidance = _leak_checked(diagnosis, s.leak_action, report)
    if guidance is None:
        return None
    if not guidance:
        report.reason = Reason.NO_GUIDANCE
        return None
    return guidance


def _empty_probe(probe: CallResult, s: LoopSettings) -> str:
    assert probe.response is not None
    r = probe.response
    why = f"the student's probe had no plan in it (finish reason {r.finish_reason!r}"
    if r.truncated:
        why += f"; a reasoning student can spend all of probe_max_tokens={s.probe_max_tokens} thinking"
    return why + "); the teacher was not asked"


def _leak_checked(diagnosis: Diagnosis, action: LeakAction, report: CallReport) -> str | None:
    """The guidance to send under ``leak_action``; None (reason set) when it is withheld."""
    if not diagnosis.leaks:
        return diagnosis.guidance
    if action == "allow":
        report.guidance_leak = "allowed"
        return diagnosis.guidance
    if action == "strip":
        kept = strip_leaks(diagnosis.guidance)
        if kept:
            report.guidance_leak = "stripped"
            return kept
    report.guidance_leak = "withheld"
    report.reason = Reason.GUIDANCE_LEAKS_ANSWER
    # The message names no text: the leaked sentences state the answer to the user's task.
    report.errors.append(ErrorInfo(
        role="teacher", type="GuidanceLeaksAnswer",
        message=f"{len(diagnosis.leaks)} sentence(s) of the guidance state an answer; not sent (leak_action={action})",
    ))
    return None


def _transport_timeout(seconds: float | None) -> dict[str, float]:
    """Also give the HTTP client the deadline: a call the driver gave up on must not hold a
    connection and a worker for the client's default of minutes."""
    return {} if seconds is None else {"timeout": seconds}


def _cheaper(guided: CallResult, baseline: CallResult) -> Literal["guided", "baseline"]:
    g, b = guided.response, baseline.response
    assert g is not None and b is not None
    return "guided" if g.usage.completion_tokens < b.usage.completion_tokens else "baseline"


def _agree(g: ChatResponse, b: ChatResponse) -> bool:
    if g.truncated or b.truncated:  # a cut-off answer agrees with nothing
        return False
    if g.tool_calls or b.tool_calls:
        if len(g.tool_calls) != len(b.tool_calls):
            return False
        try:
            key_g = sorted((t.name, prompts.dumps(t.parsed_arguments())) for t in g.tool_calls)
            key_b = sorted((t.name, prompts.dumps(t.parsed_arguments())) for t in b.tool_calls)
        except ValueError:
            return False
        return key_g == key_b
    return same_final_answer(g.content, b.content)


def _judge(
    judge: Judge, task: Task, guided: CallResult, baseline: CallResult, report: CallReport
) -> Generator[Command, Any, tuple[Literal["guided", "baseline"], Reason]]:
    """Pairwise decision between two successful answers."""
    g, b = guided.response, baseline.response
    assert g is not None and b is not None
    if g.tool_calls and not tool_calls_valid(g, task.params) and tool_calls_valid(b, task.params):
        return "baseline", Reason.INVALID_TOOL_CALL
    if _agree(g, b):
        return _cheaper(guided, baseline), Reason.AGREEMENT
    try:
        verdict: Verdict = yield from judge.compare(task, g, b)
        if not isinstance(verdict, Verdict) or verdict.winner not in ("guided", "baseline", "tie", "undecided"):
            raise JudgeError(f"the judge returned {verdict!r}, not a Verdict")
    except Exception as exc:  # any judge failure, user code included: the baseline wins
        _judge_failed(report, judge, exc)
        return "baseline", Reason.JUDGE_ERROR
    report.judge = JudgeInfo(name=judge.name, winner=verdict.winner, scores=verdict.scores, detail=verdict.detail)
    if verdict.winner == "guided":
        return "guided", Reason.JUDGE_GUIDED
    if verdict.winner == "baseline":
        return "baseline", Reason.JUDGE_BASELINE
    if verdict.winner == "undecided":  # nothing says the guided answer is right: the baseline
        return "baseline", Reason.NO_EVIDENCE
    return _cheaper(guided, baseline), Reason.JUDGE_TIE


def _judge_failed(report: CallReport, judge: Judge, exc: BaseException) -> None:
    info = _error_info("judge", exc, f"{type(exc).__name__}: {exc}")
    report.judge = JudgeInfo(name=judge.name, detail=info.message)
    report.errors.append(info)


def _settle(report: CallReport, delivered: CallResult | None, baseline: CallResult | None) -> None:
    """Compute the savings figures from what has been spent so far, against this call's
    own baseline (``measured``); without one, none (``_estimated`` may stand in)."""
    total = report.usage.total()
    report.cost_usd = total.cost_usd if total.calls else None
    base = baseline.response if baseline is not None else None
    report.tokens_saved = report.net_tokens = report.student_alone_cost_usd = report.cost_saved_usd = None
    report.counterfactual_basis = report.counterfactual_samples = None
    if base is None:
        return
    got = delivered.response if delivered is not None else None
    if got is not None:
        report.tokens_saved = base.usage.completion_tokens - got.usage.completion_tokens
    report.net_tokens = total.total_tokens - base.usage.total_tokens
    report.counterfactual_basis = "measured"
    _dollars(report, base.usage.cost_usd)


def _dollars(report: CallReport, alone: float | None) -> None:
    report.student_alone_cost_usd = alone
    report.cost_saved_usd = None if alone is None or report.cost_usd is None else alone - report.cost_usd


def _estimated(report: CallReport, delivered: ChatResponse | None, estimate: BaselineStats | None) -> None:
    """The family's mean baseline as the counterfactual of a delivered call that measured
    none; said so on the report (``estimated``, and the samples behind it)."""
    if report.counterfactual_basis is not None or delivered is None or estimate is None or estimate.samples <= 0:
        return
    report.counterfactual_basis = "estimated"
    report.counterfactual_samples = max(1, round(estimate.samples))
    report.tokens_saved = round(estimate.mean_completion_tokens) - delivered.usage.completion_tokens
    report.net_tokens = report.usage.total().total_tokens - round(estimate.mean_total_tokens)
    _dollars(report, estimate.mean_cost_usd)


def _deliver(
    report: CallReport,
    result: CallResult,
    decision: Literal["guided", "baseline", "student_only"],
    reason: Reason,
    baseline: CallResult | None,
) -> Deliver:
    report.decision = decision
    report.reason = reason
    _settle(report, result, baseline)
    return Deliver(result.response, None, report)


def _fail(report: CallReport, error: BaseException | None, baseline: CallResult | None) -> Deliver:
    report.failed = True
    report.reason = Reason.STUDENT_ERROR
    _settle(report, None, baseline)
    return Deliver(None, error, report)


def _streamed(
    report: CallReport, role: Any, request: ChatRequest,
    decision: Literal["guided", "baseline", "student_only"], reason: Reason,
) -> Generator[Command, Any, CallResult]:
    """Make the call to deliver as a live stream: the decision is made before the answer exists."""
    report.decision, report.reason = decision, reason
    result = yield Stream(ModelCall(role=role, target="student", request=request.in_context(role=role)), report)
    return result  # type: ignore[no-any-return]


def _student_alone(
    request: ChatRequest, report: CallReport, reason: Reason, baseline_start: Any | None,
    decision: Literal["baseline", "student_only"] = "student_only", live: bool = False,
) -> Flow:
    """Deliver the student's own answer (reusing a baseline already running; as a live
    stream when the caller reads one and none is running)."""
    handle = baseline_start
    if handle is None and live:
        base = yield from _streamed(report, "baseline", request.with_params(_ANSWER_DROP), decision, reason)
    else:
        if handle is None:
            handle = yield _start("baseline", "student", request.with_params(_ANSWER_DROP))
        (base,) = yield Wait((handle,))
    if base.response is None:
        yield _fail(report, base.error, base)
    else:
        yield _deliver(report, base, decision, reason, base)
    return report


def sampled(call_id: str, rate: float, salt: str = "") -> bool:
    """A deterministic coin from the call id, so an audit decision can be reproduced;
    ``salt`` makes an independent coin for another purpose (the gate's exploration)."""
    digest = int.from_bytes(hashlib.sha256((salt + call_id).encode()).digest()[:8], "big")
    return digest / 2**64 < rate


def _teach(
    request: ChatRequest,
    s: LoopSettings,
    judge: Judge,
    options: CallOptions,
    report: CallReport,
) -> Flow:
    answer_req = request.with_params(_ANSWER_DROP)
    task = Task(request.messages, request.params)

    live = options.stream
    if not options.teach:
        return (yield from _student_alone(request, report, options.skip_reason, None, live=live))
    if s.policy == "shadow":
        return (yield from _shadow(request, s, judge, options, report))

    # Under strict the baseline starts at once, so the comparison costs little latency.
    h_base = (yield _start("baseline", "student", answer_req)) if s.policy == "strict" else None

    if options.prior_guidance:
        guidance: str | None = options.prior_guidance
        report.guidance_reused = True
        report.reused_from = options.reused_from
    else:
        guidance = yield from _guidance(request, s, report)
    if guidance is None:
        return (yield from _student_alone(request, report, report.reason, h_base, live=live))
    report.guidance = guidance

    guided_req = answer_req.replace(
        messages=s.protocol.with_guidance(request.messages, guidance, request.params, s.placement)
    )
    if live and s.policy in ("off", "audit"):
        return (yield from _live_guided(judge, task, request, guided_req, report, s))
    h_guided = yield _start("guided", "student", guided_req)

    if s.policy == "strict":
        assert h_base is not None
        guided, base = yield Wait((h_guided, h_base))
        if guided.response is None or base.response is None:
            yield _one_survivor(report, guided, base)
            return report
        return (yield from _compare_and_deliver(judge, task, guided, base, report))

    (guided,) = yield Wait((h_guided,))
    if guided.response is None:
        return (yield from _student_alone(request, report, Reason.GUIDED_ERROR, None, "baseline", live))
    if s.policy == "verify":
        return (yield from _verify(judge, task, guided, answer_req, report))
    if s.policy == "off":
        yield _deliver(report, guided, "guided", Reason.POLICY_OFF, None)
        return report
    return (yield from _audit(judge, task, guided, answer_req, report, s.audit_rate))


def _live_guided(
    judge: Judge, task: Task, request: ChatRequest, guided_req: ChatRequest, report: CallReport, s: LoopSettings
) -> Flow:
    """``off`` and ``audit`` for a caller reading a stream: the guided answer is delivered
    whatever it says, so it is made as a stream the user reads as the student writes it."""
    reason = Reason.POLICY_OFF if s.policy == "off" else _audit_reason(report, s.audit_rate)
    guided = yield from _streamed(report, "guided", guided_req, "guided", reason)
    if guided.response is None:
        if guided.streamed:  # part of it reached the user: no other answer can follow it
            yield _fail(report, guided.error, None)
            return report
        return (yield from _student_alone(request, report, Reason.GUIDED_ERROR, None, "baseline", True))
    yield _deliver(report, guided, "guided", reason, None)
    if s.policy == "audit":
        yield from _audit_after(judge, task, guided, request.with_params(_ANSWER_DROP), report)
    return report


def _compare_and_deliver(
    judge: Judge, task: Task, guided: CallResult, base: CallResult, report: CallReport
) -> Flow:
    winner, reason = yield from _judge(judge, task, guided, base, report)
    yield _deliver(report, guided if winner == "guided" else base, winner, reason, base)
    return report


def _verify(
    judge: Judge, task: Task, guided: CallResult, answer_req: ChatRequest, report: CallReport
) -> Flow:
    """Grade the guided answer alone; only a failing grade pays for a baseline."""
    assert guided.response is not None
    passed = tool_calls_valid(guided.response, task.params)
    if passed:
        try:
            score = yield from judge.score(task, guided.response)
            if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                raise JudgeError(f"the judge's grade {score!r} is not a finite number")
            report.judge = JudgeInfo(name=judge.name, scores={"guided": float(score)})
            passed = score >= judge.threshold
        except Exception as exc:  # a failed grade is a failing grade: the baseline is run
            _judge_failed(report, judge, exc)
            passed = False
    if passed:
        yield _deliver(report, guided, "guided", Reason.VERIFIED, None)
        return report
    base = yield from _await_one(_start("baseline", "student", answer_req))
    if base.response is None:
        yield _deliver(report, guided, "guided", Reason.BASELINE_ERROR, base)
        return report
    return (yield from _compare_and_deliver(judge, task, guided, base, report))


def _audit(
    judge: Judge, task: Task, guided: CallResult, answer_req: ChatRequest, report: CallReport, rate: float
) -> Flow:
    """Deliver the guided answer now; on a sample of calls, compare with a baseline after."""
    reason = _audit_reason(report, rate)
    yield _deliver(report, guided, "guided", reason, None)
    yield from _audit_after(judge, task, guided, answer_req, report)
    return report


def _audit_reason(report: CallReport, rate: float) -> Reason:
    """Whether this call is sampled for an audit, recorded on the report."""
    chosen = sampled(report.call_id, rate)
    report.audit = AuditInfo(sampled=chosen)
    return Reason.AUDIT_SAMPLED if chosen else Reason.AUDIT_UNCHECKED


def _audit_after(
    judge: Judge, task: Task, guided: CallResult, answer_req: ChatRequest, report: CallReport
) -> Generator[Command, Any, None]:
    """On a sampled call, compare the delivered guided answer with a baseline, after delivery."""
    if report.audit is None or not report.audit.sampled:
        return
    base = yield from _await_one(_start("baseline", "student", answer_req))
    if base.response is not None:
        _, why = yield from _judge(judge, task, guided, base, report)
        report.audit = _audit_info(why)
    _settle(report, guided, base)


def _shadow(request: ChatRequest, s: LoopSettings, judge: Judge, options: CallOptions, report: CallReport) -> Flow:
    """``shadow``, a sampled call: the student's own answer, delivered as it comes (live for
    a stream); then, off the caller's path, what ``strict`` would have done with it: probe,
    teacher, guided answer, the judge's pick, recorded on ``report.shadow``. At most
    ``options.background`` such comparisons run at once (else ``skipped: busy``), each call
    with its timeout; a failure in them is recorded, never raised."""
    answer_req = request.with_params(_ANSWER_DROP)
    report.shadow = ShadowInfo()
    if options.stream:
        base = yield from _streamed(report, "baseline", answer_req, "student_only", Reason.SHADOW_SAMPLED)
    else:
        base = yield from _await_one(_start("baseline", "student", answer_req))
    if base.response is None:  # nothing delivered, nothing to compare with: the student's error
        yield _fail(report, base.error, base)
        return report
    yield _deliver(report, base, "student_only", Reason.SHADOW_SAMPLED, base)
    slots = options.background
    if slots is not None and not slots.acquire():
        report.shadow = ShadowInfo(skipped="busy")
        return report
    try:
        would, decision = yield from _shadow_teaching(request, s, judge, options, report, base)
    finally:
        if slots is not None:
            slots.release()
    report.shadow = _shadow_info(report.usage, would, decision)
    _settle(report, base, base)
    return report


def _shadow_teaching(
    request: ChatRequest, s: LoopSettings, judge: Judge, options: CallOptions, report: CallReport, base: CallResult,
) -> Generator[Command, Any, tuple[Reason, Literal["guided", "baseline", "student_only"]]]:
    """``strict``'s decision against an answer already delivered: the reason and the answer
    it would have given. ``report.reason`` stays the delivered one."""
    delivered = report.reason
    try:
        if options.prior_guidance:
            guidance: str | None = options.prior_guidance
            report.guidance_reused, report.reused_from = True, options.reused_from
        else:
            guidance = yield from _guidance(request, s, report)
        if guidance is None:
            return report.reason, "student_only"
        report.guidance = guidance
        guided_req = request.with_params(_ANSWER_DROP, **_transport_timeout(s.shadow_timeout)).replace(
            messages=s.protocol.with_guidance(request.messages, guidance, request.params, s.placement))
        guided = yield from _await_one(_start("guided", "student", guided_req, s.shadow_timeout))
        if guided.response is None:
            return Reason.GUIDED_ERROR, "baseline"
        winner, why = yield from _judge(judge, Task(request.messages, request.params), guided, base, report)
        return why, winner
    finally:
        report.reason = delivered


def _shadow_info(usage: UsageByRole, would: Reason,
                 decision: Literal["guided", "baseline", "student_only"]) -> ShadowInfo:
    """What teaching would have delivered, and what it would have cost with and without
    ``strict``'s comparison (None where a price is unknown)."""
    answer = usage.guided if usage.guided.calls else usage.baseline
    unchecked = usage.probe + usage.teacher + answer
    return ShadowInfo(reason=would, decision=decision, alone_usd=usage.baseline.cost_usd,
                      unchecked_usd=unchecked.cost_usd if unchecked.calls else None,
                      checked_usd=usage.total().cost_usd)


def _one_survivor(report: CallReport, guided: CallResult, base: CallResult) -> Deliver:
    """Strict policy, one or both student calls failed: deliver what exists."""
    if base.response is not None:
        return _deliver(report, base, "baseline", Reason.GUIDED_ERROR, base)
    if guided.response is not None:
        return _deliver(report, guided, "guided", Reason.BASELINE_ERROR, None)
    return _fail(report, base.error, None)


def _audit_info(why: Reason) -> AuditInfo:
    """What a background comparison says about the guided answer already delivered."""
    if why in (Reason.JUDGE_BASELINE, Reason.INVALID_TOOL_CALL):
        return AuditInfo(sampled=True, winner="baseline", degraded=True)
    if why == Reason.JUDGE_GUIDED:
        return AuditInfo(sampled=True, winner="guided", degraded=False)
    if why in (Reason.JUDGE_ERROR, Reason.NO_EVIDENCE):  # compared, but nothing was learnt
        return AuditInfo(sampled=True)
    return AuditInfo(sampled=True, winner="tie", degraded=False)
