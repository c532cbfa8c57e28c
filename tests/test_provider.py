"""The ``atlas`` LiteLLM custom provider, driven through plain ``litellm.completion``.

One OpenAI-compatible test server plays student (``openai/gpt-4o-mini``) and teacher
(``openai/gpt-4o``): both are models LiteLLM has prices for, so cost tracking is checked
with real figures. A ``CustomLogger`` counts LiteLLM's success events.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest

litellm = pytest.importorskip("litellm")
from conftest import ADDITION_BASELINE, ADDITION_GUIDED, ADDITION_QUESTION  # noqa: E402
from litellm.integrations.custom_logger import CustomLogger  # noqa: E402

from atlas_middleware import CallReport, Reason  # noqa: E402
from atlas_middleware.ledger import open_ledger  # noqa: E402
from atlas_middleware.provider import AtlasLLM, RequestOptions, register, report_of  # noqa: E402
from atlas_middleware.testing import HTTPFault, OpenAITestServer, ScriptedBackend  # noqa: E402

STUDENT = "atlas/openai/gpt-4o-mini"
TEACHER_KEY = "sk-teacher-provider-secret-0042"
QUESTION, GUIDED, BASELINE = ADDITION_QUESTION, ADDITION_GUIDED, ADDITION_BASELINE


class SuccessCounter(CustomLogger):
    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    def _add(self, kind: str, kwargs: dict[str, Any], response: Any) -> None:
        slo = kwargs.get("standard_logging_object") or {}
        self.events.append({"kind": kind, "model": kwargs.get("model"), "cost": kwargs.get("response_cost"),
                            "provider": (kwargs.get("litellm_params") or {}).get("custom_llm_provider"),
                            "prompt_tokens": slo.get("prompt_tokens"),
                            "completion_tokens": slo.get("completion_tokens")})

    def log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._add("sync", kwargs, response_obj)

    async def async_log_success_event(self, kwargs: Any, response_obj: Any, start_time: Any, end_time: Any) -> None:
        self._add("async", kwargs, response_obj)

    def wait_for(self, n: int, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Events arrive from LiteLLM's background threads: wait for ``n``, then a bit more
        to catch any extra (double-counted) event."""
        deadline = time.monotonic() + timeout
        while len(self.events) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        return list(self.events)


@pytest.fixture(scope="module")
def ledger_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('provider-ledger') / 'ledger.db'}"


@pytest.fixture(scope="module")
def provider(upstream: OpenAITestServer, ledger_url: str) -> Iterator[AtlasLLM]:
    old_map = list(litellm.custom_provider_map)
    # lean_http=False: every inner call goes through litellm.completion, the path where
    # LiteLLM's callbacks could count it (the lean HTTP path bypasses LiteLLM entirely).
    prov = register(teacher="openai/gpt-4o", teacher_api_base=upstream.url, teacher_api_key=TEACHER_KEY,
                    ledger=ledger_url, policy="strict", lean_http=False)
    yield prov
    prov.close()
    litellm.custom_provider_map = old_map


@pytest.fixture(scope="module")
def _counter(provider: AtlasLLM) -> Iterator[SuccessCounter]:
    # One logger for the module: LiteLLM copies ``callbacks`` into its per-event lists and
    # skips a second logger of the same class, so a fresh one per test would hear nothing.
    c = SuccessCounter()
    litellm.logging_callback_manager.add_litellm_callback(c)
    yield c
    litellm.logging_callback_manager.remove_callback_from_all_lists(c)


@pytest.fixture
def counter(_counter: SuccessCounter) -> SuccessCounter:
    time.sleep(0.3)  # let late background events of the previous test land first
    _counter.events.clear()
    return _counter


def call(**kwargs: Any) -> Any:
    return litellm.completion(model=STUDENT, messages=QUESTION, api_base=kwargs.pop("api_base"), api_key="sk-student",
                              **kwargs)


def _check_delivered(response: Any, report: CallReport) -> None:
    assert report.decision == "guided" and report.reason == Reason.AGREEMENT
    assert response.choices[0].message.content == GUIDED
    delivered = report.usage.guided
    assert response.usage.prompt_tokens == delivered.prompt_tokens
    assert response.usage.completion_tokens == delivered.completion_tokens
    assert report.cost_usd is not None and report.cost_usd > 0


def _check_one_event(events: list[dict[str, Any]], report: CallReport, delivered: Any) -> None:
    assert len(events) == 1, events  # the inner probe/teacher/guided/baseline calls are not logged
    event = events[0]
    assert event["provider"] == "atlas"
    assert event["cost"] == pytest.approx(report.cost_usd)  # every inner call, by its own model
    assert (event["prompt_tokens"], event["completion_tokens"]) == (delivered.prompt_tokens,
                                                                     delivered.completion_tokens)


