"""Start the real LiteLLM proxy with atlas-middleware's provider and hooks.

``atlas-middleware proxy`` is LiteLLM's own ``litellm --config ...`` with three things set:
the config file (ours by default), ``ATLAS_CONFIG`` pointing at it when it has an
``atlas:`` section (which then configures the teacher), and LiteLLM's offline switches
(cost map from the package, no telemetry). Everything else is the proxy users already
know: master key, virtual keys, ``model_list``, workers.

Before LiteLLM starts, ``check_atlas_config`` reads the atlas configuration the proxy will
read and raises ``ConfigError`` for what would make every taught call fail (an unknown key,
a bad value, no teacher, a judge that cannot be imported, a ledger URL that cannot be
opened, an ``atlas/`` deployment's price that is not one): the command exits with the message instead of starting a proxy that looks
healthy. Backends are not built here (an in-process teacher would be loaded twice); what
fails there shows on the proxy's ``/health/readiness``.

A ``litellm_settings`` key LiteLLM does not have (``custom_provider_mapp``) is set by the
proxy on the ``litellm`` module and read by nothing: ``unknown_litellm_settings`` names it
(with the closest real one) in a warning before the start, as the misspelling would
otherwise leave the provider or its hooks silently unloaded.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from ..config import ENV_PREFIX, AtlasConfig
from ..errors import ConfigError, LedgerError

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


def _proxy_config(path: Path) -> dict[str, Any]:
    """The proxy's config file as a mapping (empty when it is not one: LiteLLM will say so)."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read the proxy config {path}: {exc}") from None
    return data if isinstance(data, dict) else {}


