"""Keys at the atlas proxy: the gate's check before a body is read, and a 401 for wrong keys.

LiteLLM reads a request's whole body before it looks at the key. ``key_problem`` is the
part of its decision that needs only the headers, for the gate (``gate.py``) to answer
before the body: no key at all is a 401, and so is a key other than the master key on a
proxy without a database (it knows no other key). Any other key (a virtual key once a
database is connected, a JWT) is LiteLLM's own to check, after the gate's size bounds.
Proxies LiteLLM runs without auth (no master key), and those whose operator plugged in
another ``custom_auth`` or OAuth2 proxy auth, are not checked here at all: their rules
are not ours to guess.

A LiteLLM proxy without a database answers any key but the master key with 400 "No
connected db."; clients and their retry logic expect 401. Registered as LiteLLM's
``custom_auth`` in ``auto`` mode, ``user_api_key_auth`` rejects such keys with 401 and
otherwise defers (by raising a plain exception, which ``auto`` mode reads as "use LiteLLM's
auth"): the master key, and virtual keys once a database is connected, work exactly as
LiteLLM users know them.

This module owns every read of LiteLLM's proxy state (``proxy_server``'s master key,
database client, custom auth and general settings).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from ..backends.compat import proxy_auth_error

# The headers LiteLLM 1.108 takes a key from, in its order of precedence (``get_api_key``
# in litellm/proxy/auth/user_api_key_auth.py); an operator's ``litellm_key_header_name``
# comes before them all.
KEY_HEADERS = ("x-litellm-api-key", "authorization", "api-key", "x-api-key", "x-goog-api-key",
               "ocp-apim-subscription-key")
# With these, LiteLLM authenticates Authorization tokens without a database (JWT, OAuth2).
_TOKEN_AUTH = ("enable_jwt_auth", "enable_oauth2_auth")
NO_KEY = ("Authentication Error: no API key. Send it as 'Authorization: Bearer <key>' "
          "(or in an x-api-key or api-key header).")
WRONG_KEY = "Authentication Error: invalid API key."


class _UseLiteLLMAuth(Exception):
    """Not ours to decide: LiteLLM's own auth runs."""


def _bare(api_key: str | None) -> str:
    key = (api_key or "").strip()
    return key[len("bearer "):].strip() if key.lower().startswith("bearer ") else key


def _is(key: str, master_key: str) -> bool:
    return hmac.compare_digest(key.encode("utf-8", "surrogateescape"), master_key.encode("utf-8", "surrogateescape"))


def _proxy() -> Any:
    from litellm.proxy import proxy_server

    return proxy_server


def _checks_keys(proxy: Any, settings: Mapping[str, Any]) -> bool:
    """Whether LiteLLM wants a key on every model call, by rules the gate can apply."""
    master_key = getattr(proxy, "master_key", None)
    custom = getattr(proxy, "user_custom_auth", None)
    return (isinstance(master_key, str) and bool(master_key)
            and (custom is None or custom is user_api_key_auth)
            and not settings.get("enable_oauth2_proxy_auth"))


def presented_key(headers: Mapping[str, str], custom_header: str | None = None) -> str | None:
    """The key LiteLLM would read from these headers (lower-cased names), bearer prefix removed."""
    names = ((custom_header.lower(),) if custom_header else ()) + KEY_HEADERS
    for name in names:
        value = _bare(headers.get(name))
        if value:
            return value
    return None


def key_problem(headers: Mapping[str, str]) -> str | None:
    """Why a model call gets a 401 before its body is read, or None to go on (module docstring)."""
    proxy = _proxy()
    settings = getattr(proxy, "general_settings", None)
    settings = settings if isinstance(settings, dict) else {}
    if not _checks_keys(proxy, settings):
        return None
    header = settings.get("litellm_key_header_name")
    key = presented_key(headers, header if isinstance(header, str) else None)
    if key is None:
        return NO_KEY
    if _is(key, proxy.master_key):
        return None
    no_database = getattr(proxy, "prisma_client", None) is None
    if no_database and not any(settings.get(flag) for flag in _TOKEN_AUTH):
        return WRONG_KEY
    return None  # a virtual key or a token: LiteLLM's to check


async def user_api_key_auth(request: Any, api_key: str) -> Any:
    proxy = _proxy()
    master_key = getattr(proxy, "master_key", None)
    no_database = getattr(proxy, "prisma_client", None) is None
    if no_database and isinstance(master_key, str) and master_key:
        if not _is(_bare(api_key), master_key):
            raise proxy_auth_error(WRONG_KEY)
    raise _UseLiteLLMAuth()
