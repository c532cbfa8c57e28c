"""``atlas-middleware proxy``: argument and environment checks that need no proxy process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from atlas_middleware.cli import proxy as proxy_cli  # registers the command on ``app``
from atlas_middleware.cli.app import app
from atlas_middleware.errors import ConfigError
from atlas_middleware.proxy import launcher
from atlas_middleware.proxy.launcher import (
    BUNDLED_CONFIG,
    ProxySettings,
    check_atlas_config,
    proxy_command,
    proxy_env,
)
from atlas_middleware.testing.proxy import GENERAL_SETTINGS, LITELLM_SETTINGS, free_port


def test_command_is_litellms_own_proxy(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("model_list: []\n")
    cmd = proxy_command(ProxySettings(config=config, host="127.0.0.1", port=4011))
    assert cmd[1:3] == ["-m", "litellm.proxy.proxy_cli"]
    assert cmd[cmd.index("--config") + 1] == str(config)
    assert cmd[cmd.index("--port") + 1] == "4011" and cmd[cmd.index("--host") + 1] == "127.0.0.1"


def test_env_is_offline_and_points_atlas_at_the_config(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("model_list: []\natlas: {teacher: openai/t}\n")
    env = proxy_env(ProxySettings(config=config), {"LITELLM_MASTER_KEY": "sk-m"})
    assert env["ATLAS_CONFIG"] == str(config.resolve())
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    # without an atlas: section the file is LiteLLM's alone: ATLAS_* variables configure atlas
    (tmp_path / "plain.yaml").write_text("model_list: []\n")
    assert "ATLAS_CONFIG" not in proxy_env(ProxySettings(config=tmp_path / "plain.yaml"), {"LITELLM_MASTER_KEY": "m"})
    # an explicit ATLAS_CONFIG wins
    env = proxy_env(ProxySettings(config=config), {"LITELLM_MASTER_KEY": "sk-m", "ATLAS_CONFIG": "/x.yaml"})
    assert env["ATLAS_CONFIG"] == "/x.yaml"
    with pytest.raises(ConfigError, match="LITELLM_MASTER_KEY"):
        proxy_env(ProxySettings(config=config), {})


def test_cli_reports_configuration_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert proxy_cli.proxy is not None
    runner = CliRunner()
    result = runner.invoke(app, ["proxy", "--config", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2 and "not found" in result.output
    monkeypatch.delenv("LITELLM_MASTER_KEY", raising=False)
    result = runner.invoke(app, ["proxy", "--config", str(BUNDLED_CONFIG)])
    assert result.exit_code == 2 and "LITELLM_MASTER_KEY" in result.output


# -- a bad atlas configuration stops ``atlas-middleware proxy`` before LiteLLM starts ----------


def _config(tmp_path: Path, atlas: Any = None, **extra: Any) -> Path:
    data: dict[str, Any] = {"model_list": [{"model_name": "m", "litellm_params": {"model": "atlas/openai/m"}}],
                            "litellm_settings": LITELLM_SETTINGS, "general_settings": GENERAL_SETTINGS, **extra}
    if atlas is not None:
        data["atlas"] = atlas
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _check(path: Path, env: dict[str, str] | None = None) -> Any:
    settings = ProxySettings(config=path)
    return check_atlas_config(settings, proxy_env(settings, {"LITELLM_MASTER_KEY": "sk-m", **(env or {})}))


GOOD = {"teacher": "openai/t", "teacher_api_base": "http://127.0.0.1:9/v1", "ledger": "none"}


@pytest.mark.parametrize(("atlas", "message"), [
    ({**GOOD, "bogus_key": 1}, "bogus_key: no such setting"),
    ({**GOOD, "policy": "sometimes"}, "unknown policy 'sometimes'"),
    ({**GOOD, "teacher_timeout": -1}, r"teacher\.timeout"),
    ({"teacher_api_base": "http://127.0.0.1:9/v1"}, "no teacher model"),
    ({**GOOD, "judge": "no_such_module_here:judge"}, "cannot import 'no_such_module_here'"),
    ({**GOOD, "ledger": "mysql://db/atlas"}, "unknown ledger URL"),
    ("not a mapping", "no teacher model"),
])
def test_check_refuses_what_would_fail_every_call(tmp_path: Path, atlas: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _check(_config(tmp_path, atlas))


def test_check_reads_what_the_proxy_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _check(_config(tmp_path, GOOD)).teacher.model == "openai/t"
    # ATLAS_* variables, from the environment or the config's environment_variables
    assert _check(_config(tmp_path), {"ATLAS_TEACHER": "openai/env"}).teacher.model == "openai/env"
    path = _config(tmp_path, environment_variables={"ATLAS_TEACHER": "os.environ/MY_TEACHER", "ATLAS_LEDGER": "none"})
    assert _check(path, {"MY_TEACHER": "openai/indirect"}).teacher.model == "openai/indirect"
    with pytest.raises(ConfigError, match="ATLAS_POLICY|policy"):
        _check(_config(tmp_path, GOOD), {"ATLAS_POLICY": "bogus"})
    # a judge module next to where the proxy runs is importable, as it is for the proxy
    (tmp_path / "my_judge_mod.py").write_text("def judge(messages, answer):\n    return 1.0\n")
    monkeypatch.chdir(tmp_path)
    assert _check(_config(tmp_path, {**GOOD, "judge": "my_judge_mod:judge"})).judge.use == "my_judge_mod:judge"
    # a proxy config that does not load the atlas provider has nothing to check
    (tmp_path / "plain.yaml").write_text("model_list: []\n")
    assert _check(tmp_path / "plain.yaml") is None


def test_cli_exits_before_litellm_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[list[str]] = []

    def execve(path: str, argv: list[str], env: dict[str, str]) -> None:
        started.append(argv)
        raise SystemExit(0)

    monkeypatch.setattr(launcher.os, "execve", execve)
    monkeypatch.setenv("LITELLM_MASTER_KEY", "sk-m")
    runner = CliRunner()
    result = runner.invoke(app, ["proxy", "--config", str(_config(tmp_path, {**GOOD, "bogus_key": 1}))])
    assert result.exit_code == 2, result.output
    assert "invalid atlas-middleware configuration: bogus_key" in result.output and started == []
    result = runner.invoke(app, ["proxy", "--config", str(_config(tmp_path, GOOD))])
    assert result.exit_code == 0 and started and "litellm.proxy.proxy_cli" in started[0]


@pytest.mark.slow
def test_proxy_command_exits_non_zero_with_the_message(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    env.update({"LITELLM_MASTER_KEY": "sk-m"})
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "atlas_middleware.cli", "proxy", "--config",
                           str(_config(tmp_path, {**GOOD, "bogus_key": 1})), "--port", str(port)],
                          capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "invalid atlas-middleware configuration: bogus_key: no such setting" in done.stderr
    assert time.monotonic() - t0 < 60  # LiteLLM never started (its import alone takes seconds)
    assert "Uvicorn running" not in done.stdout + done.stderr
