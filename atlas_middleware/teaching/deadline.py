"""The caller's ``timeout``: one deadline for the whole taught call, as for one plain call.

``litellm.completion(..., timeout=5)`` promises an answer or LiteLLM's ``Timeout`` within
5 s. A taught call makes three to five calls, so passing ``timeout`` on to each of them
would let the whole call take several times that. Instead every call the flow starts
before the user's answer is delivered is capped to what is left of the deadline (the
driver gives up on it then, and its transport is told the same), and the guidance path
leaves the student time to answer alone:

* under ``strict`` the baseline runs beside the guidance path from the start, so probe,
  teacher and judge may use the whole budget: when they run out, the baseline is there;
* under the other policies the student's own answer starts only after the guidance path
  gives up, so probe and teacher get the first half of the budget.

The student's answers (guided, baseline) that the deadline cuts off fail with LiteLLM's
own ``Timeout`` (``drivers.py``), so a call that cannot be answered in time raises what a
plain call would. Work after delivery (an audit's baseline and judge) is not capped: the
user is no longer waiting for it.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

from .commands import Command, Start, Stream

_GUIDANCE_ROLES = frozenset({"probe", "teacher"})
_MIN_SECONDS = 0.001  # a call started at the deadline still gets a (failing) chance


def seconds_of(timeout: Any) -> float | None:
    """A caller's ``timeout`` in seconds: a number, a numeric string, or an ``httpx.Timeout``
    (its longest phase); None when it sets no limit."""
    if timeout is None:
        return None
    if isinstance(timeout, bool):
        raise ValueError("timeout must be a number of seconds, not a bool")
    if isinstance(timeout, (int, float, str)):
        seconds = float(timeout)
    else:
        phases = [getattr(timeout, name, None) for name in ("connect", "read", "write", "pool")]
        known = [float(p) for p in phases if isinstance(p, (int, float))]
        if not known:
            return None
        seconds = max(known)
    if not seconds > 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return seconds


@dataclass(frozen=True)
class Deadline:
    end: float
    """``time.monotonic()`` by which the user's answer is due."""
    guidance_end: float
    """Probe and teacher must be done by then."""

    @classmethod
    def start(cls, seconds: float, baseline_alongside: bool) -> Deadline:
        now = time.monotonic()
        return cls(end=now + seconds, guidance_end=now + (seconds if baseline_alongside else seconds / 2))

    def cap(self, cmd: Command) -> Command:
        """``cmd`` with its call limited to what is left of the deadline."""
        if not isinstance(cmd, (Start, Stream)):
            return cmd
        call = cmd.call
        end = self.guidance_end if call.role in _GUIDANCE_ROLES else self.end
        left = max(end - time.monotonic(), _MIN_SECONDS)
        transport = seconds_of(call.request.params.get("timeout"))
        request = call.request.with_params(timeout=left if transport is None else min(transport, left))
        if isinstance(cmd, Stream):
            # A live stream has no driver deadline (its chunks reach the user as they come);
            # its transport's timeout bounds it.
            return dataclasses.replace(cmd, call=dataclasses.replace(call, request=request))
        timeout = left if call.timeout is None else min(call.timeout, left)
        return Start(dataclasses.replace(call, request=request, timeout=timeout))
