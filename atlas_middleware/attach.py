"""A call's report attached to the answer it came with, and read back: ``report_of``.

``Atlas.completion`` hands back the student backend's own response (or a stream); the
report rides on it as ``.atlas``. ``report_of`` is the one documented way to read it, for
every shape: our streams, a LiteLLM response, a ``litellm.completion(model="atlas/...")``
stream, and a provider object that takes no new attribute (kept beside it instead).
Kept apart from ``report.py``, the pure report, because this is about objects' lifetimes.
"""

from __future__ import annotations

import weakref

from .report import CallReport

_DETACHED: dict[int, CallReport] = {}
"""Reports of responses that take no attribute, by ``id``, while each response lives."""


def attach_report(response: object, report: CallReport) -> None:
    """Give ``response`` its report as ``.atlas``. A response that takes no new attribute
    (a frozen model, a class with slots) keeps it beside it instead, for ``report_of``,
    until it is garbage-collected: the provider's object is never forced open."""
    try:
        response.atlas = report  # type: ignore[attr-defined]
        return
    except (AttributeError, TypeError, ValueError):
        pass
    key = id(response)
    try:
        weakref.finalize(response, _DETACHED.pop, key, None)
    except TypeError:
        raise TypeError(f"a {type(response).__name__} can carry no report: a backend's raw response must take "
                        "attributes or weak references") from None
    _DETACHED[key] = report


def report_of(response: object) -> CallReport:
    """The ``CallReport`` of an answer: what ``Atlas.completion``/``acompletion`` returned
    (a response or a stream), or a ``litellm.completion(model="atlas/...")`` response or
    stream (once its first chunk has come). The documented way to read a report; the
    ``.atlas`` attribute says the same where the response could take it.

    Raises ``LookupError`` for an object that has no report.
    """
    report = getattr(response, "atlas", None)
    if isinstance(report, CallReport):
        return report
    found = _DETACHED.get(id(response))
    if found is None and type(response).__module__.partition(".")[0] == "litellm":
        from .provider import find_report  # LiteLLM is loaded: it made this object

        found = find_report(response)
    if found is None:
        raise LookupError(f"a {type(response).__name__} carries no ATLAS report")
    return found
