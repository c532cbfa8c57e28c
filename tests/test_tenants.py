"""Tenants: one caller's session guidance and family guidance never reach another caller.

Two tenants send the same session id and the same task tag; each one's question names a
private project, the teacher's guidance quotes it and the guided student echoes the guidance.
Whatever crosses shows as the other tenant's project name in a guided prompt or an answer.
Every ``Atlas`` test runs on both drivers (``call``) and on process memory and Redis
(``state``, when ``TEST_REDIS_URL`` is set: ``scripts/ci-services.sh``).
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from atlas_middleware.errors import InvalidRequestError
from atlas_middleware.report import CallReport, Reason
from atlas_middleware.teaching import protocols
from atlas_middleware.testing import ScriptedBackend, teacher_reply
from atlas_middleware.usage import Usage

REDIS_URL = os.environ.get("TEST_REDIS_URL", "")
PRIVATE, OTHER = "Project Nightingale", "Project Heron"
KEY_A, KEY_B = "sk-tenant-a-0123456789", "sk-tenant-b-9876543210"
SESSION, TASK = "shared-session-1", "quarterly-sum"


def _project(request: Any) -> str:
    found = re.search(r"Project \w+", str(request.messages))
    return found.group(0) if found else "no project"


def _guidance(request: Any) -> str:
    return protocols.guidance_of(request.messages) or ""


# The teacher quotes the project; the guided student repeats what it was told.
TEACHER = {"teacher": lambda request: teacher_reply(f"For {_project(request)}, carry the one.")}
STUDENT = {"probe": "Add the two numbers.", "baseline": "20 + 22 = 41. The answer is 41",
           "guided": lambda request: f"{_guidance(request)} 20 + 22 = 42. The answer is 42"}


def is_right(messages: list[dict[str, Any]], answer: str) -> float:
    return 1.0 if "The answer is 42" in answer else 0.0


def question(project: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"{project}: what is 20 + 22?"}]


def teacher_calls(teacher: ScriptedBackend) -> int:
    return [role for role, _ in teacher.calls].count("teacher")


def guided_prompts(student: ScriptedBackend) -> list[str]:
    return [str(request.messages) for role, request in student.calls if role == "guided"]


def _two_tenants(call: Any, atlas: Any, first: dict[str, Any], second: dict[str, Any],
                 **opts: Any) -> tuple[Any, Any]:
    def ask(project: str, who: dict[str, Any]) -> Any:
        rest = {k: v for k, v in who.items() if k != "atlas"}
        return call(atlas, messages=question(project), atlas={**opts, **who.get("atlas", {})}, **rest)

    return ask(PRIVATE, first), ask(OTHER, second)


def _assert_apart(a: Any, b: Any, student: ScriptedBackend, teacher: ScriptedBackend) -> None:
    assert teacher_calls(teacher) == 2, "the second tenant was served the first tenant's guidance"
    assert PRIVATE in a.choices[0].message.content
    assert not b.atlas.guidance_reused and b.atlas.reused_from is None
    answer = b.choices[0].message.content
    assert PRIVATE not in answer and OTHER in answer
    second_prompts = guided_prompts(student)[1:]
    assert second_prompts and not any(PRIVATE in p for p in second_prompts)
    assert a.atlas.tenant != b.atlas.tenant


# -- the attack, through Atlas ----------------------------------------------------------------

@pytest.mark.parametrize("who", ["api_key", "tenant"])
def test_one_session_id_under_two_tenants_is_two_sessions(make_atlas, call, state, who) -> None:
    atlas, student, teacher = make_atlas(STUDENT, TEACHER, judge=is_right, **state)
    if who == "api_key":
        first, second = {"api_key": KEY_A}, {"api_key": KEY_B}
    else:
        first, second = {"atlas": {"tenant": "acme"}}, {"atlas": {"tenant": "globex"}}
    a, b = _two_tenants(call, atlas, first, second, session_id=SESSION)
    assert a.atlas.session_id == b.atlas.session_id == SESSION
    _assert_apart(a, b, student, teacher)
    # Each tenant keeps its own session: the first tenant's next step is served from it.
    again = call(atlas, messages=question(PRIVATE), atlas={"session_id": SESSION, **first.get("atlas", {})},
                 **{k: v for k, v in first.items() if k != "atlas"})
    assert again.atlas.guidance_reused and PRIVATE in again.choices[0].message.content
    assert teacher_calls(teacher) == 2


@pytest.mark.parametrize("who", ["api_key", "tenant"])
def test_one_task_tag_under_two_tenants_is_two_families(make_atlas, call, state, who) -> None:
    atlas, student, teacher = make_atlas(STUDENT, TEACHER, judge=is_right, reuse="family", **state)
    if who == "api_key":
        first, second = {"api_key": KEY_A}, {"api_key": KEY_B}
    else:
        first, second = {"atlas": {"tenant": "acme"}}, {"atlas": {"tenant": "globex"}}
    a, b = _two_tenants(call, atlas, first, second, task=TASK)
    assert a.atlas.reason == Reason.JUDGE_GUIDED and a.atlas.task_family == b.atlas.task_family == "t:" + TASK
    _assert_apart(a, b, student, teacher)
    # Within a tenant, the family's guidance is reused as before.
    again = call(atlas, messages=question(PRIVATE), atlas={"task": TASK, **first.get("atlas", {})},
                 **{k: v for k, v in first.items() if k != "atlas"})
    assert again.atlas.reused_from == a.atlas.call_id and teacher_calls(teacher) == 2


def test_the_gates_evidence_is_per_tenant(make_atlas, call) -> None:
    """A tenant's outcomes close a family for that tenant only: the gate's state and evidence
    count are on every report, so shared evidence would tell one tenant what others send."""
    harm = {**STUDENT, "baseline": "The answer is 42", "guided": "The answer is 41"}
    atlas, *_ = make_atlas(harm, TEACHER, judge=is_right, policy="strict", gate="learned", gate_min_evidence=10,
                           gate_min_gain=0.2, gate_explore=0.0)
    for _ in range(12):
        call(atlas, messages=question(PRIVATE), api_key=KEY_A, atlas={"task": TASK})
    a = call(atlas, messages=question(PRIVATE), api_key=KEY_A, atlas={"task": TASK}).atlas
    b = call(atlas, messages=question(OTHER), api_key=KEY_B, atlas={"task": TASK}).atlas
    assert a.reason == Reason.GATE_SKIPPED
    assert b.reason != Reason.GATE_SKIPPED and b.gate is not None and b.gate.evidence == 0


# -- what a tenant is -------------------------------------------------------------------------

def test_the_tenant_is_named_derived_from_the_key_or_the_default(make_atlas, call) -> None:
    from atlas_middleware._tenants import DEFAULT_TENANT

    atlas, *_ = make_atlas(STUDENT, TEACHER)
    keyed = call(atlas, api_key=KEY_A).atlas.tenant
    assert keyed == "key:" + hashlib.sha256(KEY_A.encode()).hexdigest()[:32]
    assert call(atlas, api_key=f"  {KEY_A} ").atlas.tenant != keyed  # the key as sent, no guessing
    assert call(atlas).atlas.tenant == DEFAULT_TENANT == "default"
    assert call(atlas, api_key="", atlas={}).atlas.tenant == DEFAULT_TENANT
    # A named tenant wins over the key (an application that serves several customers with one key).
    assert call(atlas, api_key=KEY_A, atlas={"tenant": "  acme "}).atlas.tenant == "acme"
    assert call(atlas, metadata={"atlas": {"tenant": "globex"}}).atlas.tenant == "globex"


@pytest.mark.parametrize("bad", ["", "   ", "a\nb", "tab\there", "x" * 129, 7, ["acme"]])
def test_a_bad_tenant_is_refused_before_any_call(make_atlas, bad) -> None:
    atlas, student, teacher = make_atlas(STUDENT, TEACHER)
    with pytest.raises(InvalidRequestError, match="tenant"):
        atlas.completion(model="m", messages=question(PRIVATE), atlas={"tenant": bad})
    assert not student.calls and not teacher.calls


def test_no_raw_key_is_kept_in_the_report_the_ledger_or_redis(make_atlas, call, tmp_path) -> None:
    if not REDIS_URL:
        pytest.skip("TEST_REDIS_URL is not set")
    redis = pytest.importorskip("redis")
    prefix = f"atlas-test:{uuid.uuid4().hex}:"
    atlas, *_ = make_atlas(STUDENT, TEACHER, judge=is_right, reuse="family", state=REDIS_URL, state_prefix=prefix,
                           ledger=f"sqlite:///{tmp_path / 'l.db'}", store_texts=True)
    call(atlas, messages=question(PRIVATE), api_key=KEY_A, atlas={"task": TASK, "session_id": SESSION})
    client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
    try:
        keys = list(client.scan_iter(prefix + "*"))
        dumped = " ".join(keys) + " ".join(str(client.dump(k)) for k in keys)
        assert any(":session:" in k for k in keys) and any(":family:" in k for k in keys)
        assert KEY_A not in dumped and hashlib.sha256(KEY_A.encode()).hexdigest() not in dumped
    finally:
        for key in client.scan_iter(prefix + "*"):
            client.delete(key)
        client.close()
    (row,) = atlas.ledger.records()
    assert KEY_A not in row.model_dump_json() and row.report().tenant.startswith("key:")


# -- the ledger rebuild -----------------------------------------------------------------------

def test_rebuilt_guidance_keeps_its_tenant(make_atlas, call, tmp_path, state) -> None:
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    first, *_ = make_atlas(STUDENT, TEACHER, judge=is_right, reuse="family", ledger=ledger, store_texts=True)
    a = call(first, messages=question(PRIVATE), api_key=KEY_A, atlas={"task": TASK}).atlas
    assert a.reason == Reason.JUDGE_GUIDED
    first.close()
    again, student, teacher = make_atlas(STUDENT, TEACHER, judge=is_right, reuse="family", ledger=ledger,
                                         store_texts=True, **state)
    b = call(again, messages=question(OTHER), api_key=KEY_B, atlas={"task": TASK})
    assert not b.atlas.guidance_reused and teacher_calls(teacher) == 1
    assert PRIVATE not in b.choices[0].message.content
    assert not any(PRIVATE in p for p in guided_prompts(student))
    mine = call(again, messages=question(PRIVATE), api_key=KEY_A, atlas={"task": TASK}).atlas
    assert mine.reused_from == a.call_id  # the rebuilt guidance is still its own tenant's


def test_records_without_a_tenant_rebuild_no_reusable_guidance(make_atlas) -> None:
    """Records written before tenants existed cannot say whose guidance they hold: their
    outcomes count (for the default tenant), their guidance is never rebuilt as reusable."""
    from atlas_middleware._tenants import DEFAULT_TENANT
    from atlas_middleware.learning.gate import gate_key
    from atlas_middleware.learning.rebuild import replay

    atlas, *_ = make_atlas(STUDENT, TEACHER, policy="strict", reuse="family", gate="learned")
    won = CallReport(student_model="m", policy="strict", task_family="t:x", guidance=f"For {PRIVATE}, carry the one.",
                     decision="guided", reason=Reason.JUDGE_GUIDED)
    won.usage.add("teacher", Usage(calls=1))
    evidence = replay([won], atlas.gate)
    kept = evidence[gate_key("m", "t:x", DEFAULT_TENANT)]
    assert kept.improved == 1 and kept.guidance is None
    tenanted = won.model_copy(update={"tenant": "acme", "call_id": uuid.uuid4().hex})
    assert replay([tenanted], atlas.gate)[gate_key("m", "t:x", "acme")].guidance == won.guidance


# -- through the proxy: two virtual keys ------------------------------------------------------

TEAMS = {KEY_A: "team-a", KEY_B: "team-b"}
MASTER = "sk-atlas-test-master"


def _judge_right(answer: str) -> bool:
    return "The answer is 42" in answer


@pytest.fixture(scope="module")
def proxied() -> Iterator[tuple[Any, ScriptedBackend]]:
    """The real proxy, its two virtual keys of two teams, one upstream as student and teacher."""
    pytest.importorskip("litellm.proxy.proxy_server")
    from atlas_middleware.testing import OpenAITestServer, PairwiseJudge
    from atlas_middleware.testing.proxy import ProxyProcess

    backend = ScriptedBackend({**STUDENT, **TEACHER, "judge_pair": PairwiseJudge(_judge_right)})
    keys = {key: {"team_id": team, "user_role": "internal_user"} for key, team in TEAMS.items()}
    with OpenAITestServer(backend, models=["gpt-4o-mini", "gpt-4o"]) as upstream:
        atlas = {"teacher": "openai/gpt-4o", "teacher_api_base": upstream.url, "policy": "strict",
                 "ledger": "none", "teacher_retries": 1, "reuse": "family"}
        with ProxyProcess(student_url=upstream.url, atlas=atlas, master_key=MASTER, virtual_keys=keys) as proxy:
            yield proxy, backend


def _post(proxy: Any, key: str, project: str, headers: dict[str, str] | None = None,
          **body: Any) -> Any:
    import httpx

    return httpx.post(f"{proxy.url}/chat/completions", timeout=120,
                      headers={"Authorization": f"Bearer {key}", **(headers or {})},
                      json={"model": "gpt-4o-mini", "messages": question(project), **body})


def _fresh(backend: ScriptedBackend) -> None:
    with backend._lock:
        backend.calls.clear()


def _answer(resp: Any) -> str:
    assert resp.status_code == 200, resp.text
    return str(resp.json()["choices"][0]["message"]["content"])


@pytest.mark.slow
@pytest.mark.parametrize("header", ["x-atlas-session-id", "x-atlas-task"])
def test_two_keys_with_one_session_or_task_never_see_each_others_guidance(proxied, header) -> None:
    proxy, backend = proxied
    _fresh(backend)
    value = f"{header}-{uuid.uuid4().hex[:6]}"
    a = _post(proxy, KEY_A, PRIVATE, {header: value})
    assert PRIVATE in _answer(a)
    b = _post(proxy, KEY_B, OTHER, {header: value})
    answer = _answer(b)
    assert teacher_calls(backend) == 2, "the second key was served the first key's guidance"
    assert PRIVATE not in answer and OTHER in answer
    assert not any(PRIVATE in p for p in guided_prompts(backend)[1:])
    report_a, report_b = a.json()["atlas"], b.json()["atlas"]
    assert not report_b["guidance_reused"] and report_b["reused_from"] is None
    # The tenant is the authenticated key's digest and its team; never the key.
    from litellm.proxy._types import hash_token

    assert report_a["tenant"] == f"key:{hashlib.sha256(hash_token(KEY_A).encode()).hexdigest()[:32]}|team:team-a"
    assert report_b["tenant"].endswith("|team:team-b") and KEY_A not in a.text and KEY_B not in b.text
    # The first key's next step still gets its own guidance, without a teacher call.
    again = _post(proxy, KEY_A, PRIVATE, {header: value})
    assert PRIVATE in _answer(again) and again.json()["atlas"]["guidance_reused"]
    assert teacher_calls(backend) == 2


@pytest.mark.slow
def test_a_virtual_key_cannot_name_a_tenant(proxied) -> None:
    proxy, backend = proxied
    _fresh(backend)
    victim = _post(proxy, KEY_A, PRIVATE, {"x-atlas-session-id": "s-named"}).json()["atlas"]["tenant"]
    _fresh(backend)
    for attempt in ({"headers": {"x-atlas-tenant": victim}}, {"metadata": {"atlas": {"tenant": victim}}},
                    {"atlas": {"tenant": victim}}):
        headers = {"x-atlas-session-id": "s-named", **attempt.pop("headers", {})}
        resp = _post(proxy, KEY_B, OTHER, headers, **attempt)
        assert resp.status_code == 403, (attempt, resp.text)
        assert "admin" in resp.text and PRIVATE not in resp.text
    assert not backend.calls  # refused before any model call
    # A client's own copy of the grant field is a plain string: ignored.
    forged = _post(proxy, KEY_B, OTHER, {"x-atlas-session-id": "s-named"},
                   metadata={"atlas_tenant": victim})
    assert PRIVATE not in _answer(forged) and forged.json()["atlas"]["tenant"] != victim


@pytest.mark.slow
def test_the_master_key_may_name_a_tenant(proxied) -> None:
    proxy, backend = proxied
    _fresh(backend)
    first = _post(proxy, MASTER, PRIVATE, {"x-atlas-tenant": "acme", "x-atlas-session-id": "s-admin"})
    assert first.json()["atlas"]["tenant"] == "acme" and PRIVATE in _answer(first)
    other = _post(proxy, MASTER, OTHER, {"x-atlas-tenant": "globex", "x-atlas-session-id": "s-admin"})
    assert other.json()["atlas"]["tenant"] == "globex" and PRIVATE not in _answer(other)
    same = _post(proxy, MASTER, PRIVATE, metadata={"atlas": {"tenant": "acme", "session_id": "s-admin"}})
    assert same.json()["atlas"]["guidance_reused"] and teacher_calls(backend) == 2
    bad = _post(proxy, MASTER, OTHER, {"x-atlas-tenant": "x" * 200})
    assert bad.status_code == 400 and "tenant" in bad.text


# -- the LangChain adapters ---------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
def test_a_langchain_model_keeps_run_tenants_apart(stream: bool) -> None:
    pytest.importorskip("langchain_core")
    from atlas_middleware.langchain import AtlasChatModel, atlas_report
    from atlas_middleware.testing.langchain import ScriptedChatModel

    teacher = ScriptedChatModel(backend=ScriptedBackend(TEACHER), model_name="scripted-teacher")
    student = ScriptedChatModel(backend=ScriptedBackend(STUDENT))
    llm = AtlasChatModel(student=student, teacher=teacher, judge=is_right, ledger="none", session_id=SESSION)

    def ask(project: str, tenant: str) -> tuple[str, Any]:
        config: Any = {"metadata": {"atlas_tenant": tenant}}
        text = question(project)[0]["content"]
        if not stream:
            message = llm.invoke(text, config=config)
            return message.text, atlas_report(message)
        chunks = list(llm.stream(text, config=config))
        return "".join(c.text for c in chunks), atlas_report(chunks[-1])

    (first, report_a), (second, report_b) = ask(PRIVATE, "acme"), ask(OTHER, "globex")
    assert teacher.roles.count("teacher") == 2
    assert PRIVATE in first and PRIVATE not in second and OTHER in second
    assert (report_a.tenant, report_b.tenant) == ("acme", "globex")
    assert ask(PRIVATE, "acme") is not None and teacher.roles.count("teacher") == 2  # acme's session
    # The model's own tenant, when the run names none; without either, the default one.
    named = AtlasChatModel(student=student, teacher=teacher, ledger="none", tenant="initech")
    assert atlas_report(named.invoke("What is 1 + 2?")).tenant == "initech"
    assert atlas_report(llm.invoke("What is 1 + 2?")).tenant == "default"


def test_an_agent_keeps_run_tenants_apart() -> None:
    pytest.importorskip("langchain")
    from langchain.agents import create_agent

    from atlas_middleware.langchain import AtlasAgentMiddleware, atlas_report
    from atlas_middleware.testing.langchain import ScriptedChatModel

    teacher = ScriptedChatModel(backend=ScriptedBackend(TEACHER), model_name="scripted-teacher")
    student = ScriptedChatModel(backend=ScriptedBackend(STUDENT))
    middleware = AtlasAgentMiddleware(teacher=teacher, judge=is_right, ledger="none")
    agent = create_agent(student, tools=[], middleware=[middleware])

    def ask(project: str, tenant: str) -> Any:
        out = agent.invoke({"messages": question(project)}, {"metadata": {"atlas_tenant": tenant}})
        return out["messages"][-1]

    # One default session key for both (the first user message's digest is not the same, so
    # the session id is forced to collide: the agent's own key, as a caller's key would).
    middleware.session_key = lambda request: SESSION
    first, second = ask(PRIVATE, "acme"), ask(OTHER, "globex")
    assert teacher.roles.count("teacher") == 2
    assert PRIVATE in first.text and PRIVATE not in second.text
    assert atlas_report(second).tenant == "globex" and atlas_report(second).session_id == SESSION
