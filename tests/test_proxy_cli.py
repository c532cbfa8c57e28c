"""``atlas-middleware proxy``: argument and environment checks that need no proxy process."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from atlas_middleware.cli import proxy as proxy_cli  # registers the command on ``app``
from atlas_middleware.cli.app import app
from atlas_middleware.errors import ConfigError
from atlas_middleware.proxy.launcher import BUNDLED_CONFIG, ProxySettings, proxy_command, proxy_env


def test_command_is_litellms_own_proxy(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("model_list: []\n")
    cmd = proxy_command(ProxySettings(config=config, host="127.0.0.1", port=4011))
    assert cmd[1:3] == ["-m", "litellm.proxy.proxy_cli"]
    assert cmd[cmd.index("--config") + 1] == str(config)
    assert cmd[cmd.index("--port") + 1] == "4011" and cmd[cmd.index("--host") + 1] == "127.0.0.1"


def test_env_is_offline_and_points_atlas_at_the_config(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("model_list: []\n")
    env = proxy_env(ProxySettings(config=config), {"LITELLM_MASTER_KEY": "sk-m"})
    assert env["ATLAS_CONFIG"] == str(config.resolve())
    assert env["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
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
