"""What a teacher's server says it serves: ``teacher_protocol: auto`` beyond the model name.

``auto`` picks the ``atlas`` protocol when the teacher's model string names an ATLAS
teacher. vLLM serves a model under any name (``--served-model-name my-teacher``), and then
the name says nothing; its ``GET /v1/models`` still reports the model it loaded, in
``root`` (a Hugging Face id, or the path it was loaded from). ``ServedModelCheck`` asks
once, on the first taught call, and caches the answer for the process: one request, bounded
by ``TIMEOUT`` seconds, on one call's critical path at most (concurrent first calls wait for
that one answer, later calls never ask). Anything but a clear answer (a server without
the route, one that is down, a reply without ``root``) keeps the name rule: fail-open.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from .._redact import redact, secret_logger

if TYPE_CHECKING:
    from ..config import AtlasConfig

log = secret_logger("atlas_middleware")

TIMEOUT = 2.0
"""Seconds the one ``/v1/models`` request may take (connect and read)."""

# Answers for the process, by (api_base, model): every ``Atlas`` on one teacher asks once.
_answers: dict[tuple[str, str], str | None] = {}
_lock = threading.Lock()


def served_name(model: str) -> str:
    """The name a LiteLLM model string asks the server for: without its provider prefix
    (``hosted_vllm/my-teacher`` -> ``my-teacher``; ``hosted_vllm/Org/Model`` -> ``Org/Model``)."""
    return model.split("/", 1)[1] if "/" in model else model


def root_of(listing: Any, name: str) -> str | None:
    """The ``root`` a ``/v1/models`` listing gives for ``name`` (the only model, if just one)."""
    data = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(data, list):
        return None
    entries = [e for e in data if isinstance(e, dict)]
    entry = next((e for e in entries if e.get("id") == name), entries[0] if len(entries) == 1 else None)
    root = entry.get("root") if entry is not None else None
    return root if isinstance(root, str) and root else None


def fetch_root(api_base: str, model: str, api_key: str | None, timeout: float = TIMEOUT) -> str | None:
    """Ask the server once what ``model`` is (its ``root``); None when it cannot say."""
    import httpx  # here: importing the core pulls no HTTP client (tests/test_public_api.py)

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = api_base.rstrip("/") + "/models"
    try:
        response = httpx.get(url, headers=headers, timeout=timeout, trust_env=False)
        response.raise_for_status()
        return root_of(response.json(), served_name(model))
    except (httpx.HTTPError, ValueError) as exc:
        log.info("teacher_protocol auto: %s did not say what it serves (%s); the model name decides",
                 redact(url), redact(f"{type(exc).__name__}: {exc}"))
        return None


class ServedModelCheck:
    """One teacher's ``root``, asked for once (``resolve``) and remembered for the process."""

    def __init__(self, api_base: str, model: str, api_key: str | None, timeout: float = TIMEOUT) -> None:
        self.api_base = api_base
        self.model = model
        self._api_key = api_key
        self._timeout = timeout

    def resolve(self) -> str | None:
        key = (self.api_base.rstrip("/"), self.model)
        with _lock:  # concurrent first calls wait for the one request, not each their own
            if key not in _answers:
                _answers[key] = fetch_root(self.api_base, self.model, self._api_key, self._timeout)
            return _answers[key]


def forget() -> None:
    """Drop the remembered answers (tests; a teacher redeployed under the same name)."""
    with _lock:
        _answers.clear()


def served_check(config: AtlasConfig) -> ServedModelCheck | None:
    """The check ``auto`` needs for this teacher, or None: another protocol set, a name
    that already says ATLAS, a teacher group, or a hosted API (no ``teacher_api_base``)."""
    from ..teaching.protocols import ATLAS, protocol_for

    teacher = config.teacher
    model = teacher.model
    if teacher.protocol != "auto" or not isinstance(model, str) or not teacher.api_base:
        return None
    if protocol_for("auto", model) is ATLAS:
        return None
    return ServedModelCheck(teacher.api_base, model, teacher.key)
