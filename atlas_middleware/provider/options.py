"""What a call brings in (options, its tenant) and the error boundary of what leaves it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from litellm.exceptions import BadRequestError
from pydantic import BaseModel, ConfigDict, field_validator

from .._redact import scrub, secrets_in
from .._tenants import GRANT_FIELD, TenantGrant, authenticated_tenant
from ..client import SWITCHED_OFF
from ..errors import InvalidRequestError

PROVIDER = "atlas"
NO_LOG = {"no-log": True}


# Request headers a client (or the proxy) may set instead of ``metadata["atlas"]``.
HEADER_OPTIONS = {"x-atlas-teach": "teach", "x-atlas-policy": "policy", "x-atlas-session-id": "session_id",
                  "x-atlas-task": "task", "x-atlas-learn": "learn", "x-atlas-tenant": "tenant"}
# LiteLLM's proxy writes the authenticated key's hash and team into every request's
# metadata, over whatever the client sent under these names.
PROXY_KEY_FIELD, PROXY_TEAM_FIELD = "user_api_key_hash", "user_api_key_team_id"


class RequestOptions(BaseModel):
    """Per-request options, typed; read from LiteLLM's untyped ``litellm_params``."""

    model_config = ConfigDict(extra="ignore")

    teach: bool | None = None
    policy: str | None = None
    session_id: Any = None
    """The agent session's id; checked by ``Atlas`` (``sessions.check_session_id``), so a bad one is a 400."""
    task: Any = None
    """The task's name (its family); checked by ``Atlas``, so a bad one is a 400."""
    learn: bool | None = None
    """False: the gate does not learn from this call (the caller reports a graded outcome)."""
    tenant: Any = None
    """The tenant the request names; checked by ``Atlas``. Behind the proxy only a grant counts
    (``call_tenant``)."""

    @field_validator("teach", "learn", mode="before")
    @classmethod
    def _teach(cls, v: Any) -> Any:
        if isinstance(v, str):
            return v.strip().lower() not in SWITCHED_OFF
        return v

    @classmethod
    def from_litellm(cls, litellm_params: dict[str, Any] | None, optional_params: dict[str, Any]) -> RequestOptions:
        options = cls.model_validate(gathered(litellm_params, optional_params))
        options.tenant = call_tenant(litellm_params, options.tenant)
        return options

    def as_call_options(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


def gathered(litellm_params: dict[str, Any] | None, optional_params: dict[str, Any]) -> dict[str, Any]:
    """The request's atlas options, unchecked: headers, then ``metadata["atlas"]``, then ``atlas=``."""
    data: dict[str, Any] = {}
    for key in ("metadata", "litellm_metadata"):
        meta = (litellm_params or {}).get(key)
        if not isinstance(meta, dict):
            continue
        headers = meta.get("headers")
        if isinstance(headers, dict):
            for name, value in headers.items():
                field = HEADER_OPTIONS.get(str(name).lower())
                if field and value not in (None, ""):
                    data[field] = value
        if isinstance(meta.get("atlas"), dict):
            data.update(meta["atlas"])
    if isinstance(optional_params.get("atlas"), dict):  # litellm.completion(..., atlas={...})
        data.update(optional_params["atlas"])
    return data


def call_tenant(litellm_params: dict[str, Any] | None, named: Any) -> Any:
    """The call's tenant (``_tenants.py``): behind the proxy, the hooks' grant, else the key the
    proxy authenticated (a tenant the client named is ignored: any key could name any tenant);
    called directly, the one ``named`` (None: ``Atlas`` takes the call's ``api_key``'s)."""
    metas = [m for m in ((litellm_params or {}).get(k) for k in ("metadata", "litellm_metadata"))
             if isinstance(m, dict)]
    for meta in metas:
        if isinstance(meta.get(GRANT_FIELD), TenantGrant):
            return str(meta[GRANT_FIELD])
    for meta in metas:
        if PROXY_KEY_FIELD in meta:
            return authenticated_tenant(meta.get(PROXY_KEY_FIELD), meta.get(PROXY_TEAM_FIELD))
    return named


@contextmanager
def _boundary(model: str, kwargs: dict[str, Any]) -> Iterator[None]:
    """What leaves the provider for LiteLLM (and, through the proxy, for a client and its log).

    The caller's mistakes (bad messages, an unknown policy) become LiteLLM's 400 error;
    everything else (the student's own errors) passes through as it is, its type and fields
    unchanged, scrubbed of the call's key (redact.py): a provider may quote it, and the
    proxy sends the message to clients who never held that key.
    """
    try:
        yield
    except InvalidRequestError as exc:
        raise BadRequestError(message=str(scrub(exc, secrets_in(kwargs))), model=model,
                              llm_provider=PROVIDER) from exc
    except Exception as exc:
        scrub(exc, secrets_in(kwargs))
        raise
