"""The rough edges a new user hits first (issue 25, items 3, 8 and 10)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("langchain_core")

from pydantic import ValidationError  # noqa: E402

from atlas_middleware.langchain import AtlasChatModel  # noqa: E402
from atlas_middleware.testing import ScriptedBackend  # noqa: E402
from atlas_middleware.testing.langchain import ScriptedChatModel  # noqa: E402


def _student() -> ScriptedChatModel:
    return ScriptedChatModel(backend=ScriptedBackend({"probe": "p", "guided": "g", "baseline": "b"}))


def test_chat_model_refuses_a_misspelled_setting_and_names_the_closest_field() -> None:
    with pytest.raises(ValidationError) as info:
        AtlasChatModel(student=_student(), teacher="openai/teacher", ledger="none", polcy="off")
    message = str(info.value)
    assert "polcy" in message and "'policy'" in message


def test_chat_model_still_takes_its_own_fields_aliases_and_langchain_fields() -> None:
    model = AtlasChatModel(student=_student(), teacher="openai/teacher", teacher_api_key="k", ledger="none",
                           policy="off", tags=["t"], metadata={"m": 1}, atlas_settings={"probe_max_tokens": 64})
    assert model.atlas.config.policy == "off" and model.tags == ["t"]


# -- item 8: the README's ``run`` command fails with one line, not a chained traceback -------

def _cli(*args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATLAS_", "OPENAI_"))}
    env.update({"LITELLM_LOCAL_MODEL_COST_MAP": "True", "XDG_DATA_HOME": tempfile.mkdtemp()})
    if key is not None:
        env["OPENAI_API_KEY"] = key
    return subprocess.run([sys.executable, "-m", "atlas_middleware.cli", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def _dead_url() -> str:
    with socket.socket() as s:  # a loopback port nothing listens on: refused at once
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


@pytest.mark.parametrize("key", [None, "sk-test"], ids=["no-key", "key-no-server"])
def test_run_without_a_reachable_student_prints_one_line_and_exits_non_zero(key: str | None) -> None:
    dead = _dead_url()
    args = ["run", "What is 17% of 240?", "--student", "openai/gpt-4o-mini", "--student-api-base", dead,
            "--teacher", "hosted_vllm/Arc-Intelligence/ATLAS-8B-Thinking", "--teacher-api-base", dead,
            "--ledger", "none"]
    out = _cli(*args, key=key)
    assert out.returncode != 0 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) <= 2 and lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr and "--debug" in out.stderr
    debug = _cli(*args, "--debug", key=key)
    assert debug.returncode != 0 and "Traceback (most recent call last)" in debug.stderr


# -- item 10: offline, importing the library never fetches LiteLLM's remote cost map -------

_IMPORT_OFFLINE = """
import os, socket, sys
def refuse(*args, **kwargs):
    raise OSError("network blocked: " + repr(args[:1]))
socket.getaddrinfo = refuse
socket.create_connection = refuse
import {module}
import litellm
print(os.environ.get("LITELLM_LOCAL_MODEL_COST_MAP"), len(litellm.model_cost) > 100)
"""


@pytest.mark.parametrize("module", ["atlas_middleware.provider", "atlas_middleware.proxy.hooks", "atlas_middleware"])
def test_importing_the_library_reads_litellms_cost_map_from_the_package(module: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "LITELLM_LOCAL_MODEL_COST_MAP"}
    out = subprocess.run([sys.executable, "-c", _IMPORT_OFFLINE.format(module=module)], capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "cost map" not in out.stderr and "network blocked" not in out.stderr, out.stderr
    assert out.stdout.split() == ["True", "True"]


def test_a_user_who_wants_the_remote_cost_map_keeps_it() -> None:
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "False"}
    out = subprocess.run([sys.executable, "-c", "import os, atlas_middleware.provider;"
                          "print(os.environ['LITELLM_LOCAL_MODEL_COST_MAP'])"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


# -- item 10: the README's async example closes its client --------------------------------

_ASYNC_CALL = """
import asyncio, sys
from atlas_middleware import Atlas
from atlas_middleware.testing import OpenAITestServer, ScriptedBackend, teacher_reply