def proxy_env(settings: ProxySettings, base: Mapping[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for key, value in OFFLINE_ENV.items():
        env.setdefault(key, value)
    # Without an ``atlas:`` section the whole file would be read as atlas settings (and
    # refused): such a proxy is configured by ATLAS_* variables alone.
    if "atlas" in _proxy_config(settings.config):
        env.setdefault("ATLAS_CONFIG", str(settings.config.resolve()))
    if not env.get("LITELLM_MASTER_KEY"):
        raise ConfigError("the LiteLLM proxy needs a master key: set LITELLM_MASTER_KEY")
    # The hook module is found next to the config; the package itself must be importable.
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
    return env


def _with_config_environment(env: Mapping[str, str], config: Mapping[str, Any]) -> dict[str, str]:
    """``env`` with the ATLAS_* entries of the config's ``environment_variables`` applied.

    LiteLLM sets those variables when it loads the config, before it imports our hooks.
    """
    merged = dict(env)
    variables = config.get("environment_variables")
    for key, value in (variables.items() if isinstance(variables, dict) else ()):
        if not (isinstance(key, str) and key.startswith(ENV_PREFIX)):
            continue
        if isinstance(value, str) and value.startswith("os.environ/"):
            found = env.get(value[len("os.environ/"):])
            if found is not None:
                merged[key] = found
        elif value is not None:
            merged[key] = str(value)
    return merged


@contextmanager
def _import_path(env: Mapping[str, str]) -> Iterator[None]:
    """Import as the proxy will: from its working folder and its PYTHONPATH (a judge module)."""
    extra = [os.getcwd(), *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p)]
    saved = list(sys.path)
    sys.path[:0] = [p for p in extra if p not in sys.path]
    try:
        yield
    finally:
        sys.path[:] = saved


def loads_atlas(config: Mapping[str, Any]) -> bool:
    """Whether a proxy config registers the ``atlas`` provider (else there is nothing to check)."""
    settings = config.get("litellm_settings")
    providers = settings.get("custom_provider_map") if isinstance(settings, dict) else None
    return any(isinstance(p, dict) and p.get("provider") == "atlas" for p in providers or ())


def check_deployment_prices(config: Mapping[str, Any]) -> None:
    """Every ``atlas/`` deployment's student prices, read as the provider reads them
    (``litellm_params``, else ``model_info``; ``pricing.py``), or a ``ConfigError`` naming the
    deployment and the field: a bad price would make every call to it a 400."""
    from ..pricing import PRICE_PARAMS, split_prices

    for i, entry in enumerate(config.get("model_list") or ()):
        params = entry.get("litellm_params") if isinstance(entry, dict) else None
        if not isinstance(params, dict) or not str(params.get("model", "")).startswith("atlas/"):
            continue
        info = entry.get("model_info") if isinstance(entry.get("model_info"), dict) else {}
        prices = {k: params[k] if params.get(k) is not None else info.get(k) for k in PRICE_PARAMS}
        try:
            split_prices(prices)
        except ValueError as exc:
            raise ConfigError(f"model_list[{i}] ({entry.get('model_name')}): {exc}") from None


def check_atlas_config(settings: ProxySettings, env: Mapping[str, str]) -> AtlasConfig | None:
    """The atlas configuration the proxy will read from ``env``, checked as ``Atlas`` checks it.

    Raises ``ConfigError`` with the message the proxy would otherwise answer every taught
    call with; None for a proxy config that does not load the ``atlas`` provider. The
    ledger is opened and closed (an SQLite file is created where the proxy would create
    it; a Postgres server that is down is only a warning, as in the proxy).
    """
    from ..ledger import open_ledger

    proxy_config = _proxy_config(settings.config)
    if not loads_atlas(proxy_config):
        return None
    env = _with_config_environment(env, proxy_config)
    check_deployment_prices(proxy_config)
    config = AtlasConfig.load(env=env)
    if not config.teacher.model:
        raise ConfigError("no teacher model: set 'teacher' in the atlas: section of the proxy config, "
                          "or ATLAS_TEACHER")
    if isinstance(config.teacher.model, list):
        # A teacher group: its Router is built (and dropped) now, so a setting it does not
        # take stops the launch instead of every taught call.
        from ..backends import teacher_backend_for

        teacher_backend_for(config).close()  # type: ignore[attr-defined]
    with _import_path(env):
        config.judge_for(config.loop_settings())
    try:
        open_ledger(config.ledger_url()).close()
    except LedgerError as exc:
        raise ConfigError(f"ledger: {exc}") from None
    return config


# The ``litellm_settings`` keys LiteLLM 1.108's proxy reads itself (``load_config``) instead
# of setting them on the ``litellm`` module; every other key must be a module attribute.
PROXY_READ_SETTINGS = frozenset({
    "cache", "guardrails", "global_prompt_directory", "global_bitbucket_config", "global_gitlab_config",
    "priority_reservation_settings", "callbacks", "model_group_settings", "post_call_rules", "max_budget",
    "max_internal_user_budget", "default_max_internal_user_budget", "default_internal_user_params",
    "custom_provider_map", "success_callback", "failure_callback", "audit_log_callbacks", "cache_params",
    "responses", "max_ui_session_budget", "default_team_settings", "upperbound_key_generate_params",
    "key_alias_pattern", "json_logs", "budget_reset_time", "drop_params", "request_timeout",
})


def unknown_litellm_settings(config: Mapping[str, Any]) -> list[str]:
    """A warning for each ``litellm_settings`` key LiteLLM has no such setting for."""
    settings = config.get("litellm_settings")
    if not isinstance(settings, dict):
        return []
    from ..backends.litellm import import_litellm

    litellm = import_litellm()
    known = sorted(PROXY_READ_SETTINGS | {n for n in dir(litellm) if not n.startswith("_")})
    out = []
    for key in settings:
        if not isinstance(key, str) or key in PROXY_READ_SETTINGS or hasattr(litellm, key):
            continue
        close = difflib.get_close_matches(key, [k for k in known if k.islower()], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        out.append(f"litellm_settings.{key} is not a LiteLLM setting: LiteLLM ignores it{hint}")
    return out


def exec_proxy(settings: ProxySettings) -> None:
    """Check the atlas configuration, then replace this process with the proxy (signals reach it directly)."""
    settings.check()
    for warning in unknown_litellm_settings(_proxy_config(settings.config)):
        print(f"warning: {warning}", file=sys.stderr, flush=True)
    env = proxy_env(settings)
    check_atlas_config(settings, env)
    cmd = proxy_command(settings)
    os.execve(cmd[0], cmd, env)
