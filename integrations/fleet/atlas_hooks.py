"""The module a LiteLLM proxy config names to load atlas-middleware.

Copy it next to your proxy's config.yaml (LiteLLM resolves ``atlas_hooks.<name>`` from the
config file's folder) or keep it here. It only builds objects from the installed package;
the teacher and policy come from the ``atlas:`` section of the config file named by
``ATLAS_CONFIG`` and from ``ATLAS_*`` variables.
"""

from atlas_middleware.proxy.auth import user_api_key_auth
from atlas_middleware.proxy.hooks import build

atlas_provider, proxy_handler_instance = build()

__all__ = ["atlas_provider", "proxy_handler_instance", "user_api_key_auth"]
