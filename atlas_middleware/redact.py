"""Keep secrets out of reports, logs and the ledger.

Provider error messages sometimes echo a key or an Authorization header. Everything the
middleware writes about an error goes through ``redact()`` first: known secrets registered
at construction are replaced exactly, and common key shapes are masked by pattern.
"""

from __future__ import annotations

import re
import threading

_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-~+/=]{8,}"),
    re.compile(r"(?i)((?:api[_-]?key|authorization|x-api-key|master[_-]?key|password)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{4,}"),
    re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
)
_known: set[str] = set()
_lock = threading.Lock()
MASK = "[REDACTED]"


def register_secret(value: str | None) -> None:
    """Remember a secret (an API key given in configuration) so it is always masked."""
    if value and len(value) >= 4:
        with _lock:
            _known.add(value)


def redact(text: str) -> str:
    for secret in sorted(_known, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, text)
    return text
