"""The real LiteLLM proxy, started by ``atlas-middleware proxy``, against the official client.

One proxy process for the module (it takes tens of seconds to start on a small machine),
an OpenAI-compatible test server in this process as both student and teacher.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("litellm.proxy.proxy_server")
pytest.importorskip("prometheus_client")

from conftest import ADDITION_BASELINE, ADDITION_GUIDED, ADDITION_QUESTION  # noqa: E402

from atlas_middleware.messages import text_chars  # noqa: E402
from atlas_middleware.testing import HTTPFault, OpenAITestServer, Reply, ScriptedBackend  # noqa: E402
from atlas_middleware.testing.proxy import GENERAL_SETTINGS, LITELLM_SETTINGS, ProxyProcess  # noqa: E402

pytestmark = pytest.mark.slow

TEACHER_KEY = "sk-teacher-proxy-secret-7731"
MODEL = "gpt-4o-mini"
QUESTION, GUIDED, BASELINE = ADDITION_QUESTION, ADDITION_GUIDED, ADDITION_BASELINE
ATLAS_HEADERS = ("x-atlas-call-id", "x-atlas-decision", "x-atlas-tokens-saved", "x-atlas-net-tokens")


@pytest.fixture(scope="module")
def ledger_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proxy-ledger") / "ledger.db"


@pytest.fixture(scope="module")
def proxy(upstream: OpenAITestServer, ledger_path: Path) -> Iterator[ProxyProcess]:
    atlas = {"teacher": "openai/gpt-4o", "teacher_api_base": upstream.url, "policy": "strict",
             "ledger": f"sqlite:///{ledger_path}", "teacher_retries": 1}
    # The teacher's key comes from the environment, as the docs recommend.
    with ProxyProcess(student_url=upstream.url, atlas=atlas, env={"ATLAS_TEACHER_API_KEY": TEACHER_KEY}) as p:
        yield p


@pytest.fixture
def client(proxy: ProxyProcess) -> Iterator[Any]:
    with openai.OpenAI(base_url=proxy.url, api_key=proxy.master_key, max_retries=0, timeout=60) as client:
        yield client  # closed after the test, and its pooled connections with it


def _atlas_headers(headers: Any) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items() if k.lower().startswith("x-atlas-")}


def _ledger_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM atlas_calls")]


def _metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _metrics(proxy: ProxyProcess) -> str:
    return httpx.get(f"{proxy.base}/atlas/metrics", timeout=60).text


def test_sync_completion_headers_body_usage(client: Any, backend: ScriptedBackend) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION)
    headers = _atlas_headers(raw.headers)
    assert set(ATLAS_HEADERS) <= set(headers)
    assert headers["x-atlas-decision"] == "guided"
    completion = raw.parse()
    assert completion.choices[0].message.content == GUIDED
    report = completion.model_extra["atlas"]  # the extra top-level field the SDK keeps aside
    assert report["call_id"] == headers["x-atlas-call-id"]
    assert str(report["tokens_saved"]) == headers["x-atlas-tokens-saved"]
    assert str(report["net_tokens"]) == headers["x-atlas-net-tokens"]
    assert headers["x-atlas-protocol"] == report["protocol"] == "structured"
    assert completion.usage.completion_tokens == report["usage"]["guided"]["completion_tokens"]
    assert completion.usage.prompt_tokens == report["usage"]["guided"]["prompt_tokens"]
    assert sorted(backend.roles()) == ["baseline", "guided", "probe", "teacher"]
    # LiteLLM's own spend figure for the call is the report's (every inner call, by its model)
    assert float(raw.headers["x-litellm-response-cost"]) == pytest.approx(report["cost_usd"])


async def test_async_client(proxy: ProxyProcess, backend: ScriptedBackend) -> None:
    aclient = openai.AsyncOpenAI(base_url=proxy.url, api_key=proxy.master_key, max_retries=0, timeout=60)
    raw = await aclient.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION)
    assert _atlas_headers(raw.headers)["x-atlas-decision"] == "guided"
    completion = raw.parse()
    assert completion.choices[0].message.content == GUIDED

    stream = await aclient.chat.completions.create(model=MODEL, messages=QUESTION, stream=True,
                                                   stream_options={"include_usage": True})
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert text == GUIDED
    assert usage is not None and usage.completion_tokens == len(GUIDED.split())
    await aclient.close()


def test_stream_sse_headers_and_usage(client: Any, proxy: ProxyProcess, backend: ScriptedBackend) -> None:
    with client.chat.completions.with_streaming_response.create(
        model=MODEL, messages=QUESTION, stream=True, stream_options={"include_usage": True}
    ) as response:
        headers = _atlas_headers(response.headers)
        lines = [line for line in response.iter_lines() if line]
    assert set(ATLAS_HEADERS) <= set(headers) and headers["x-atlas-decision"] == "guided"
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices"))
    assert text == GUIDED
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == len(GUIDED.split())  # the delivered (guided) answer's
    # the report the headers name is the one in the ledger, with the same delivered usage
    deadline = time.monotonic() + 10
    row: dict[str, Any] | None = None
    while row is None and time.monotonic() < deadline:
        row = next((r for r in _ledger_rows(Path(proxy.atlas["ledger"][len("sqlite:///"):]))
                    if r["call_id"] == headers["x-atlas-call-id"]), None)
        time.sleep(0.1)
    assert row is not None

    # the official SDK's iterator, too
    stream = client.chat.completions.create(model=MODEL, messages=QUESTION, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == GUIDED


def test_models_and_health(client: Any, proxy: ProxyProcess) -> None:
    assert MODEL in [m.id for m in client.models.list()]
    for path in ("/health/liveliness", "/health/readiness"):
        assert httpx.get(proxy.base + path, timeout=30).status_code == 200


def test_wrong_key_is_401(proxy: ProxyProcess, backend: ScriptedBackend) -> None:
    with openai.OpenAI(base_url=proxy.url, api_key="sk-wrong-key", max_retries=0, timeout=60) as bad, \
            pytest.raises(openai.AuthenticationError) as info:
        bad.chat.completions.create(model=MODEL, messages=QUESTION)
    assert info.value.status_code == 401
    no_key = httpx.post(f"{proxy.url}/chat/completions", json={"model": MODEL, "messages": QUESTION}, timeout=60)
    assert no_key.status_code == 401
    assert backend.calls == []


def test_malformed_body_is_400_and_not_a_success(proxy: ProxyProcess, backend: ScriptedBackend,
                                                 ledger_path: Path) -> None:
    before_rows = len(_ledger_rows(ledger_path))
    before_calls = _metric(_metrics(proxy), "atlas_calls_total")
    auth = {"Authorization": f"Bearer {proxy.master_key}", "Content-Type": "application/json"}
    for body in (b'{"model": "gpt-4o-mini", "messages": [', b'{"model": "gpt-4o-mini"}'):
        response = httpx.post(f"{proxy.url}/chat/completions", content=body, headers=auth, timeout=60)
        assert response.status_code == 400, response.text
        assert not _atlas_headers(response.headers)
    bad_option = httpx.post(f"{proxy.url}/chat/completions", json={"model": MODEL, "messages": QUESTION},
                            headers={**auth, "x-atlas-policy": "bogus"}, timeout=60)
    assert bad_option.status_code == 400, bad_option.text
    time.sleep(0.5)
    assert backend.calls == []
    assert len(_ledger_rows(ledger_path)) == before_rows
    assert _metric(_metrics(proxy), "atlas_calls_total") == before_calls


def test_opt_out_and_policy_by_header_or_metadata(client: Any, backend: ScriptedBackend) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, extra_headers={"x-atlas-teach": "false"})
    headers = _atlas_headers(raw.headers)
    assert headers["x-atlas-decision"] == "student_only" and headers["x-atlas-reason"] == "opted_out"
    assert raw.parse().choices[0].message.content == BASELINE
    assert backend.roles() == ["baseline"]

    completion = client.chat.completions.create(
        model=MODEL, messages=QUESTION, extra_body={"metadata": {"atlas": {"teach": False}}})
    assert completion.model_extra["atlas"]["reason"] == "opted_out"

    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=QUESTION, extra_headers={"x-atlas-policy": "off"})
    assert _atlas_headers(raw.headers)["x-atlas-policy"] == "off"
    assert raw.parse().model_extra["atlas"]["usage"]["baseline"]["calls"] == 0


def test_the_task_family_by_header(client: Any, backend: ScriptedBackend) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=QUESTION, extra_headers={"x-atlas-task": "sums"})
    assert completion.model_extra["atlas"]["task_family"] == "t:sums"
    derived = client.chat.completions.create(model=MODEL, messages=QUESTION)
    assert derived.model_extra["atlas"]["task_family"].startswith("f:")


def test_session_shares_one_diagnosis(client: Any, backend: ScriptedBackend) -> None:
    session = {"x-atlas-session-id": "agent-42"}
    first = client.chat.completions.create(model=MODEL, messages=QUESTION, extra_headers=session)
    assert first.model_extra["atlas"]["session_id"] == "agent-42"
    teacher_calls = backend.roles().count("teacher")
    second = client.chat.completions.create(
        model=MODEL, messages=[*QUESTION, {"role": "assistant", "content": GUIDED},
                               {"role": "user", "content": "And 3+3?"}],
        extra_body={"metadata": {"atlas": {"session_id": "agent-42"}}})
    assert second.model_extra["atlas"]["guidance_reused"] is True
    assert backend.roles().count("teacher") == teacher_calls


def test_teacher_failure_fails_open_and_the_key_never_leaks(client: Any, proxy: ProxyProcess,
                                                            backend: ScriptedBackend, ledger_path: Path) -> None:
    # A teacher whose errors echo its credentials, as some providers do.
    backend.script["teacher"] = HTTPFault(500, f"teacher down (api_key={TEACHER_KEY}, Bearer {TEACHER_KEY})")
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=QUESTION)
    headers = _atlas_headers(raw.headers)
    assert headers["x-atlas-reason"] == "teacher_error"
    body = raw.http_response.text
    assert raw.parse().choices[0].message.content == BASELINE
    teacher_requests = [r for r in _requests_of(backend) if r == "teacher"]
    assert teacher_requests  # the teacher was really called (and failed)
    time.sleep(0.5)
    assert TEACHER_KEY not in body and TEACHER_KEY not in json.dumps(dict(raw.headers))
    assert TEACHER_KEY not in proxy.log()
    assert TEACHER_KEY not in ledger_path.read_bytes().decode("utf-8", "replace")
    assert _metric(_metrics(proxy), "atlas_teacher_errors_total", reason="teacher_error") >= 1


def _requests_of(backend: ScriptedBackend) -> list[str]:
    return backend.roles()


def test_metrics_endpoint(client: Any, proxy: ProxyProcess, backend: ScriptedBackend) -> None:
    before = _metrics(proxy)
    client.chat.completions.create(model=MODEL, messages=QUESTION)
    text = _metrics(proxy)
    assert _metric(text, "atlas_calls_total", decision="guided") == _metric(before, "atlas_calls_total",
                                                                            decision="guided") + 1
    for role in ("probe", "teacher", "guided", "baseline"):
        assert _metric(text, "atlas_tokens_total", role=role) > _metric(before, "atlas_tokens_total", role=role)
    assert _metric(text, "atlas_teacher_latency_seconds_count") >= 1
    assert re.search(r"^atlas_tokens_saved\{replica=\"[^\"]+\"\} ", text, re.M)


def test_bundled_config_carries_the_same_lines(proxy: ProxyProcess) -> None:
    import yaml

    bundled = Path(__file__).resolve().parents[1] / "integrations" / "litellm_proxy" / "config.yaml"
    config = yaml.safe_load(bundled.read_text())
    settings = config["litellm_settings"]
    assert settings["custom_provider_map"] == LITELLM_SETTINGS["custom_provider_map"]
    assert settings["callbacks"] == LITELLM_SETTINGS["callbacks"]
    assert config["general_settings"] == GENERAL_SETTINGS


def test_live_stream_under_off_reaches_the_client_before_the_student_has_finished(
    client: Any, proxy: ProxyProcess, backend: ScriptedBackend
) -> None:
    """A structural time-to-first-token check: the upstream student stops after the first
    chunk of the guided stream until the client holds it (``hold_stream``)."""
    from atlas_middleware.testing.scripted import hold_stream

    release = threading.Event()
    hold_stream(backend, "guided", release)
    try:
        with client.chat.completions.with_streaming_response.create(
            model=MODEL, messages=QUESTION, stream=True, stream_options={"include_usage": True},
            extra_headers={"x-atlas-policy": "off"},
        ) as response:
            headers = _atlas_headers(response.headers)
            chunks: list[dict[str, Any]] = []
            for line in response.iter_lines():
                if not line or line == "data: [DONE]":
                    continue
                chunks.append(json.loads(line[len("data: "):]))
                if any(c.get("choices") and c["choices"][0]["delta"].get("content") for c in chunks):
                    release.set()  # the first word is here, and the student has not finished
    finally:
        backend.stream_holds.clear()
    assert (headers["x-atlas-decision"], headers["x-atlas-reason"]) == ("guided", "policy_off")
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices"))
    assert text == GUIDED
    assert chunks[-1]["usage"]["completion_tokens"] == len(GUIDED.split())  # the guided call's, at the end
    assert sorted(backend.roles()) == ["guided", "probe", "teacher"]  # nothing compared before delivery


HUGE_PROMPT_CHARS = 6_000_000  # several MB, under the gate's default 10 MiB body limit
# A probe answers in tens of ms here; before issue 23 an 80 KB prompt held the proxy's
# event loop for 26 s (a quadratic fingerprint), and one of 6 MB would have held it for days.
LIVELINESS_BOUND = 2.0
SMALL_CALL_BOUND = 5.0


def test_a_huge_prompt_does_not_hold_the_proxy(proxy: ProxyProcess, backend: ScriptedBackend) -> None:
    # One caller's megabytes (a base64url blob: one word, no spaces) are fingerprinted,
    # checked and sent on without holding the event loop: the proxy's liveliness probe and
    # another caller's small taught call answer while the huge call is in flight.
    huge = ("QUJDRA-_zz09" * (HUGE_PROMPT_CHARS // 12 + 1))[:HUGE_PROMPT_CHARS]
    headers = {"Authorization": f"Bearer {proxy.master_key}"}
    done: dict[str, Any] = {}

    def slow_when_huge(text: str) -> Any:  # the huge call stays in flight while probes come
        return lambda request: Reply(text, delay=1.0) if text_chars(request.messages) > 1_000_000 else text

    backend.script.update(guided=slow_when_huge(GUIDED), baseline=slow_when_huge(BASELINE))

    def send() -> None:
        done["response"] = httpx.post(f"{proxy.url}/chat/completions", headers=headers, timeout=120, json={
            "model": MODEL, "messages": [{"role": "user", "content": huge}]})

    sender = threading.Thread(target=send)
    sender.start()
    probes: list[float] = []
    small: list[float] = []
    during = 0
    while sender.is_alive():
        during += 1
        t0 = time.perf_counter()
        assert httpx.get(f"{proxy.base}/health/liveliness", timeout=60).status_code == 200
        probes.append(time.perf_counter() - t0)
        if len(probes) % 4 == 1:
            t0 = time.perf_counter()
            reply = httpx.post(f"{proxy.url}/chat/completions", headers=headers, timeout=60,
                               json={"model": MODEL, "messages": QUESTION})
            small.append(time.perf_counter() - t0)
            assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == GUIDED
    sender.join(120)
    response = done["response"]
    assert response.status_code == 200, response.text[:500]
    assert response.json()["atlas"]["decision"] in ("guided", "baseline")
    print(f"huge prompt {HUGE_PROMPT_CHARS} chars: liveliness max {max(probes) * 1000:.0f} ms over "
          f"{len(probes)} probes, small call max {max(small) * 1000:.0f} ms")
    assert during >= 3  # the probes overlapped the huge call
    assert max(probes) < LIVELINESS_BOUND, probes
    assert max(small) < SMALL_CALL_BOUND, small
