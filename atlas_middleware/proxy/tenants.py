"""A proxied call's tenant: the key LiteLLM authenticated, never a name a client sends.

Every key could send ``x-atlas-tenant`` (or ``metadata.atlas.tenant``, or a body's
``atlas.tenant``) naming another customer's tenant and be served its session and family
guidance. So behind the proxy:

* a call's tenant is its authenticated key and team (``tenants.authenticated_tenant``, read
  by the provider from the metadata LiteLLM writes over the client's);
* only an admin (the master key, or a key whose user has LiteLLM's ``proxy_admin`` role)
  may name one, as a gateway that serves several customers with its one key would: the
  pre-call hook then checks the name and puts it in the metadata as a ``TenantGrant``, a
  value no request's JSON can hold, which is the only named tenant the provider trusts;
* any other key that names a tenant is refused with a 403 before any model is called: a
  client that believes it chose a tenant must not silently get another.
"""

from __future__ import annotations

from typing import Any

from .._tenants import GRANT_FIELD, TenantGrant, check_tenant
from ..provider.options import gathered

ADMIN_ROLE = "proxy_admin"


class TenantRefused(Exception):
    """A key that may not name a tenant named one (the hook answers 403)."""


def is_admin(user_api_key_dict: Any) -> bool:
    """Whether LiteLLM authenticated this call as an admin (the master key, a proxy admin)."""
    role = getattr(user_api_key_dict, "user_role", None)
    return getattr(role, "value", role) == ADMIN_ROLE


def grant(data: dict[str, Any], user_api_key_dict: Any) -> None:
    """Check the tenant a request names, and grant it if its key may name one.

    Raises ``TenantRefused`` for a key that may not, ``InvalidRequestError`` for a bad name.
    A request that names none is left alone: the provider takes the authenticated key's.
    """
    named = gathered(data, data).get("tenant")
    if named is None:
        return
    if not is_admin(user_api_key_dict):
        raise TenantRefused("x-atlas-tenant (atlas.tenant) may be set only with an admin key: a call's tenant "
                            "is its own key's")
    tenant = TenantGrant(check_tenant(named))
    for field in ("metadata", "litellm_metadata"):
        meta = data.get(field)
        if isinstance(meta, dict):
            meta[GRANT_FIELD] = tenant
