"""The one error tree of atlas-middleware.

::

    AtlasError                      base of everything this library raises itself
    ├── ConfigError (ValueError)    the user's configuration is wrong; raised at construction
    │   └── MissingExtraError (ImportError)
    │                               an optional extra is not installed; names the pip command
    ├── InvalidRequestError (ValueError)
    │                               a request the student could never accept (no messages, ...)
    ├── TeacherError                the teacher path failed; never reaches a user's call,
    │   │                           it is recorded in ``CallReport.errors`` instead
    │   ├── TeacherTimeout (TimeoutError)
    │   └── TeacherOutputError      the teacher answered, but not in a usable form
    │       └── TeacherTruncatedError
    │                               its reply was cut at the token cap before any guidance
    ├── JudgeError                  a judge raised or returned garbage; the baseline wins
    ├── LedgerError                 the ledger could not be opened or written
    └── QueueFullError              a local backend is overloaded (back-pressure)

What is *not* in the tree, on purpose: errors of the student on the path the user depends
on. Those are re-raised exactly as the provider raised them (a ``litellm.RateLimitError``
stays a ``litellm.RateLimitError``), so code written against the student keeps working.
"""

from __future__ import annotations


class AtlasError(Exception):
    """Base class of every error raised by atlas-middleware itself."""


class ConfigError(AtlasError, ValueError):
    """Invalid configuration: unknown policy, bad judge path, bad ledger URL, ...

    Raised when the object is built, never at the first call.
    """


class MissingExtraError(ConfigError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, feature: str, extra: str, module: str) -> None:
        self.extra = extra
        self.module = module
        super().__init__(
            f"{feature} needs the '{module}' package: "
            f"pip install 'atlas-middleware[{extra}]'"
        )


class InvalidRequestError(AtlasError, ValueError):
    """A request that no student could accept, rejected before any call is made."""


class TeacherError(AtlasError):
    """The teacher path (probe, teacher, guidance) failed. The user's call falls back."""


class TeacherTimeout(TeacherError, TimeoutError):
    """The teacher (or a call on the guidance path) did not answer within its budget."""


class TeacherOutputError(TeacherError):
    """The teacher answered but its output could not be used (no guidance in it)."""


class TeacherTruncatedError(TeacherOutputError):
    """The teacher's reply hit its token cap before a complete piece of guidance.

    Raise ``teacher_max_tokens``: a thinking teacher can spend its whole cap reasoning.
    """


class JudgeError(AtlasError):
    """A judge failed or returned something that is not a finite score."""


class LedgerError(AtlasError):
    """The ledger could not be opened or written."""


class QueueFullError(AtlasError):
    """A local backend's request queue is full; retry later or add capacity."""


# -- classifying a provider's error: the one place ------------------------------------------
# By class name along the MRO, because the core imports no provider SDK: LiteLLM's
# ``Timeout`` and the openai SDK's ``APITimeoutError`` are not ``TimeoutError``s, httpx's
# ``TimeoutException`` is not either. The retries (``backends/retry.py``), the teacher group
# and the flow's ``teacher_timeout`` reason all ask here.
_TIMEOUT_NAMES = frozenset({"Timeout", "APITimeoutError", "TimeoutException", "ReadTimeout"})
_TRANSIENT_NAMES = _TIMEOUT_NAMES | {
    "APIConnectionError", "ConnectError", "RateLimitError", "ServiceUnavailableError", "InternalServerError",
}
TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
"""HTTP statuses worth a second try: time-outs, conflicts, rate limits, overloaded servers."""


def _named(exc: BaseException, names: frozenset[str]) -> bool:
    return any(cls.__name__ in names for cls in type(exc).__mro__)


def is_timeout(exc: BaseException | None) -> bool:
    """Whether ``exc`` says a call ran out of time (ours, the transport's or a provider's)."""
    if exc is None:
        return False
    return isinstance(exc, TimeoutError) or _named(exc, _TIMEOUT_NAMES)


def is_transient(exc: BaseException) -> bool:
    """Whether the same call may succeed if made again: a time-out, a lost connection, a
    rate limit, an overloaded server. An HTTP status, where the error has one, decides."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status in TRANSIENT_STATUS
    return _named(exc, _TRANSIENT_NAMES)