def test_sync_completion_runs_the_loop(upstream: OpenAITestServer, backend: ScriptedBackend,
                                       counter: SuccessCounter, ledger_url: str) -> None:
    response = call(api_base=upstream.url, temperature=0.2)
    report = response.atlas
    assert isinstance(report, CallReport) and report_of(response) is report
    assert sorted(backend.roles()) == ["baseline", "guided", "probe", "teacher"]
    _check_delivered(response, report)
    assert report.student_model == "openai/gpt-4o-mini"  # the inner model, not atlas/...
    assert sorted({r.model for _, r in backend.calls}) == ["gpt-4o", "gpt-4o-mini"]  # never atlas/...
    # the caller's parameters reach the student's answer calls
    guided = next(r for role, r in backend.calls if role == "guided")
    assert guided.params.get("temperature") == 0.2
    _check_one_event(counter.wait_for(1), report, report.usage.guided)
    # the call is in the ledger
    ids = [r.call_id for r in open_ledger(ledger_url).records()]
    assert report.call_id in ids


async def test_async_completion(upstream: OpenAITestServer, backend: ScriptedBackend,
                                counter: SuccessCounter) -> None:
    response = await litellm.acompletion(model=STUDENT, messages=QUESTION, api_base=upstream.url, api_key="sk-s")
    report = report_of(response)
    assert report is not None
    _check_delivered(response, report)
    events = await asyncio.to_thread(counter.wait_for, 1)
    _check_one_event(events, report, report.usage.guided)


def _stream_parts(chunks: list[Any]) -> tuple[str, Any]:
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = [getattr(c, "usage", None) for c in chunks if getattr(c, "usage", None) is not None]
    return text, usage[-1] if usage else None


