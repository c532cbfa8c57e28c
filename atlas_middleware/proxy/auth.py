"""A 401 for wrong keys on a proxy without a database; LiteLLM's own auth for everything else.

A LiteLLM proxy without a database knows only its master key, and answers any other key
with 400 "No connected db." (it cannot look up virtual keys). Clients and their retry logic
expect 401 for a bad key. Registered as LiteLLM's ``custom_auth`` in ``auto`` mode, this
function rejects such keys with 401 and otherwise defers (by raising a plain exception,
which ``auto`` mode reads as "use LiteLLM's auth"): the master key, and virtual keys
once a database is connected, work exactly as LiteLLM users know them.
"""

from __future__ import annotations

import hmac
from typing import Any


class _UseLiteLLMAuth(Exception):
    """Not ours to decide: LiteLLM's own auth runs."""


def _bare(api_key: str | None) -> str:
    key = (api_key or "").strip()
    return key[len("bearer "):].strip() if key.lower().startswith("bearer ") else key


async def user_api_key_auth(request: Any, api_key: str) -> Any:
    from litellm.proxy import proxy_server
    from litellm.proxy._types import ProxyException

    master_key = getattr(proxy_server, "master_key", None)
    no_database = getattr(proxy_server, "prisma_client", None) is None
    if no_database and isinstance(master_key, str) and master_key:
        if not hmac.compare_digest(_bare(api_key).encode(), master_key.encode()):
            raise ProxyException(message="Authentication Error: invalid API key.", type="auth_error",
                                 param="api_key", code=401)
    raise _UseLiteLLMAuth()
