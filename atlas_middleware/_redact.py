"""Keep secrets out of reports, logs, error bodies and the ledger.

Provider error messages sometimes echo a key or an Authorization header, and LiteLLM
re-raises them with the provider's text (its own masking only knows key *shapes*, such as
``sk-...``). Everything the middleware writes about an error goes through ``redact()``: known
secrets are replaced exactly, and common key shapes are masked by pattern.

Two kinds of known secret:

* ``register_secret``: configuration (the teacher's key, a Redis password), kept for the
  life of the process;
* ``remember_secret``: a key seen on a call (the student's ``api_key``, an Authorization
  header), kept in a bounded most-recently-used set, so that a process serving many
  distinct keys does not grow without end, and a flood of them cannot push out a
  configured one.

What leaves the middleware is redacted at three boundaries:

* exceptions: ``scrub(exc, secrets)`` masks an exception in place, with every exception
  chained to it (a traceback prints them all), keeping its type and fields, so the
  provider's error stays the provider's error (``errors.py``);
* logs: ``SECRET_FILTER`` masks log records (message and traceback); atlas_middleware's
  loggers carry it (``secret_logger``), and the proxy puts it on LiteLLM's loggers
  (``guard_loggers``);
* reports and the ledger: ``redact()`` of every error text (``teaching/flow.py``).
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-~+/=]{8,}"),
    re.compile(r"(?i)((?:api[_-]?key|authorization|x-api-key|master[_-]?key|password)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{4,}"),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
)
MASK = "[REDACTED]"
RECENT_LIMIT = 512
"""Per-call secrets kept (most recently used first): 512 keys of at most ``MAX_SECRET_CHARS``."""
MAX_SECRET_CHARS = 4096
MIN_CALL_SECRET_CHARS = 8
"""Shorter per-call keys (``"x"``, vLLM's ``"EMPTY"``) are placeholders, not secrets: masking
them would mask that word in every message."""
# Request headers whose values are credentials.
_AUTH_HEADERS = frozenset({"authorization", "x-api-key", "api-key", "proxy-authorization"})

_known: set[str] = set()
_recent: OrderedDict[str, None] = OrderedDict()
_lock = threading.Lock()
# Every known secret, longest first: rebuilt under the lock when the set changes, read
# without it (swapping one reference is atomic), so ``redact`` never iterates a set that
# another thread is changing.
_ordered: tuple[str, ...] = ()


def _rebuild() -> None:
    global _ordered
    _ordered = tuple(sorted(_known.union(_recent), key=len, reverse=True))


def register_secret(value: str | None) -> None:
    """Remember a secret of the configuration (an API key, a password) for good."""
    if value and 4 <= len(value) <= MAX_SECRET_CHARS:
        with _lock:
            if value not in _known:
                _known.add(value)
                _rebuild()


def remember_secret(value: Any) -> None:
    """Remember a key seen on a call; the least recently seen is forgotten past ``RECENT_LIMIT``."""
    if not isinstance(value, str) or not MIN_CALL_SECRET_CHARS <= len(value) <= MAX_SECRET_CHARS:
        return
    with _lock:
        if value in _recent:
            _recent.move_to_end(value)  # longest-first order is unchanged: no rebuild
            return
        _recent[value] = None
        while len(_recent) > RECENT_LIMIT:
            _recent.popitem(last=False)
        _rebuild()


def secrets_in(params: Mapping[str, Any]) -> tuple[str, ...]:
    """The credentials among a call's parameters: its ``api_key`` and auth header values."""
    found = [params.get("api_key")]
    headers = params.get("extra_headers") or params.get("headers")
    if isinstance(headers, Mapping):
        for name, value in headers.items():
            if str(name).lower() in _AUTH_HEADERS and isinstance(value, str):
                found.append(value.split(None, 1)[-1] if value.lower().startswith("bearer ") else value)
    return tuple(s for s in found if isinstance(s, str) and len(s) >= MIN_CALL_SECRET_CHARS)


def remember_call(params: Mapping[str, Any]) -> tuple[str, ...]:
    """``remember_secret`` for every credential of a call; returns them."""
    found = secrets_in(params)
    for secret in found:
        remember_secret(secret)
    return found


def redact(text: str, extra: Iterable[str] = ()) -> str:
    """``text`` with every known secret (and ``extra``, this call's) replaced, and key shapes masked."""
    for secret in (*sorted((s for s in extra if s), key=len, reverse=True), *_ordered):
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, text)
    return text


