"""``atlas-middleware run`` end to end over HTTP against loopback servers."""

from __future__ import annotations

import json

from conftest import STUDENT_SCRIPT, TEACHER_SCRIPT
from typer.testing import CliRunner

from atlas_middleware.cli import commands  # noqa: F401  (registers the commands)
from atlas_middleware.cli.app import app
from atlas_middleware.testing import OpenAITestServer, ScriptedBackend


def test_run_prints_answer_and_json_report(tmp_path) -> None:
    runner = CliRunner()
    with OpenAITestServer(ScriptedBackend(dict(STUDENT_SCRIPT))) as s, \
            OpenAITestServer(ScriptedBackend(dict(TEACHER_SCRIPT))) as t:
        args = ["run", "What is 20 + 22?", "--student", "openai/student", "--student-api-base", s.url,
                "--teacher", "openai/teacher", "--teacher-api-base", t.url, "--policy", "off",
                "--ledger", f"sqlite:///{tmp_path / 'l.db'}"]
        env = {"ATLAS_TEACHER_API_KEY": "k", "ATLAS_STUDENT_API_KEY": "k"}
        plain = runner.invoke(app, args, env=env)
        assert plain.exit_code == 0, plain.output
        assert "The answer is 42" in plain.stdout
        as_json = runner.invoke(app, [*args, "--json"], env=env)
        assert as_json.exit_code == 0, as_json.output
        report = json.loads(as_json.stdout)
        assert report["decision"] == "guided" and report["reason"] == "policy_off"
        assert report["usage"]["teacher"]["calls"] == 1


def test_run_reports_config_errors_clearly() -> None:
    result = CliRunner().invoke(app, ["run", "hi", "--student", "m", "--teacher", "t", "--policy", "bogus",
                                      "--ledger", "none"])
    assert result.exit_code == 2 and "unknown policy" in result.output


def test_run_takes_the_teacher_protocol_and_leak_action(tmp_path) -> None:
    from atlas_middleware.testing import AtlasStyleTeacher

    runner = CliRunner()
    teacher = ScriptedBackend({"teacher": AtlasStyleTeacher("Carry the one. So x = 42.")})
    with OpenAITestServer(ScriptedBackend(dict(STUDENT_SCRIPT))) as s, OpenAITestServer(teacher) as t:
        args = ["run", "What is 20 + 22?", "--student", "openai/student", "--student-api-base", s.url,
                "--teacher", "openai/my-served-atlas", "--teacher-api-base", t.url, "--policy", "off",
                "--ledger", "none", "--json"]
        env = {"ATLAS_TEACHER_API_KEY": "k", "ATLAS_STUDENT_API_KEY": "k"}
        plain = json.loads(runner.invoke(app, [*args, "--teacher-protocol", "atlas"], env=env).stdout)
        assert (plain["protocol"], plain["reason"], plain["guidance_leak"]) == ("atlas", "policy_off", "stripped")
        # the served name does not say ATLAS: under auto the plain reply is not read as guidance
        auto = json.loads(runner.invoke(app, args, env=env).stdout)
        assert (auto["protocol"], auto["reason"]) == ("structured", "teacher_unparseable")
        fallback = json.loads(runner.invoke(app, [*args, "--teacher-protocol", "atlas", "--leak-action", "fallback"],
                                            env=env).stdout)
        assert fallback["reason"] == "guidance_leaks_answer"
    bad = runner.invoke(app, ["run", "hi", "--student", "m", "--teacher", "t", "--teacher-protocol", "x",
                              "--ledger", "none"])
    assert bad.exit_code == 2 and "teacher.protocol" in bad.output
