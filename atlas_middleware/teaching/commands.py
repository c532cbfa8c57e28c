"""The instructions the teaching flow gives its drivers.

The flow (``flow.py``) is a generator that never does I/O. It yields these commands and
receives their results; ``drivers.py`` runs them with threads (sync) or tasks (async).

========================  ==========================================  ===================
command                   meaning                                     the driver sends back
========================  ==========================================  ===================
``Start(call)``           start a model call now, do not wait         a ``Handle``
``Wait(handles)``         wait for these calls to finish              ``list[CallResult]``
``Cancel(handle)``        the result is no longer needed              ``None``
``RunBlocking(fn, args)`` run user code (a judge) off the event loop  ``CallResult``-like
``Deliver(...)``          the user's answer is ready: return it now   ``None``
========================  ==========================================  ===================

After ``Deliver`` the flow may go on (an ``audit`` comparison) while the user already has
the answer; the generator's return value is the final report, which goes to the ledger.
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
class Cancel:
    handle: Handle


@dataclass(frozen=True)
class RunBlocking:
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()


@dataclass
class BlockingResult:
    value: Any = None
    error: BaseException | None = None


@dataclass(frozen=True)
class Deliver:
    """Hand the user ``response`` (or raise ``error``, the student's own exception)."""

    response: ChatResponse | None
    error: BaseException | None = None
    report: Any = field(default=None)


Command = Start | Wait | Cancel | RunBlocking | Deliver
