"""atlas-middleware behind the LiteLLM proxy: hooks, ``x-atlas-*`` headers, metrics, launcher.

Importing this package does not import LiteLLM; ``hooks`` does (it is what the proxy's
config names, through ``integrations/litellm_proxy/atlas_hooks.py``).
"""

from .headers import report_headers
from .launcher import ProxySettings, proxy_command

__all__ = ["ProxySettings", "proxy_command", "report_headers"]
