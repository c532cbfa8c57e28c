"""Run the real LiteLLM proxy (``atlas-middleware proxy``) as a subprocess, for tests and benchmarks.

    with OpenAITestServer(ScriptedBackend({...})) as upstream:
        with ProxyProcess(student_url=upstream.url, atlas={"teacher": "openai/gpt-4o",
                                                           "teacher_api_base": upstream.url}) as proxy:
            client = openai.OpenAI(base_url=proxy.url, api_key=proxy.master_key)

It writes a config (the ``litellm_settings`` lines of the bundled config, a ``model_list``
of ``atlas/`` students, an ``atlas:`` section) and the hook module into a temporary folder,
starts the proxy on a free loopback port and waits for ``/health/liveliness``.

``passthrough`` adds ``model_list`` entries that LiteLLM serves itself (no ``atlas/``), and
``atlas=None`` writes a plain LiteLLM proxy config (no hooks, no ``atlas:`` section): the
baseline the benchmarks compare against. ``deployments`` sets ``litellm_params`` of single
``model_list`` entries by name (a key or an ``api_base`` of their own). ``num_workers`` is
passed to the proxy.
``launcher="litellm"`` starts it as ``litellm --config`` (with ``ATLAS_CONFIG`` set), the
way an existing LiteLLM deployment runs the hooks, instead of ``atlas-middleware proxy``.
``config_file`` runs a given config instead (copied byte for byte beside the hook module,
addresses from ``env``): the fleet test runs the deployment recipes' own file this way.
``virtual_keys`` (key -> ``{"team_id": ..., "user_role": ...}``) are keys the proxy accepts
beside the master key, as LiteLLM does for the virtual keys of its database
(``key_table_auth``): tests of what one key may see of another's calls need no database.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from ..backends.compat import proxy_key_auth

HOOK_MODULE = (
    '"""Loads atlas-middleware into the LiteLLM proxy."""\n\n'
    "from atlas_middleware.proxy.auth import user_api_key_auth  # noqa: F401\n"
    "from atlas_middleware.proxy.hooks import build\n\n"
    "atlas_provider, proxy_handler_instance = build()\n"
)
LITELLM_SETTINGS: dict[str, Any] = {
    "custom_provider_map": [{"provider": "atlas", "custom_handler": "atlas_hooks.atlas_provider"}],
    "callbacks": ["atlas_hooks.proxy_handler_instance"],
}
GENERAL_SETTINGS: dict[str, Any] = {
    "master_key": "os.environ/LITELLM_MASTER_KEY",
    "custom_auth": "atlas_hooks.user_api_key_auth",
    "custom_auth_settings": {"mode": "auto"},
    "custom_auth_run_common_checks": True,
}


def key_table_auth(table: dict[str, dict[str, str]]) -> Callable[[Any, str], Awaitable[Any]]:
    """A ``custom_auth`` that knows ``table``'s keys as LiteLLM knows a database's virtual keys.

    A key of the table gets the ``UserAPIKeyAuth`` LiteLLM would build for it (hashed, with
    its team and role); any other key goes to atlas's own auth (the master key, or a 401).
    """
    from ..proxy.auth import _bare, user_api_key_auth

    async def auth(request: Any, api_key: str) -> Any:
        key = _bare(api_key)
        if key in table:
            return proxy_key_auth({"api_key": key, **table[key]})
        return await user_api_key_auth(request, api_key)

    return auth


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProxyProcess:
    def __init__(
        self,
        *,
        student_url: str,
        atlas: dict[str, Any] | None,
        models: dict[str, str] | None = None,
        passthrough: dict[str, str] | None = None,
        num_workers: int = 1,
        student_api_key: str = "sk-student-test",
        deployments: dict[str, dict[str, Any]] | None = None,
        master_key: str = "sk-atlas-test-master",
        env: dict[str, str] | None = None,
        startup_timeout: float = 180.0,
        launcher: str = "atlas-middleware",
        config_file: Path | None = None,
        virtual_keys: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.student_url = student_url
        self.atlas = dict(atlas) if atlas is not None else None
        self.models = models or {"gpt-4o-mini": "openai/gpt-4o-mini"}
        self.passthrough = dict(passthrough or {})
        self.num_workers = num_workers
        self.student_api_key = student_api_key
        self.deployments = {name: dict(params) for name, params in (deployments or {}).items()}
        self.master_key = master_key
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        if launcher not in ("atlas-middleware", "litellm"):
            raise ValueError(f"launcher must be 'atlas-middleware' or 'litellm', not {launcher!r}")
        self.launcher = launcher
        self.config_file = config_file
        self.virtual_keys = dict(virtual_keys or {})
        self.port = 0
        self.folder: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/v1"

    @property
    def config_path(self) -> Path:
        assert self.folder is not None
        return self.folder / "config.yaml"

    def log(self) -> str:
        if self.folder is None or not (self.folder / "proxy.log").exists():
            return ""
        return (self.folder / "proxy.log").read_text(errors="replace")

    def _write_config(self) -> None:
        assert self.folder is not None
        hooks = HOOK_MODULE
        if self.virtual_keys:
            hooks += ("from atlas_middleware.testing.proxy import key_table_auth\n\n"
                      f"user_api_key_auth = key_table_auth({self.virtual_keys!r})\n")
        (self.folder / "atlas_hooks.py").write_text(hooks)
        if self.config_file is not None:
            shutil.copyfile(self.config_file, self.config_path)
            return
        prefix = "atlas/" if self.atlas is not None else ""
        entries = [(name, prefix + student) for name, student in self.models.items()]
        entries += list(self.passthrough.items())
        config: dict[str, Any] = {
            "model_list": [
                {"model_name": name, "litellm_params": {
                    "model": model, "api_base": self.student_url, "api_key": self.student_api_key,
                    **self.deployments.get(name, {})}}
                for name, model in entries
            ],
        }
        if self.atlas is not None:
            config.update({"litellm_settings": LITELLM_SETTINGS, "general_settings": GENERAL_SETTINGS,
                           "atlas": self.atlas})
        else:  # a plain LiteLLM proxy
            config["general_settings"] = {"master_key": GENERAL_SETTINGS["master_key"]}
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))

    def start(self) -> ProxyProcess:
        self.launch()
        self._wait_ready()
        return self

    def launch(self) -> ProxyProcess:
        """Start the process without waiting for it (several replicas start side by side)."""
        self.folder = Path(tempfile.mkdtemp(prefix="atlas-proxy-"))
        self.port = self.port or free_port()
        self._write_config()
        env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
        env.update({"LITELLM_MASTER_KEY": self.master_key, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                    "LITELLM_TELEMETRY": "False", "NO_PROXY": "*", "no_proxy": "*"})
        env.update(self.extra_env)
        cmd = [sys.executable, "-m", "atlas_middleware.cli", "proxy", "--config", str(self.config_path),
               "--host", "127.0.0.1", "--port", str(self.port), "--num-workers", str(self.num_workers)]
        if self.launcher == "litellm":
            cmd = [sys.executable, "-m", "litellm.proxy.proxy_cli", *cmd[cmd.index("--config"):]]
            cmd[cmd.index("--num-workers")] = "--num_workers"
            env.setdefault("ATLAS_CONFIG", str(self.config_path))
        log = open(self.folder / "proxy.log", "wb")  # noqa: SIM115 (closed by the child's exit)
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.folder)
        log.close()
        return self

    def wait_started(self) -> ProxyProcess:
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the proxy exited with {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                with urllib.request.urlopen(f"{self.base}/health/liveliness", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"the proxy did not start within {self.startup_timeout:g} s:\n{self.log()[-4000:]}")

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process = None

    def cleanup(self) -> None:
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
        self.cleanup()
