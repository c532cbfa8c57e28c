"""The instructions the teaching flow gives its drivers.

The flow (``flow.py``) is a generator that never does I/O. It yields these commands and
receives their results; ``drivers.py`` runs them with threads (sync) or tasks (async).

========================  ==========================================  ===================
command                   meaning                                     the driver sends back
========================  ==========================================  ===================
``Start(call)``           start a model call now, do not wait         a ``Handle``
``Wait(handles)``         wait for these calls to finish              ``list[CallResult]``
``RunBlocking(fn, args)`` run user code (a judge) off the event loop  a ``BlockingResult``
``Stream(call, report)``  make the call as a stream and hand its      ``CallResult`` when
                          chunks to the user as they come             the stream ends
``Deliver(...)``          the user's answer is ready: return it now   ``None``
========================  ==========================================  ===================

After ``Deliver`` the flow may go on (an ``audit`` comparison) while the user already has
the answer; the generator's return value is the final report, which goes to the ledger.

``Stream`` is the decision made before the answer exists: the delivered answer is this
call's, whatever it says (nothing is compared with it before delivery). The driver opens
the stream and, once its first chunk has come, hands the user a live stream; the result it
sends back when the stream ends says ``streamed`` (some of it reached the user). A stream
that fails before its first chunk comes back at once, not streamed, and the flow may still
choose another answer; after it, the flow can only report the failure (``Deliver`` with
the error). Either way a ``Deliver`` follows, which completes the user's report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..messages import ChatRequest, ChatResponse
from ..usage import Role

Target = Literal["student", "teacher"]
Handle = int


@dataclass(frozen=True)
class ModelCall:
    role: Role
    target: Target
    request: ChatRequest
    timeout: float | None = None
    """Seconds before the driver gives up and reports a ``TeacherTimeout``."""


@dataclass
class CallResult:
    call: ModelCall
    response: ChatResponse | None = None
    error: BaseException | None = None
    latency_ms: float = 0.0
    streamed: bool = False
    """Some of this call's answer already reached the user (a live stream)."""

    @property
    def ok(self) -> bool:
        return self.response is not None


@dataclass(frozen=True)
class Start:
    call: ModelCall


@dataclass(frozen=True)
class Wait:
    handles: tuple[Handle, ...]


@dataclass(frozen=True)
class RunBlocking:
    """Run ``fn(*args)`` (user code: a judge) off the event loop; the driver sends back a
    ``BlockingResult`` with its value or the exception it raised."""

    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()


@dataclass
class BlockingResult:
    value: Any = None
    error: BaseException | None = None


@dataclass(frozen=True)
class Stream:
    """Make ``call`` as a stream whose chunks go to the user as the model writes them.

    ``report`` is the report so far, its decision made: the user's copy until the stream
    ends."""

    call: ModelCall
    report: Any = field(default=None)


@dataclass(frozen=True)
class Deliver:
    """Hand the user ``response`` (or raise ``error``, the student's own exception)."""

    response: ChatResponse | None
    error: BaseException | None = None
    report: Any = field(default=None)


Command = Start | Wait | RunBlocking | Stream | Deliver
