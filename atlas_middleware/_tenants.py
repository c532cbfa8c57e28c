"""Tenants: whose session guidance, family guidance and gate evidence a call may use. Pure.

A session id and a task tag are strings the caller chooses, so two callers can choose the
same ones; what the middleware remembers under them (the teacher's guidance, which quotes
the caller's task) must stay with the caller that wrote it. Every call therefore has a
tenant, and every state key it reads or writes is scoped by it (``scoped``):

* ``atlas={"tenant": "<name>"}`` (or ``metadata={"atlas": {"tenant": ...}}``) names it: an
  application that serves several customers with one key says which one a call is for. The
  name is checked like a task tag: a string of 1 to ``MAX_TENANT_CHARS`` characters with no
  control characters (``InvalidRequestError`` otherwise), kept without surrounding spaces;
* else the student's ``api_key`` of the call: ``key:`` and the first 32 hex digits of the
  key's SHA-256 (``key_tenant``). Callers with different keys are different tenants; the
  key itself is never stored or logged, only that digest;
* else ``DEFAULT_TENANT``: every call with neither shares it (one application's own calls,
  a student configured with its key elsewhere, the LangChain adapters unless told).

Behind the LiteLLM proxy the caller's word is not enough: ``proxy/tenants.py`` takes the
tenant from the key the proxy authenticated (and its team), and lets only an admin name one.

**Why a plain SHA-256 prefix, not a keyed hash.** API keys are long random strings, so their
digest cannot be reversed or guessed from a list; a keyed hash would add a secret that every
replica must share and that, once rotated, would orphan every session and family. 32 hex
digits (128 bits) make two keys' tenants collide never in practice. The digest is of the
key exactly as sent (no trimming): a key with a stray space is a different credential.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .teaching.families import CONTROL_CHARS, check_label

DEFAULT_TENANT = "default"
"""The tenant of a call that names none and sends no ``api_key``."""
MAX_TENANT_CHARS = 128
KEY_PREFIX = "key:"
_KEY_HEX = 32
_SCOPE_HEX = 32


GRANT_FIELD = "atlas_tenant"
"""The metadata field where the proxy's hooks put a ``TenantGrant`` for the provider."""


class TenantGrant(str):
    """A tenant the proxy's hooks decided, not one a client wrote.

    A request's JSON can only hold plain strings, so a value of this type in a call's
    metadata was put there by this process (``proxy/tenants.py``); the provider trusts it
    and nothing else a client sends.
    """

    __slots__ = ()


def check_tenant(tenant: Any) -> str:
    """The tenant name, trimmed; ``InvalidRequestError`` when it cannot name one."""
    return check_label(tenant, "tenant", MAX_TENANT_CHARS, "leave it out for the key's or the default tenant")


def digest(secret: str) -> str:
    """The first 32 hex digits of ``secret``'s SHA-256 (module docstring: why plain)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()[:_KEY_HEX]


def key_tenant(api_key: str) -> str:
    """The tenant of the callers that use ``api_key``: ``key:<32 hex>``."""
    return KEY_PREFIX + digest(api_key)


def tenant_of(named: Any, api_key: Any) -> str:
    """A call's tenant: the one it names, else its key's, else ``DEFAULT_TENANT``."""
    if named is not None:
        return check_tenant(named)
    secret = getattr(api_key, "get_secret_value", None)  # a pydantic SecretStr
    key = secret() if callable(secret) else api_key
    if isinstance(key, str) and key:
        return key_tenant(key)
    return DEFAULT_TENANT


def authenticated_tenant(key: Any, team: Any) -> str:
    """The tenant of a call the LiteLLM proxy authenticated: ``key:<32 hex>`` of the key it
    names (LiteLLM's hash of a virtual key; digested again, so nothing LiteLLM logs is
    stored), then ``|team:<team id>`` when the key belongs to a team. Keys of one team are
    different tenants: a team is often a department, and a key may move to another team,
    whose guidance it must not take along. No key (a proxy without auth): the default tenant.
    """
    tenant = key_tenant(key) if isinstance(key, str) and key else DEFAULT_TENANT
    if isinstance(team, str) and team:
        label = team if len(team) <= 64 and not CONTROL_CHARS.search(team) else "sha256:" + digest(team)
        tenant += "|team:" + label
    return tenant


def scoped(tenant: str, name: str) -> str:
    """Where the tenant's entry ``name`` (a session id, a family key) is stored.

    ``<32 hex of SHA-256(tenant)>:<name>``: fixed-length, so no tenant and name can make
    another pair's key (tenant ``a:b`` with ``c`` against ``a`` with ``b:c``), and no tenant
    name shows in Redis's key list. Memory and Redis use the same keys.
    """
    return f"{hashlib.sha256(tenant.encode('utf-8', 'surrogatepass')).hexdigest()[:_SCOPE_HEX]}:{name}"
