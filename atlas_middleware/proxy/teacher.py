"""The teacher as the proxy sees it: one bounded check at start, and its state for readiness.

Taught calls fail open: with the teacher down, or named so that LiteLLM cannot route it,
every call is answered by the student alone (``teacher_error``) and nothing else shows.
So at start (``hooks.build``) the proxy checks the teacher once, in the background and
within ``TIMEOUT`` seconds, and logs one WARNING that says what is wrong and what to
change: a model string without its provider prefix (``ATLAS-8B-Thinking`` where LiteLLM
needs ``hosted_vllm/ATLAS-8B-Thinking``), or a ``teacher_api_base`` that does not answer.

``/health/readiness`` shows the result (``gate.py``) beside the teacher's circuit breaker,
without failing: a proxy whose teacher is down still serves every call, untaught. The
public body carries the state words only, never the URL or the error (the log has them).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import httpx

from .._redact import redact, secret_logger

log = secret_logger("atlas_middleware.proxy")

TIMEOUT = 3.0
"""Seconds the start-up check may wait for the teacher's server."""


@dataclass(frozen=True)
class TeacherCheck:
    """``state``: ``unchecked`` (not yet, or nothing to ask: a hosted API), ``reachable``,
    ``unreachable`` or ``misconfigured``; ``detail`` says why, for the log only."""

    state: str = "unchecked"
    detail: str = ""


def _deployments(config: Any) -> list[dict[str, Any]]:
    """The teacher's deployments as ``{model, api_base, api_key}`` (one for a model string)."""
    teacher = config.teacher
    if isinstance(teacher.model, list):
        return [dict(d) for d in teacher.model]
    return [{"model": teacher.model, "api_base": teacher.api_base, "api_key": teacher.key}]


def _routing_problem(model: str, api_base: str | None) -> str | None:
    """Why LiteLLM cannot route ``model`` (no provider prefix, say), or None. An in-process
    teacher (``local/``, ``vllm/``) is not LiteLLM's to route: the provider built it."""
    from ..backends.litellm import import_litellm
    from ..backends.routing import IN_PROCESS_PREFIXES

    if model.startswith(IN_PROCESS_PREFIXES):
        return None
    try:
        import_litellm().get_llm_provider(model, api_base=api_base)
    except Exception as exc:  # LiteLLM's BadRequestError: "LLM Provider NOT provided"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (f"teacher model {model!r} names no provider LiteLLM knows ({redact(first)}); "
                f"write it with its provider prefix, e.g. 'hosted_vllm/{model}' for a vLLM server")
    return None


def _reach_problem(api_base: str, api_key: str | None, timeout: float) -> str | None:
    """Why the teacher's server does not answer, or None (any HTTP answer counts)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        httpx.get(api_base.rstrip("/") + "/models", headers=headers, timeout=timeout, trust_env=False)
    except httpx.HTTPError as exc:
        return (f"teacher_api_base {redact(api_base)} does not answer ({type(exc).__name__}: {redact(str(exc))}); "
                "every taught call falls back to the student alone (teacher_error) until it does")
    return None


def check_teacher(config: Any, timeout: float = TIMEOUT) -> TeacherCheck:
    """The teacher's deployments checked once: routable by LiteLLM, their server answering."""
    asked = False
    for deployment in _deployments(config):
        model, api_base = str(deployment.get("model") or ""), deployment.get("api_base")
        problem = _routing_problem(model, api_base) if model else None
        if problem is not None:
            return TeacherCheck("misconfigured", problem)
        if api_base:
            asked = True
            problem = _reach_problem(str(api_base), deployment.get("api_key"), timeout)
            if problem is not None:
                return TeacherCheck("unreachable", problem)
    return TeacherCheck("reachable" if asked else "unchecked")


class TeacherWatch:
    """The start-up check, run once in the background; ``state`` for readiness."""

    def __init__(self) -> None:
        self.result = TeacherCheck()
        self._started = False
        self._lock = threading.Lock()

    def start(self, config: Any, timeout: float = TIMEOUT) -> threading.Thread | None:
        with self._lock:
            if self._started:
                return None
            self._started = True
        thread = threading.Thread(target=self._run, args=(config, timeout), daemon=True, name="atlas-teacher-check")
        thread.start()
        return thread

    def _run(self, config: Any, timeout: float) -> None:
        try:
            result = check_teacher(config, timeout)
        except Exception as exc:  # a check that fails must not stop the proxy
            result = TeacherCheck("unchecked", f"{type(exc).__name__}: {exc}")
        self.result = result
        if result.state in ("misconfigured", "unreachable"):
            log.warning("atlas teacher %s: %s", result.state, result.detail)
        else:
            log.info("atlas teacher %s", result.state)
