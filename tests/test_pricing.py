"""Dollars on every call: each role priced the LiteLLM way, and the student-alone counterfactual.

* Custom prices (LiteLLM's ``input_cost_per_token`` / ``output_cost_per_token``) per call
  price the student's calls (probe, guided, baseline); in ``teacher_params`` they price the
  teacher's and the judge's. They never reach a backend, and keep a call on the lean path.
* A price of the wrong type is refused, naming the field: at the call, and at start.
* A call that ran no baseline is given its family's mean baseline as the counterfactual,
  said to be ``estimated`` with the samples behind it; one that ran its own is ``measured``.
* The means are shared through the state (memory, Redis) and fall back to memory.
* The ledger keeps the four new columns, and an existing ledger gains them.

Every test runs on both drivers where a call is made (the ``call`` fixture).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import QUESTION

from atlas_middleware import Atlas
from atlas_middleware.errors import ConfigError, InvalidRequestError
from atlas_middleware.report import Reason
from atlas_middleware.testing import OpenAITestServer, ScriptedBackend, teacher_reply

STUDENT = {"input_cost_per_token": 3e-6, "output_cost_per_token": 1.5e-5}
TEACHER = {"input_cost_per_token": 2e-7, "output_cost_per_token": 6e-7}
STUDENT_ROLES, TEACHER_ROLES = ("probe", "guided", "baseline"), ("teacher", "judge")


def _priced(usage: Any, prices: dict[str, float]) -> float:
    return usage.prompt_tokens * prices["input_cost_per_token"] + usage.completion_tokens * prices["output_cost_per_token"]


def _check_every_role(report: Any) -> None:
    for roles, prices in ((STUDENT_ROLES, STUDENT), (TEACHER_ROLES, TEACHER)):
        for role in roles:
            usage = getattr(report.usage, role)
            assert usage.calls, role  # the call made every kind of call
            assert usage.cost_usd == pytest.approx(_priced(usage, prices)), role
    assert report.cost_usd == pytest.approx(sum(getattr(report.usage, r).cost_usd for r in STUDENT_ROLES + TEACHER_ROLES))


def test_every_role_is_priced_by_its_own_models_custom_price(make_atlas, call) -> None:  # type: ignore[no-untyped-def]
    # The scripted answers disagree, so the judge (the teacher) is asked too.
    atlas, student, teacher = make_atlas(teacher_params={**TEACHER, "temperature": 0.0})
    report = call(atlas, **STUDENT).atlas
    _check_every_role(report)
    # Prices are the middleware's to read: no backend saw them; the teacher's other params are sent.
    for _, request in student.calls + teacher.calls:
        assert not set(STUDENT) & set(request.params), request.params
    assert all(request.params.get("temperature") == 0.0 for role, request in teacher.calls if role == "teacher")


def test_a_cached_prompt_token_costs_the_cache_read_price(make_atlas, call) -> None:  # type: ignore[no-untyped-def]
    from atlas_middleware.testing import Reply

    atlas, *_ = make_atlas(student={"baseline": Reply("The answer is 42", prompt_tokens=100, completion_tokens=10,
                                                      cached_tokens=60)})
    report = call(atlas, atlas={"teach": False}, **STUDENT, cache_read_input_token_cost=1e-7).atlas
    assert report.usage.baseline.cost_usd == pytest.approx(40 * 3e-6 + 60 * 1e-7 + 10 * 1.5e-5)


@pytest.mark.parametrize(("params", "field"), [
    ({**STUDENT, "input_cost_per_token": "cheap"}, "input_cost_per_token"),
    ({**STUDENT, "output_cost_per_token": True}, "output_cost_per_token"),
    ({**STUDENT, "input_cost_per_token": -1e-6}, "input_cost_per_token"),
    ({**STUDENT, "output_cost_per_token": float("nan")}, "output_cost_per_token"),
    ({**STUDENT, "output_cost_per_token": [1e-6]}, "output_cost_per_token"),
    ({"input_cost_per_token": 1e-6}, "input_cost_per_token is given without output_cost_per_token"),
    ({"cache_read_input_token_cost": 1e-7}, "cache_read_input_token_cost is given without"),
])
def test_a_bad_price_is_refused_at_the_call_naming_the_field(make_atlas, call, params: dict[str, Any],  # type: ignore[no-untyped-def]
                                                             field: str) -> None:
    atlas, student, teacher = make_atlas()
    with pytest.raises(InvalidRequestError, match=field):
        call(atlas, **params)
    assert student.calls == teacher.calls == []  # refused before any model was called


def test_a_numeric_string_is_a_price_as_litellm_reads_it(make_atlas, call) -> None:  # type: ignore[no-untyped-def]
    # YAML reads ``3e-6`` (no dot) as a string; LiteLLM takes it as a number, and so does this.
    atlas, *_ = make_atlas()
    report = call(atlas, atlas={"teach": False}, input_cost_per_token="3e-6", output_cost_per_token="1.5e-5").atlas
    assert report.usage.baseline.cost_usd == pytest.approx(_priced(report.usage.baseline, STUDENT))


@pytest.mark.parametrize("bad", [{"input_cost_per_token": "free", "output_cost_per_token": 1e-6},
                                 {"output_cost_per_token": 1e-6}])
def test_a_bad_teacher_price_is_refused_at_start_naming_the_field(bad: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"teacher\.params: .*(input_cost_per_token|output_cost_per_token)"):
        Atlas(teacher="t", teacher_params=bad, student_backend=ScriptedBackend(), teacher_backend=ScriptedBackend(),
              ledger="none")


class _NoLiteLLM:
    """A router fallback that fails the test: the call left the lean path for LiteLLM."""

    def _refuse(self, request: Any) -> Any:
        raise AssertionError(f"{request.model} went through LiteLLM, not the lean path: {sorted(request.params)}")

    complete = stream = _refuse

    async def acomplete(self, request: Any) -> Any:
        self._refuse(request)

    def astream(self, request: Any) -> Any:
        self._refuse(request)


def test_prices_keep_every_call_on_the_lean_path(call) -> None:  # type: ignore[no-untyped-def]
    from atlas_middleware.backends.routing import ModelRouter

    script = {"probe": "Add them.", "teacher": teacher_reply("Add the units first."), "guided": "The answer is 42",
              "baseline": "The answer is 41", "judge_pair": "<verdict>A</verdict>"}
    # strict: the server refuses any field OpenAI's API does not know (a price would be one).
    with OpenAITestServer(ScriptedBackend(script), models=["house", "atlas-8b"], strict=True) as server:
        student = ModelRouter(lean=True, fallback=_NoLiteLLM())
        teacher = ModelRouter({"api_base": server.url, "api_key": "sk-t"}, lean=True, fallback=_NoLiteLLM())
        atlas = Atlas(teacher="hosted_vllm/atlas-8b", teacher_params=TEACHER, student_backend=student,
                      teacher_backend=teacher, ledger="none", teacher_retries=1)
        try:
            report = call(atlas, model="openai/house", api_base=server.url, api_key="sk-s", **STUDENT).atlas
        finally:
            atlas.close()
            student.close()
            teacher.close()
        bodies = [r["body"] for r in server.requests]
    assert report.reason is not Reason.STUDENT_ERROR and report.usage.teacher.calls == 1
    _check_every_role(report)
    assert len(bodies) == 6  # probe, teacher, guided, baseline and the judge in both orders
    assert not any(set(STUDENT) & set(body) for body in bodies)


def test_one_callers_price_never_prices_another_callers_call(call) -> None:  # type: ignore[no-untyped-def]
    # litellm.completion registers a per-call price in its process-wide cost map: passed on,
    # caller A's price would price caller B's calls to the same model. Atlas keeps it per call.
    from atlas_middleware.backends.routing import ModelRouter

    model = f"house-{uuid.uuid4().hex[:8]}"  # not in the cost map, and new to this process
    with OpenAITestServer(ScriptedBackend({"baseline": "The answer is 42"}), models=[model]) as server:
        router = ModelRouter(lean=False)  # every call through litellm.completion itself
        atlas = Atlas(teacher="t", teacher_backend=ScriptedBackend(), student_backend=router, ledger="none")
        kwargs = {"model": f"openai/{model}", "api_base": server.url, "api_key": "sk", "atlas": {"teach": False}}
        try:
            a = call(atlas, **kwargs, input_cost_per_token=1.0, output_cost_per_token=1.0).atlas
            b = call(atlas, **kwargs).atlas
        finally:
            atlas.close()
    assert a.cost_usd == a.usage.baseline.total_tokens * 1.0
    assert b.cost_usd is None  # unknown, as it was before A's call: not A's price


# -- the counterfactual ------------------------------------------------------------------------


def test_an_unmeasured_call_is_estimated_from_its_familys_measured_baselines(make_atlas, call) -> None:  # type: ignore[no-untyped-def]
    atlas, *_ = make_atlas(policy="audit", audit_rate=0.0, teacher_params=TEACHER)  # audit never samples
    first = call(atlas, **STUDENT).atlas
    assert first.reason == Reason.AUDIT_UNCHECKED and first.usage.baseline.calls == 0
    # No baseline and none measured for the family yet: no figure, rather than a guess.
    assert first.counterfactual_basis is None and first.counterfactual_samples is None
    assert first.tokens_saved is first.net_tokens is first.student_alone_cost_usd is first.cost_saved_usd is None

    measured = [call(atlas, atlas={"policy": "strict"}, **STUDENT).atlas for _ in range(3)]
    for r in measured:
        assert (r.counterfactual_basis, r.counterfactual_samples) == ("measured", None)
        assert r.student_alone_cost_usd == pytest.approx(r.usage.baseline.cost_usd)
        assert r.cost_saved_usd == pytest.approx(r.usage.baseline.cost_usd - r.cost_usd)
        assert r.cost_saved_usd < 0  # strict pays for everything the student alone pays, and more

    late = call(atlas, **STUDENT).atlas
    base = measured[0].usage.baseline  # the scripted student answers alike every time
    assert (late.counterfactual_basis, late.counterfactual_samples) == ("estimated", 3)
    assert late.usage.baseline.calls == 0  # an estimate: nothing was run to get it
    assert late.tokens_saved == base.completion_tokens - late.usage.guided.completion_tokens
    assert late.net_tokens == late.usage.total().total_tokens - base.total_tokens
    assert late.student_alone_cost_usd == pytest.approx(base.cost_usd)
    assert late.cost_saved_usd == pytest.approx(base.cost_usd - late.cost_usd)
    assert "(estimated from 3 baselines)" in late.summary()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_a_live_stream_is_priced_and_estimated_when_it_ends(make_atlas, mode: str) -> None:  # type: ignore[no-untyped-def]
    atlas, *_ = make_atlas(policy="off", teacher_params=TEACHER)
    measured = atlas.completion(model="m", messages=QUESTION, atlas={"policy": "strict"}, **STUDENT).atlas
    kwargs = {"model": "m", "messages": QUESTION, "stream": True, **STUDENT}
    if mode == "sync":
        stream = atlas.completion(**kwargs)
        list(stream)
        atlas.flush()
    else:
        async def go() -> Any:
            out = await atlas.acompletion(**kwargs)
            _ = [c async for c in out]
            await atlas.aflush()
            return out

        stream = asyncio.run(go())
    report = stream.atlas  # complete once the stream has ended: the streamed call's usage, priced
    assert report.reason == Reason.POLICY_OFF and report.latency_ms.get("first_token") is not None
    assert report.usage.guided.cost_usd == pytest.approx(_priced(report.usage.guided, STUDENT))
    assert report.usage.teacher.cost_usd == pytest.approx(_priced(report.usage.teacher, TEACHER))
    assert (report.counterfactual_basis, report.counterfactual_samples) == ("estimated", 1)
    assert report.tokens_saved == measured.usage.baseline.completion_tokens - report.usage.guided.completion_tokens
    assert report.cost_saved_usd == pytest.approx(measured.usage.baseline.cost_usd - report.cost_usd)


def test_an_unpriced_family_gets_token_figures_and_no_dollars(make_atlas, call) -> None:  # type: ignore[no-untyped-def]
    atlas, *_ = make_atlas(policy="off")  # scripted models have no price: an unknown price is not 0
    call(atlas, atlas={"policy": "strict"})
    report = call(atlas).atlas
    assert (report.counterfactual_basis, report.counterfactual_samples) == ("estimated", 1)
    assert report.tokens_saved is not None and report.net_tokens is not None
    assert report.student_alone_cost_usd is report.cost_saved_usd is None


def test_a_baseline_verify_ran_after_a_failed_grade_is_no_sample(make_atlas, call) -> None:  # type: ignore[no-untyped-def]
    # verify runs a baseline only for a guided answer that failed its grade: a harder call than
    # most, so its baseline would bias the family's mean; it is measured, but not kept.
    grades = ["<verdict>2</verdict>", "<verdict>9</verdict>"]  # fail, then pass from then on
    atlas, *_ = make_atlas(policy="verify", teacher={"judge_score": grades})
    failed = call(atlas).atlas
    assert failed.counterfactual_basis == "measured" and failed.usage.baseline.calls == 1
    assert call(atlas).atlas.counterfactual_basis is None  # verified, and no fair sample to estimate from
    call(atlas, atlas={"teach": False})  # the student alone: a fair sample
    verified = call(atlas).atlas
    assert verified.reason == Reason.VERIFIED
    assert (verified.counterfactual_basis, verified.counterfactual_samples) == ("estimated", 1)


def test_families_and_students_keep_their_own_means(make_atlas, call) -> None:  # type: ignore[no-untyped-def]
    atlas, *_ = make_atlas(policy="off")
    call(atlas, atlas={"policy": "strict", "task": "sums"})
    assert call(atlas, atlas={"task": "other"}).atlas.counterfactual_basis is None
    assert call(atlas, model="another-student", atlas={"task": "sums"}).atlas.counterfactual_basis is None
    assert call(atlas, atlas={"task": "sums"}).atlas.counterfactual_basis == "estimated"


def test_the_means_follow_recent_baselines_with_a_bounded_sample() -> None:
    from atlas_middleware.pricing import BASELINE_HORIZON, BaselineStats
    from atlas_middleware.usage import Usage

    stats = BaselineStats()
    for _ in range(2000):
        stats = stats.added(Usage(prompt_tokens=10, completion_tokens=100, calls=1, cost_usd=0.01))
    for _ in range(400):  # the student's answers get shorter
        stats = stats.added(Usage(prompt_tokens=10, completion_tokens=20, calls=1, cost_usd=None))
    assert stats.samples < BASELINE_HORIZON
    assert 20 < stats.mean_completion_tokens < 20 + 80 * 0.2  # mostly the recent answers
    assert stats.mean_cost_usd == pytest.approx(0.01)  # unpriced baselines leave the price mean alone


# -- shared through the state ----------------------------------------------------------------

REDIS_URL = os.environ.get("TEST_REDIS_URL")
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="TEST_REDIS_URL is unset: run scripts/ci-services.sh")


@needs_redis
def test_replicas_share_their_families_baselines_through_redis(make_atlas, call) -> None:  # type: ignore[no-untyped-def]
    prefix = f"atlas-test-{uuid.uuid4().hex[:8]}:"
    one, *_ = make_atlas(policy="audit", audit_rate=0.0, state=REDIS_URL, state_prefix=prefix)
    two, *_ = make_atlas(policy="audit", audit_rate=0.0, state=REDIS_URL, state_prefix=prefix)
    measured = call(one, atlas={"policy": "strict"}, **STUDENT).atlas
    other = call(two, **STUDENT).atlas  # another replica: its memory never saw the baseline
    assert (other.counterfactual_basis, other.counterfactual_samples) == ("estimated", 1)
    assert other.student_alone_cost_usd == pytest.approx(measured.usage.baseline.cost_usd)
    assert two.state.status().fallbacks == {}


@needs_redis
def test_redis_keeps_the_same_means_as_memory() -> None:
    from atlas_middleware.pricing import BaselineStats
    from atlas_middleware.state.baselines import MemoryBaselines
    from atlas_middleware.state.redis import RedisBaselines, connect
    from atlas_middleware.usage import Usage

    assert REDIS_URL
    client = connect(REDIS_URL, 1.0)
    shared, memory = RedisBaselines(client, f"atlas-test-{uuid.uuid4().hex[:8]}:"), MemoryBaselines()
    assert shared.get("m|f:x") is None
    for usage in (Usage(prompt_tokens=12, completion_tokens=30, calls=1, cost_usd=2.5e-4),
                  Usage(prompt_tokens=14, completion_tokens=50, calls=1, cost_usd=None)):
        shared.add("m|f:x", usage)
        memory.add("m|f:x", usage)
    got, want = shared.get("m|f:x"), memory.get("m|f:x")
    assert isinstance(got, BaselineStats) and want is not None
    for name in ("samples", "prompt_tokens", "completion_tokens", "priced", "cost_usd"):
        assert getattr(got, name) == pytest.approx(getattr(want, name)), name
    client.close()


def test_a_state_that_fails_serves_the_means_from_memory() -> None:
    from atlas_middleware.state import FallbackState, MemoryState
    from atlas_middleware.usage import Usage

    class Down:
        blocking = True

        def __getattr__(self, name: str) -> Any:
            raise ConnectionError("redis is down")

        def status(self) -> Any:
            from atlas_middleware.state import StateStatus

            return StateStatus(backend="redis")

    state = FallbackState(Down(), MemoryState())  # type: ignore[arg-type]
    state.baselines.add("m|f:x", Usage(prompt_tokens=5, completion_tokens=7, calls=1, cost_usd=1e-5))
    stats = state.baselines.get("m|f:x")
    assert stats is not None and stats.mean_completion_tokens == 7
    assert state.status().degraded and state.status().fallbacks.get("baseline_add", 0) >= 1


# -- the ledger --------------------------------------------------------------------------------


def test_the_ledger_keeps_the_counterfactual(make_atlas, call, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    atlas, *_ = make_atlas(policy="off", teacher_params=TEACHER, ledger=f"sqlite:///{tmp_path / 'l.db'}")
    measured = call(atlas, atlas={"policy": "strict"}, **STUDENT).atlas
    estimated = call(atlas, **STUDENT).atlas
    rows = {r.call_id: r for r in atlas.ledger.records()}
    for report in (measured, estimated):
        row = rows[report.call_id]
        assert (row.counterfactual_basis, row.counterfactual_samples) == (report.counterfactual_basis,
                                                                          report.counterfactual_samples)
        assert row.student_alone_cost_usd == pytest.approx(report.student_alone_cost_usd)
        assert row.cost_saved_usd == pytest.approx(report.cost_saved_usd)
        assert (row.tokens_saved, row.net_tokens) == (report.tokens_saved, report.net_tokens)
    assert rows[estimated.call_id].counterfactual_basis == "estimated"


def test_a_version_2_sqlite_ledger_gains_the_columns(tmp_path: Path) -> None:
    from atlas_middleware.ledger import SQLiteLedger
    from atlas_middleware.ledger.sqlite import SCHEMA_VERSION

    path = tmp_path / "v2.db"
    SQLiteLedger(path).close()
    with sqlite3.connect(path) as conn:  # back to version 2: without the four columns, one old row
        for column in ("student_alone_cost_usd", "cost_saved_usd", "counterfactual_basis", "counterfactual_samples",
                       "mode"):  # version 3 also added the adaptive policy's mode
            conn.execute(f"ALTER TABLE atlas_calls DROP COLUMN {column}")
        conn.execute("UPDATE atlas_meta SET value = '2' WHERE key = 'schema_version'")
        conn.execute(
            "INSERT INTO atlas_calls (call_id, created_at, student_model, teacher_model, policy, session_id, "
            "task_family, decision, reason, failed, tokens, tokens_saved, net_tokens, cost_usd, latency_ms, "
            "teacher_latency_ms, errors, prompt_sha256, prompt_chars, answer_sha256, answer_chars, prompt_text, "
            "answer_text, report_json) VALUES ('old', '2026-01-01T00:00:00+00:00', 'm', NULL, 'strict', NULL, "
            "NULL, 'guided', 'agreement', 0, '{}', 3, 40, 0.001, 5.0, NULL, 0, 'ab', 2, NULL, NULL, NULL, NULL, "
            "?)", (json.dumps({"student_model": "m", "policy": "strict", "call_id": "old"}),))
    conn.close()
    ledger = SQLiteLedger(path)
    try:
        assert ledger.schema_version() == SCHEMA_VERSION == 3
        (old,) = ledger.records()
        assert (old.tokens_saved, old.counterfactual_basis, old.cost_saved_usd) == (3, None, None)
    finally:
        ledger.close()


PG_URL = os.environ.get("TEST_POSTGRES_URL")


@pytest.mark.skipif(not PG_URL, reason="TEST_POSTGRES_URL is unset: run scripts/ci-services.sh")
def test_a_version_2_postgres_ledger_gains_the_columns(make_atlas) -> None:  # type: ignore[no-untyped-def]
    import psycopg

    from atlas_middleware.ledger.postgres import SCHEMA_VERSION, PostgresLedger

    assert PG_URL
    name = f"atlas_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = PG_URL.rsplit("/", 1)[0] + "/" + name
    try:
        PostgresLedger(url).close()
        with psycopg.connect(url, autocommit=True) as conn:
            for column in ("student_alone_cost_usd", "cost_saved_usd", "counterfactual_basis",
                           "counterfactual_samples", "mode"):
                conn.execute(f"ALTER TABLE atlas_calls DROP COLUMN {column}")
            conn.execute("UPDATE atlas_meta SET value = '2' WHERE key = 'schema_version'")
        atlas, *_ = make_atlas(policy="off", teacher_params=TEACHER, ledger=url)
        assert atlas.ledger.schema_version() == SCHEMA_VERSION == 3
        atlas.completion(model="m", messages=QUESTION, atlas={"policy": "strict"}, **STUDENT)
        estimated = asyncio.run(atlas.acompletion(model="m", messages=QUESTION, **STUDENT)).atlas
        atlas.flush()
        row = {r.call_id: r for r in atlas.ledger.records()}[estimated.call_id]
        assert (row.counterfactual_basis, row.counterfactual_samples) == ("estimated", 1)
        assert row.cost_saved_usd == pytest.approx(estimated.cost_saved_usd)
        assert row.student_alone_cost_usd == pytest.approx(estimated.student_alone_cost_usd)
        atlas.close()
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- the proxy's launcher: a bad price stops it before LiteLLM starts ----------------------------


@pytest.mark.parametrize(("deployment", "atlas", "message"), [
    ({"litellm_params": {"model": "atlas/openai/m", "input_cost_per_token": "a lot", "output_cost_per_token": 1e-6}},
     {}, r"model_list\[0\] \(m\): input_cost_per_token: must be a price"),
    ({"litellm_params": {"model": "atlas/openai/m"}, "model_info": {"input_cost_per_token": 1e-6}},
     {}, r"model_list\[0\] \(m\): input_cost_per_token is given without output_cost_per_token"),
    ({"litellm_params": {"model": "atlas/openai/m"}}, {"teacher_params": {"output_cost_per_token": -2}},
     r"teacher\.params: .*output_cost_per_token: must be a price"),
])
def test_the_proxy_refuses_a_bad_price_at_start(tmp_path: Path, deployment: dict[str, Any], atlas: dict[str, Any],
                                                message: str) -> None:
    import yaml

    from atlas_middleware.proxy.launcher import ProxySettings, check_atlas_config, proxy_env
    from atlas_middleware.testing.proxy import GENERAL_SETTINGS, LITELLM_SETTINGS

    config = {"model_list": [{"model_name": "m", **deployment}], "litellm_settings": LITELLM_SETTINGS,
              "general_settings": GENERAL_SETTINGS,
              "atlas": {"teacher": "openai/t", "teacher_api_base": "http://127.0.0.1:9/v1", "ledger": "none", **atlas}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    settings = ProxySettings(config=path)
    with pytest.raises(ConfigError, match=message):
        check_atlas_config(settings, proxy_env(settings, {"LITELLM_MASTER_KEY": "sk-m"}))
    good = {"model_name": "m", "litellm_params": {"model": "atlas/openai/m", **STUDENT}}
    path.write_text(yaml.safe_dump({**config, "model_list": [good], "atlas": {**config["atlas"], "teacher_params": TEACHER}}))
    assert check_atlas_config(settings, proxy_env(settings, {"LITELLM_MASTER_KEY": "sk-m"})) is not None
