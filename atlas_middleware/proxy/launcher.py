"""Start the real LiteLLM proxy with atlas-middleware's provider and hooks.

``atlas-middleware proxy`` is LiteLLM's own ``litellm --config ...`` with three things set:
the config file (ours by default), ``ATLAS_CONFIG`` pointing at it so its ``atlas:``
section configures the teacher, and LiteLLM's offline switches (cost map from the package,
no telemetry). Everything else is the proxy users already know: master key, virtual keys,
``model_list``, workers.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, Field

from ..errors import ConfigError

BUNDLED_CONFIG = Path(__file__).resolve().parents[2] / "integrations" / "litellm_proxy" / "config.yaml"
OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # do not fetch the price map at start
    "LITELLM_TELEMETRY": "False",
    "LITELLM_DONT_SHOW_FEEDBACK_BOX": "True",
}


class ProxySettings(BaseModel):
    config: Path = BUNDLED_CONFIG
    host: str = "127.0.0.1"
    port: int = Field(default=4000, ge=0, le=65535)
    num_workers: int = Field(default=1, ge=1)

    def check(self) -> ProxySettings:
        if not self.config.is_file():
            raise ConfigError(f"proxy config file not found: {self.config} (pass --config FILE)")
        return self


def proxy_command(settings: ProxySettings) -> list[str]:
    return [
        sys.executable, "-m", "litellm.proxy.proxy_cli",
        "--config", str(settings.config),
        "--host", settings.host,
        "--port", str(settings.port),
        "--num_workers", str(settings.num_workers),
    ]


def proxy_env(settings: ProxySettings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for key, value in OFFLINE_ENV.items():
        env.setdefault(key, value)
    env.setdefault("ATLAS_CONFIG", str(settings.config.resolve()))
    if not env.get("LITELLM_MASTER_KEY"):
        raise ConfigError("the LiteLLM proxy needs a master key: set LITELLM_MASTER_KEY")
    # The hook module is found next to the config; the package itself must be importable.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return env


def exec_proxy(settings: ProxySettings) -> None:
    """Replace this process with the proxy (signals reach it directly)."""
    settings.check()
    env = proxy_env(settings)
    cmd = proxy_command(settings)
    os.execve(cmd[0], cmd, env)
