"""Configuration as objects: nested groups, the flat names of old mapped onto them, every
variable documented from the fields, and every setting reaching what uses it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from atlas_middleware import Atlas, AtlasConfig, ConfigError
from atlas_middleware.config import FLAT, OTHER_ENV, env_table, env_vars
from atlas_middleware.learning.gate import GateRule
from atlas_middleware.teaching.flow import LoopSettings
from atlas_middleware.testing import PairwiseJudge, ScriptedBackend

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- env-table:start -->\n", "<!-- env-table:end -->"


def test_the_documented_variables_are_the_generated_table() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text("utf-8")
    documented = page[page.index(START) + len(START):page.index(END)]
    assert documented == env_table(), "docs/configuration.md: paste config.env_table() between the markers"


def test_every_variable_the_package_reads_is_in_the_table() -> None:
    table = env_table()
    read: set[str] = set()
    for path in (ROOT / "atlas_middleware").rglob("*.py"):
        text = path.read_text("utf-8")
        read |= set(re.findall(r"\b(ATLAS_[A-Z][A-Z0-9_]*[A-Z0-9])\b", text))
        read |= set(re.findall(r"(?:environ\.get|getenv)\(\s*[\"']([A-Z][A-Z0-9_]*)[\"']", text))
    missing = sorted(name for name in read if f"`{name}`" not in table)
    assert not missing, f"read by the package, not in config.env_table(): {missing}"
    assert {"ATLAS_STUDENT", "ATLAS_REPLICA"} <= set(OTHER_ENV)


def test_every_flat_name_has_a_variable_that_still_works() -> None:
    names = {var.name for var in env_vars()} | {var.also for var in env_vars() if var.also}
    assert {f"ATLAS_{flat.upper()}" for flat in FLAT} <= names
    # the five that worked undocumented, by their old names and their new ones
    old = AtlasConfig.load(env={"ATLAS_TEACHER_PARAMS": '{"temperature": 0.2}', "ATLAS_CIRCUIT_FAILURES": "7",
                                "ATLAS_CIRCUIT_COOLDOWN": "9", "ATLAS_SESSION_TTL": "60", "ATLAS_CONTEXT_CHARS": "500"})
    new = AtlasConfig.load(env={"ATLAS_TEACHER": '{"params": {"temperature": 0.2}}', "ATLAS_STATE_CIRCUIT_FAILURES": "7",
                                "ATLAS_STATE_CIRCUIT_COOLDOWN": "9", "ATLAS_STATE_SESSION_TTL": "60",
                                "ATLAS_CONTEXT_CHARS": "500"})
    assert old == new
    assert (new.teacher.params, new.state.circuit_failures, new.state.circuit_cooldown, new.state.session_ttl,
            new.context_chars) == ({"temperature": 0.2}, 7, 9.0, 60.0, 500)


def test_the_newer_variable_wins_over_the_older_name() -> None:
    cfg = AtlasConfig.load(env={"ATLAS_STORE_TEXTS": "false", "ATLAS_LEDGER_STORE_TEXTS": "true",
                                "ATLAS_LEDGER": "none", "ATLAS_TEACHER": "env-teacher",
                                "ATLAS_TEACHER_API_BASE": "http://t/v1"})
    assert (cfg.ledger.store_texts, cfg.ledger.url, cfg.teacher.model, cfg.teacher.api_base) == (
        True, "none", "env-teacher", "http://t/v1")


@pytest.mark.parametrize(("value", "expected"), [
    ("temperature=0.2", "not a valid JSON mapping"),
    ("[1, 2]", "must be a JSON object, got list"),
])
def test_teacher_params_from_the_environment_must_be_a_json_object(value: str, expected: str) -> None:
    with pytest.raises(ConfigError, match="ATLAS_TEACHER_PARAMS") as info:
        AtlasConfig.load(env={"ATLAS_TEACHER_PARAMS": value})
    assert expected in str(info.value)


def test_flat_nested_and_yaml_forms_are_one_configuration(tmp_path) -> None:
    flat = AtlasConfig(teacher="t", teacher_api_base="http://t/v1", teacher_params={"temperature": 0.1},
                       gate="learned", gate_threshold=0.1, reuse="family", store_texts=True, ledger="none",
                       state_prefix="x:", guidance_placement="system", proxy_max_body_mb=2)
    nested = AtlasConfig(teacher={"model": "t", "api_base": "http://t/v1", "params": {"temperature": 0.1},
                                  "placement": "system"},
                         gate={"mode": "learned", "threshold": 0.1, "reuse": "family"},
                         ledger={"url": "none", "store_texts": True}, state={"prefix": "x:"}, proxy={"max_body_mb": 2})
    path = tmp_path / "atlas.yaml"
    path.write_text("atlas:\n  teacher: {model: t, api_base: 'http://t/v1', params: {temperature: 0.1}}\n"
                    "  guidance_placement: system\n  gate: learned\n  gate_threshold: 0.1\n  reuse: family\n"
                    "  ledger: {url: none, store_texts: true}\n  state_prefix: 'x:'\n  proxy: {max_body_mb: 2}\n")
    assert flat == nested == AtlasConfig.load(path, env={})
    assert flat.policy == "strict"  # gate: learned without a policy means strict, in either form
    assert flat.teacher_api_base == "http://t/v1"  # type: ignore[attr-defined]  # flat reads, for one release


@pytest.mark.parametrize(("settings", "hint"), [
    ({"gate": {"treshold": 0.1}}, "did you mean 'gate.threshold'"),
    ({"teacher": {"model": "t", "api_bse": "http://t"}}, "did you mean 'teacher.api_base'"),
    ({"teacher_api_bse": "http://t"}, "did you mean 'teacher_api_base'"),
    ({"shadow": {"rat": 0.3}}, "did you mean 'shadow.rate'"),
])
def test_misspelt_settings_are_refused_with_the_closest(settings, hint) -> None:
    with pytest.raises(ConfigError, match=re.escape(hint)):
        Atlas(student_backend=ScriptedBackend(), teacher_backend=ScriptedBackend(), ledger="none", **settings)
    with pytest.raises(ValueError, match=re.escape(hint)):
        AtlasConfig(**settings)


def test_a_given_config_is_overridden_group_by_group() -> None:
    base = AtlasConfig(teacher={"model": "t", "api_base": "http://t/v1", "retries": 5}, ledger="none")
    atlas = Atlas(config=base, teacher_api_base="http://other/v1", gate={"explore": 0.3},
                  student_backend=ScriptedBackend(), teacher_backend=ScriptedBackend())
    try:
        teacher = atlas.config.teacher
        assert (teacher.model, teacher.api_base, teacher.retries) == ("t", "http://other/v1", 5)
        assert atlas.config.gate.explore == 0.3 and atlas.gate.rule.explore == 0.3
    finally:
        atlas.close()


def test_gate_rule_is_every_gate_setting() -> None:
    rule = GateRule(threshold=0.11, reopen=0.33, min_gain=0.07, explore=0.02, horizon=77.0, min_evidence=5.0,
                    max_net_tokens=123.0)
    config = AtlasConfig(gate={f.name: getattr(rule, f.name) for f in dataclasses.fields(GateRule)})
    assert config.gate.rule() == rule != GateRule()


def test_loop_settings_read_every_setting_they_carry() -> None:
    config = AtlasConfig(teacher={"model": "t", "params": {"temperature": 0.3, "input_cost_per_token": 1e-6,
                                             "output_cost_per_token": 2e-6},
                                  "protocol": "atlas", "timeout": 7, "max_tokens": 99, "probe_max_tokens": 11,
                                  "placement": "system", "leak_action": "allow", "skip_level": 3},
                         policy="audit", audit_rate=0.4, context_chars=777, shadow={"timeout": 9})
    s = config.loop_settings()
    assert dataclasses.asdict(s) | {"protocol": s.protocol.name, "teacher_prices": None} == {
        "policy": "audit", "teacher_model": "t", "teacher_params": {"temperature": 0.3}, "teacher_prices": None,
        "protocol": "atlas", "teacher_timeout": 7.0, "probe_max_tokens": 11, "teacher_max_tokens": 99,
        "skip_level": 3, "audit_rate": 0.4, "context_chars": 777, "placement": "system", "leak_action": "allow",
        "shadow_timeout": 9.0}
    assert s.teacher_prices is not None
    defaults = LoopSettings()
    changed = {f.name for f in dataclasses.fields(LoopSettings) if getattr(s, f.name) != getattr(defaults, f.name)}
    assert changed == {f.name for f in dataclasses.fields(LoopSettings)}  # each one set from the config


def test_the_teacher_judge_gets_the_teachers_params_and_context() -> None:
    long_question = [{"role": "user", "content": "EARLY-MARKER " + "filler words " * 100 + "What is 20 + 22?"}]
    student = ScriptedBackend({"probe": "Add them.", "baseline": "The answer is 41",
                               "guided": "20 + 22 = 42. The answer is 42"})
    teacher = ScriptedBackend({"teacher": "<thinking>carry</thinking><level>2</level><teaching>Carry.</teaching>",
                               "judge_pair": PairwiseJudge(is_right=lambda a: a.rstrip().endswith("42"))})
    atlas = Atlas(teacher="scripted-teacher", policy="strict", judge="teacher", ledger="none", context_chars=300,
                  teacher_params={"temperature": 0.3, "input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6},
                  student_backend=student, teacher_backend=teacher)
    try:
        atlas.completion(model="student-model", messages=long_question)
    finally:
        atlas.close()
    judged = [request for role, request in teacher.calls if role == "judge_pair"]
    assert len(judged) == 2
    for request in judged:
        assert request.params.get("temperature") == 0.3 and "input_cost_per_token" not in request.params
        prompt = " ".join(str(m.get("content")) for m in request.messages)
        assert "What is 20 + 22?" in prompt and "EARLY-MARKER" not in prompt


def test_the_langchain_constructors_take_config_settings_as_keywords() -> None:
    pytest.importorskip("langchain")
    from atlas_middleware.langchain import AtlasAgentMiddleware, AtlasChatModel
    from atlas_middleware.testing.langchain import ScriptedChatModel

    model = AtlasChatModel(student=ScriptedChatModel(), teacher="t", teacher_api_base="http://t/v1", policy="off",
                           gate={"explore": 0.3}, ledger="none", atlas_settings={"probe_max_tokens": 9})
    middleware = AtlasAgentMiddleware("t", teacher_api_base="http://t/v1", policy="off", ledger="none",
                                      teacher_retries=2)
    try:
        c = model.atlas.config
        assert (c.teacher.api_base, c.policy, c.gate.explore, c.teacher.probe_max_tokens) == ("http://t/v1", "off",
                                                                                              0.3, 9)
        m = middleware.atlas.config
        assert (m.teacher.model, m.teacher.api_base, m.policy, m.teacher.retries) == ("t", "http://t/v1", "off", 2)
    finally:
        model.close()
        middleware.atlas.close()
    with pytest.raises(ValueError, match="did you mean 'policy'"):  # pydantic's ValidationError
        AtlasChatModel(student=ScriptedChatModel(), teacher="t", polcy="off", ledger="none")
