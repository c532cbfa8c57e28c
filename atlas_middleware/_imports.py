"""Objects named by an import path in the settings: ``package.module:attribute``.

A judge (``judge: pkg.mod:fn``) and the export's redaction hook (``--redact pkg.mod:fn``)
are both user code named in text; ``import_object`` finds either, or says in a
``ConfigError`` what could not be found, before any call is made.
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import ConfigError


def import_object(spec: str, label: str, malformed: str) -> Any:
    """The object ``spec`` (``package.module:attr`` or ``package.module:attr.inner``) names.

    ``label`` starts the messages of the errors (``judge``, ``--redact``); ``malformed`` is
    the whole message for a spec that is not an import path.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(malformed)
    try:
        found: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{label} {spec!r}: cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        found = getattr(found, part, None)
        if found is None:
            raise ConfigError(f"{label} {spec!r}: {module_name!r} has no attribute {attr!r}")
    return found