def test_sync_stream(upstream: OpenAITestServer, backend: ScriptedBackend, counter: SuccessCounter) -> None:
    stream = call(api_base=upstream.url, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    report = report_of(stream)
    assert report is not None and report.decision == "guided"
    text, usage = _stream_parts(chunks)
    assert text == GUIDED
    assert usage.completion_tokens == report.usage.guided.completion_tokens
    assert usage.prompt_tokens == report.usage.guided.prompt_tokens
    _check_one_event(counter.wait_for(1), report, report.usage.guided)


async def test_async_stream(upstream: OpenAITestServer, backend: ScriptedBackend, counter: SuccessCounter) -> None:
    stream = await litellm.acompletion(model=STUDENT, messages=QUESTION, api_base=upstream.url, api_key="sk-s",
                                       stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    report = report_of(stream)
    assert report is not None
    text, usage = _stream_parts(chunks)
    assert text == GUIDED
    assert usage.completion_tokens == report.usage.guided.completion_tokens
    events = await asyncio.to_thread(counter.wait_for, 1)
    _check_one_event(events, report, report.usage.guided)


def test_opt_out_and_policy_override_via_metadata(upstream: OpenAITestServer, backend: ScriptedBackend) -> None:
    response = call(api_base=upstream.url, metadata={"atlas": {"teach": False}})
    assert response.atlas.reason == Reason.OPTED_OUT and response.atlas.decision == "student_only"
    assert backend.roles() == ["baseline"]
    assert response.choices[0].message.content == BASELINE
    assert response.usage.completion_tokens == response.atlas.usage.baseline.completion_tokens

    response = call(api_base=upstream.url, metadata={"atlas": {"policy": "off"}})
    assert response.atlas.policy == "off"
    assert response.atlas.decision == "guided" and response.atlas.usage.baseline.calls == 0


def test_session_reuses_the_diagnosis(upstream: OpenAITestServer, backend: ScriptedBackend) -> None:
    first = call(api_base=upstream.url, metadata={"atlas": {"session_id": "agent-7"}})
    assert first.atlas.session_id == "agent-7" and not first.atlas.guidance_reused
    n_teacher = backend.roles().count("teacher")
    second = call(api_base=upstream.url, metadata={"atlas": {"session_id": "agent-7"}})
    assert second.atlas.guidance_reused
    assert backend.roles().count("teacher") == n_teacher  # no new probe or teacher call
    assert backend.roles().count("probe") == 1


def test_teacher_failure_fails_open_without_leaking_the_key(upstream: OpenAITestServer, backend: ScriptedBackend,
                                                            ledger_url: str) -> None:
    backend.script["teacher"] = HTTPFault(500, f"upstream exploded, api_key={TEACHER_KEY}")
    response = call(api_base=upstream.url)
    report = response.atlas
    assert report.reason == Reason.TEACHER_ERROR
    assert report.decision in ("baseline", "student_only")
    assert response.choices[0].message.content == BASELINE
    dumped = report.model_dump_json()
    assert report.errors and TEACHER_KEY not in dumped
    records = [r for r in open_ledger(ledger_url).records() if r.call_id == report.call_id]
    assert records and TEACHER_KEY not in records[0].model_dump_json()


def test_student_error_is_the_providers_own(upstream: OpenAITestServer, backend: ScriptedBackend) -> None:
    backend.script = {"*": HTTPFault(429, "slow down", headers={"Retry-After": "1"})}
    with pytest.raises(litellm.RateLimitError):
        call(api_base=upstream.url, num_retries=0)


def test_a_bad_option_is_a_bad_request(upstream: OpenAITestServer, backend: ScriptedBackend) -> None:
    with pytest.raises(litellm.BadRequestError, match="unknown policy"):
        call(api_base=upstream.url, metadata={"atlas": {"policy": "bogus"}})
    assert backend.calls == []


def test_request_options_from_headers_and_metadata() -> None:
    opts = RequestOptions.from_litellm(
        {"metadata": {"headers": {"X-Atlas-Teach": "false", "x-atlas-session-id": "s9"},
                      "atlas": {"policy": "verify"}}}, {})
    assert opts.as_call_options() == {"teach": False, "policy": "verify", "session_id": "s9"}
    assert RequestOptions.from_litellm(None, {"atlas": {"teach": "yes"}}).teach is True
    assert RequestOptions.from_litellm({}, {}).as_call_options() == {}
    assert RequestOptions.from_litellm({"metadata": {"headers": {"X-Atlas-Task": "faq"}}}, {}).task == "faq"
    assert RequestOptions.from_litellm({"metadata": {"headers": {"x-atlas-learn": "false"}}}, {}).learn is False
    assert RequestOptions.from_litellm({"metadata": {"atlas": {"learn": False}}}, {}).as_call_options() == {"learn": False}


def test_the_task_comes_from_a_header_or_metadata(provider: AtlasLLM, upstream: OpenAITestServer,
                                                  backend: ScriptedBackend, ledger_url: str) -> None:
    from atlas_middleware.teaching.families import family_of

    tagged = call(api_base=upstream.url, metadata={"headers": {"X-Atlas-Task": "sums"}}).atlas
    assert tagged.task_family == "t:sums"
    both = call(api_base=upstream.url, metadata={"headers": {"x-atlas-task": "header"},
                                                 "atlas": {"task": "metadata"}}).atlas
    assert both.task_family == "t:metadata"  # metadata wins over a header, as for every option
    derived = call(api_base=upstream.url).atlas
    assert derived.task_family == family_of(QUESTION, {})
    rows = {r.call_id: r for r in open_ledger(ledger_url).records()}
    assert rows[tagged.call_id].task_family == "t:sums" and rows[derived.call_id].task_family == derived.task_family
    n = len(backend.calls)
    with pytest.raises(litellm.BadRequestError, match="control characters"):
        call(api_base=upstream.url, metadata={"headers": {"x-atlas-task": "two\nlines"}})
    assert len(backend.calls) == n


def test_a_deployment_price_is_the_students(upstream: OpenAITestServer, backend: ScriptedBackend,
                                            provider: AtlasLLM) -> None:
    # A router deployment with its own price (as in a proxy config): the student's calls
    # are priced by it, the teacher by LiteLLM's map, and the call's cost is the report's.
    prices = {"input_cost_per_token": 3e-6, "output_cost_per_token": 7e-6}
    router = litellm.Router(model_list=[{"model_name": "house", "model_info": prices, "litellm_params": {
        "model": "atlas/openai/house-student", "api_base": upstream.url, "api_key": "sk-student"}}])
    response = router.completion(model="house", messages=QUESTION)
    report = report_of(response)
    assert report is not None and report.decision == "guided"
    for role in ("probe", "guided", "baseline"):
        usage = getattr(report.usage, role)
        assert usage.cost_usd == pytest.approx(usage.prompt_tokens * prices["input_cost_per_token"]
                                               + usage.completion_tokens * prices["output_cost_per_token"])
    teacher = report.usage.teacher
    assert teacher.cost_usd == pytest.approx(sum(litellm.cost_per_token(
        model="gpt-4o", prompt_tokens=teacher.prompt_tokens, completion_tokens=teacher.completion_tokens)))
    assert report.cost_usd is not None
    assert response._hidden_params["response_cost"] == pytest.approx(report.cost_usd)