# -- exceptions ------------------------------------------------------------------------------

_TEXT_ATTRIBUTES = ("message", "body", "litellm_debug_info", "detail")
_CHAIN_LIMIT = 16


def _clean(value: Any, extra: tuple[str, ...], depth: int = 0) -> Any:
    if isinstance(value, str):
        return redact(value, extra)
    if depth > 8:
        return value
    if isinstance(value, dict):
        return {k: _clean(v, extra, depth + 1) for k, v in value.items()}
    if type(value) in (list, tuple):  # (not a named tuple: its fields are positional)
        return type(value)(_clean(v, extra, depth + 1) for v in value)
    return value


def _scrub_one(exc: BaseException, extra: tuple[str, ...]) -> None:
    try:
        exc.args = tuple(_clean(a, extra) for a in exc.args)
        own = vars(exc)
        for name in _TEXT_ATTRIBUTES:
            if name in own and isinstance(own[name], (str, dict, list)):
                setattr(exc, name, _clean(own[name], extra))
        notes = getattr(exc, "__notes__", None)
        if isinstance(notes, list):
            notes[:] = [_clean(n, extra) for n in notes]
    except Exception:  # an exception that refuses new attributes is left as it is
        return


def scrub(exc: BaseException, secrets: Iterable[str | None] = ()) -> BaseException:
    """Mask secrets in ``exc`` and in every exception chained to it, in place; returns ``exc``.

    ``secrets``: this call's (they are masked even if the most-recently-used set has
    forgotten them by now). The provider's raw HTTP response attached to some errors is
    left alone: retries read its headers, and nothing the middleware writes prints it.
    """
    extra = tuple(s for s in secrets if isinstance(s, str) and s)
    stack: list[BaseException] = [exc]
    seen: set[int] = set()
    while stack and len(seen) < _CHAIN_LIMIT:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        _scrub_one(current, extra)
        inner = [current.__cause__, current.__context__, getattr(current, "original_exception", None),
                 *(getattr(current, "exceptions", None) or ())]
        stack.extend(e for e in inner if isinstance(e, BaseException))
    return exc


# -- logs ------------------------------------------------------------------------------------


class SecretFilter(logging.Filter):
    """Masks known secrets and key shapes in a record's message and traceback; drops nothing.

    The traceback is formatted here and kept as ``exc_text``, which ``logging.Formatter``
    prints instead of formatting ``exc_info`` again.
    """

    _formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format: the handler reports it as usual
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            text = record.exc_text or self._formatter.formatException(record.exc_info)
            record.exc_text = redact(text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


SECRET_FILTER = SecretFilter()


def _guard(target: logging.Logger | logging.Handler) -> None:
    if SECRET_FILTER not in target.filters:
        target.addFilter(SECRET_FILTER)


def secret_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with ``SECRET_FILTER`` on it.

    (A logger's filters see only the records logged on that very logger, not those its
    children pass up, so every atlas_middleware logger carries the filter itself.)
    """
    logger = logging.getLogger(name)
    _guard(logger)
    return logger


def guard_loggers(*names: str) -> None:
    """Put ``SECRET_FILTER`` on these loggers and on their handlers (a handler's filters also
    see the records of child loggers), and on the root logger's handlers."""
    for name in names:
        logger = logging.getLogger(name)
        _guard(logger)
        for handler in logger.handlers:
            _guard(handler)
    for handler in logging.getLogger().handlers:
        _guard(handler)