async def main(url):
    kw = dict(teacher_api_base=url, teacher_api_key="k", ledger="none", policy="strict")
    msgs = [{"role": "user", "content": "hi"}]
    if sys.argv[1] == "async-with":
        async with Atlas("openai/teacher", **kw) as atlas:
            r = await atlas.acompletion(model="openai/student", api_base=url, api_key="k", messages=msgs)
    else:
        atlas = Atlas("openai/teacher", **kw)
        r = await atlas.acompletion(model="openai/student", api_base=url, api_key="k", messages=msgs)
    print(r.atlas.decision)

script = {"probe": "p", "guided": "g", "baseline": "b", "teacher": teacher_reply("x")}
with OpenAITestServer(ScriptedBackend(script)) as s:
    asyncio.run(main(s.url))
"""


def test_the_readme_shows_async_with_and_it_leaves_no_unclosed_session() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text("utf-8")
    assert "async with Atlas(" in readme
    assert re.search(r"^resp = await atlas\.acompletion", readme, re.MULTILINE) is None  # no unclosed client

    def run(mode: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", _ASYNC_CALL, mode], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"})

    left_open, closed = run("unclosed"), run("async-with")
    assert left_open.returncode == 0 and closed.returncode == 0, closed.stderr
    assert "Unclosed" in left_open.stderr  # why the README shows ``async with``
    assert "Unclosed" not in closed.stderr and closed.stdout.strip() in {"guided", "baseline"}, closed.stderr


# -- item 10: without a thread, each agent run is its own task ------------------------------

def test_agent_runs_without_a_thread_do_not_share_a_diagnosis(tmp_path: Path) -> None:
    pytest.importorskip("langchain")
    from test_langchain_agent import QUESTION, _agent

    agent, _, _, teacher = _agent(tmp_path)
    first = agent.invoke(QUESTION)
    agent.invoke(QUESTION)  # the same opening question, another run (another user, say)
    assert len(teacher.calls) == 2
    reports = [m.response_metadata["atlas"] for m in first["messages"] if m.type == "ai"]
    assert [r["guidance_reused"] for r in reports] == [False, True, True]  # one run still shares it
    assert "atlas_run" not in first  # the run's key stays inside the agent


async def test_async_agent_runs_without_a_thread_do_not_share_a_diagnosis(tmp_path: Path) -> None:
    pytest.importorskip("langchain")
    from test_langchain_agent import QUESTION, _agent

    agent, _, _, teacher = _agent(tmp_path)
    await agent.ainvoke(QUESTION)
    await agent.ainvoke(QUESTION)
    assert len(teacher.calls) == 2


# -- item 10: the shipped proxy configs keep LiteLLM's budgets enforced -----------------------

SHIPPED_CONFIGS = ["integrations/litellm_proxy/config.yaml", "integrations/fleet/proxy-config.yaml"]


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_configs_with_custom_auth_run_litellms_common_checks(name: str) -> None:
    import yaml

    general = yaml.safe_load((Path(__file__).parent.parent / name).read_text("utf-8"))["general_settings"]
    assert general["custom_auth"] and general["custom_auth_run_common_checks"] is True


@pytest.mark.slow
def test_the_proxy_starts_without_the_budgets_not_enforced_warning_and_serves() -> None:
    openai = pytest.importorskip("openai")
    from atlas_middleware.testing import OpenAITestServer, teacher_reply
    from atlas_middleware.testing.proxy import ProxyProcess

    script = {"probe": "Add them.", "baseline": "The answer is 42", "guided": "The answer is 42",
              "teacher": teacher_reply("Carry the one.")}
    with OpenAITestServer(ScriptedBackend(script)) as upstream, ProxyProcess(
            student_url=upstream.url, atlas={"teacher": "openai/teacher", "teacher_api_base": upstream.url,
                                             "teacher_api_key": "k", "policy": "off", "ledger": "none"}) as proxy:
        client = openai.OpenAI(base_url=proxy.url, api_key=proxy.master_key, max_retries=0)
        answer = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "20+22?"}])
        log = proxy.log()
    assert answer.choices[0].message.content == "The answer is 42"
    assert "will NOT be enforced" not in log and "custom_auth_run_common_checks" not in log
