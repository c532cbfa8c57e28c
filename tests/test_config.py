"""Configuration: one clear error at construction, documented precedence."""

from __future__ import annotations

import pytest

from atlas_middleware import Atlas, AtlasConfig, ConfigError
from atlas_middleware.testing import ScriptedBackend


def test_precedence_file_env_flags(tmp_path) -> None:
    path = tmp_path / "atlas.yaml"
    path.write_text("atlas:\n  teacher: file-teacher\n  policy: verify\n  probe_max_tokens: 80\n")
    env = {"ATLAS_POLICY": "audit", "ATLAS_TEACHER_TIMEOUT": "2.5"}
    cfg = AtlasConfig.load(path, env=env, policy="off")
    assert (cfg.teacher.model, cfg.policy, cfg.teacher.timeout, cfg.teacher.probe_max_tokens) == ("file-teacher", "off", 2.5, 80)
    cfg = AtlasConfig.load(None, env={**env, "ATLAS_CONFIG": str(path)})
    assert cfg.policy == "audit" and cfg.teacher.model == "file-teacher"


def test_the_proxys_atlas_section_sets_the_teacher_protocol(tmp_path) -> None:
    # the proxy's config.yaml carries an ``atlas:`` section beside LiteLLM's own settings
    path = tmp_path / "config.yaml"
    path.write_text("model_list: []\natlas:\n  teacher: openai/served-atlas\n  teacher_protocol: atlas\n"
                    "  leak_action: allow\n  guidance_placement: system\n")
    s = AtlasConfig.load(path, env={}).loop_settings()
    assert (s.protocol.name, s.leak_action, s.placement, s.teacher_max_tokens) == ("atlas", "allow", "system", 2048)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"policy": "sometimes"}, "unknown policy"),
        ({"judge": "no_such_module_xyz:judge"}, "cannot import"),
        ({"judge": "math:no_such_function"}, "has no attribute"),
        ({"judge": "bogus"}, "unknown judge"),
        ({"ledger": "mysql://x"}, "unknown ledger URL"),
        ({"teacher_timeout": -1}, r"teacher\.timeout"),
        ({"audit_rate": 2}, "audit_rate"),
        ({"skip_level": 0}, r"teacher\.skip_level"),
        ({"teacher_protocol": "socratic"}, r"teacher\.protocol"),
        ({"leak_action": "shrug"}, r"teacher\.leak_action"),
        ({"teacher_max_tokens": 0}, r"teacher\.max_tokens"),
    ],
)
def test_bad_configuration_fails_at_construction(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        Atlas(teacher="t", student_backend=ScriptedBackend(), teacher_backend=ScriptedBackend(), **kwargs)


def test_missing_teacher_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="no teacher"):
        Atlas(ledger="none")


def test_unknown_keys_and_bad_files(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("teacher: t\ntemprature: 3\n")
    with pytest.raises(ConfigError, match="temprature"):
        AtlasConfig.load(bad, env={})
    broken = tmp_path / "broken.yaml"
    broken.write_text("teacher: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        AtlasConfig.load(broken, env={})
    with pytest.raises(ConfigError, match="cannot read"):
        AtlasConfig.load(tmp_path / "missing.yaml", env={})


def test_environment_is_read_at_construction_not_import(monkeypatch) -> None:
    monkeypatch.setenv("ATLAS_TEACHER", "env-teacher")
    monkeypatch.setenv("ATLAS_LEDGER", "none")
    atlas = Atlas(student_backend=ScriptedBackend(), teacher_backend=ScriptedBackend())
    assert atlas.config.teacher.model == "env-teacher"
    atlas.close()


def test_secret_key_is_not_in_repr() -> None:
    cfg = AtlasConfig.load(None, env={}, teacher="t", teacher_api_key="sk-verysecretvalue123")
    assert "verysecret" not in repr(cfg) and "verysecret" not in cfg.model_dump_json()
