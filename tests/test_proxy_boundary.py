"""The real LiteLLM proxy at the atlas boundary: malformed requests and bad configuration.

* Malformed requests (bodies that are not JSON objects, unknown content part types, a
  ``stream`` that is not a boolean, ...) get a 400 naming the field: never a 500, never a
  ledger row, a metric or a call to the student or the teacher. The plain LiteLLM 1.108
  proxy answers the first two with 500.
* A proxy started by plain ``litellm --config`` with an invalid ``atlas:`` section stays
  alive but fails ``/health/readiness``, and its taught models answer 503 with the reason.
  (``atlas-middleware proxy`` refuses to start at all: tests/test_proxy_cli.py.)

The fuzz test over request shapes is in tests/test_reliability_proxy.py.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("litellm.proxy.proxy_server")
pytest.importorskip("prometheus_client")

from conftest import ADDITION_QUESTION  # noqa: E402

from atlas_middleware.testing import OpenAITestServer, ScriptedBackend  # noqa: E402
from atlas_middleware.testing.proxy import ProxyProcess  # noqa: E402

pytestmark = pytest.mark.slow

MODEL = "gpt-4o-mini"
PLAIN = "plain"  # a model_list entry LiteLLM serves itself
BOGUS_PART = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "input_text", "text": "b"}]}]


@pytest.fixture(scope="module")
def ledger_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proxy-boundary") / "ledger.db"


@pytest.fixture(scope="module")
def proxy(upstream: OpenAITestServer, ledger_path: Path) -> Iterator[ProxyProcess]:
    atlas = {"teacher": "openai/gpt-4o", "teacher_api_base": upstream.url, "policy": "strict",
             "ledger": f"sqlite:///{ledger_path}", "spool": "none", "teacher_retries": 1}
    with ProxyProcess(student_url=upstream.url, atlas=atlas, passthrough={PLAIN: "openai/gpt-4o-mini"}) as p:
        yield p


def _post(proxy: ProxyProcess, content: bytes) -> httpx.Response:
    headers = {"Authorization": f"Bearer {proxy.master_key}", "Content-Type": "application/json"}
    return httpx.post(f"{proxy.url}/chat/completions", content=content, headers=headers, timeout=60)


def _rows(path: Path) -> int:
    if not path.exists():
        return 0
    with sqlite3.connect(path, timeout=30) as db:
        return int(db.execute("SELECT count(*) FROM atlas_calls").fetchone()[0])


def _calls_total(proxy: ProxyProcess) -> float:
    text = httpx.get(f"{proxy.base}/atlas/metrics", timeout=30).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("atlas_calls_total{"))


def _body(model: str, messages: Any = ADDITION_QUESTION, **params: Any) -> bytes:
    return json.dumps({"model": model, "messages": messages, **params}).encode()


MALFORMED = [
    (b"[]", "got an array"),
    (b"null", "got null"),
    (b"42", "got a number"),
    (b'"What is 2+2?"', "got a string"),
    (b'[{"model": "gpt-4o-mini", "messages": []}]', "got an array"),
    (_body(MODEL, BOGUS_PART), "messages[0].content[1].type"),
    (_body(MODEL, [{"role": "user", "content": [{"text": "no type"}]}]), "messages[0].content[0].type"),
    (_body(PLAIN, BOGUS_PART), "messages[0].content[1].type"),  # LiteLLM's own model: its 500 before
    (_body(MODEL, stream="yes"), "stream must be a boolean"),
    (_body(MODEL, [{"role": "robot", "content": "hi"}]), "messages[0].role"),
    (_body(MODEL, []), "messages must be a non-empty list"),
    (_body(MODEL, [{"role": "user", "content": 7}]), "messages[0].content"),
]


def test_malformed_requests_are_400_naming_the_field(proxy: ProxyProcess, backend: ScriptedBackend,
                                                     ledger_path: Path) -> None:
    rows, calls = _rows(ledger_path), _calls_total(proxy)
    for body, field in MALFORMED:
        response = _post(proxy, body)
        assert response.status_code == 400, (body, response.status_code, response.text)
        error = response.json()["error"]
        assert field in error["message"], (body, error)
        assert error["type"] == "invalid_request_error" and "Traceback" not in response.text
        assert not any(k.lower().startswith("x-atlas-") for k in response.headers)
    assert _post(proxy, b"[]").json()["error"]["param"] == "body"
    time.sleep(0.5)  # a ledger write or a metric would have landed by now
    assert backend.calls == []  # neither the student nor the teacher was called
    assert _rows(ledger_path) == rows and _calls_total(proxy) == calls
    # and the same proxy still teaches well-formed calls
    ok = _post(proxy, _body(MODEL, [{"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}]))
    assert ok.status_code == 200 and ok.headers["x-atlas-decision"] in ("guided", "baseline")
    assert httpx.get(f"{proxy.base}/health/readiness", timeout=30).status_code == 200


# -- a bad atlas: section under plain ``litellm --config`` --------------------------------------


@pytest.fixture(scope="module")
def unready_proxy(upstream: OpenAITestServer) -> Iterator[ProxyProcess]:
    atlas = {"teacher": "openai/gpt-4o", "teacher_api_base": upstream.url, "ledger": "none",
             "teacher_retries": 1, "bogus_key": 3}
    with ProxyProcess(student_url=upstream.url, atlas=atlas, passthrough={PLAIN: "openai/gpt-4o-mini"},
                      launcher="litellm") as p:
        yield p


def test_litellm_started_proxy_is_not_ready_with_a_bad_atlas_section(unready_proxy: ProxyProcess,
                                                                     backend: ScriptedBackend) -> None:
    base = unready_proxy.base
    assert httpx.get(f"{base}/health/liveliness", timeout=30).status_code == 200  # alive, not ready
    for _ in range(2):  # the answer stays until the configuration is fixed
        ready = httpx.get(f"{base}/health/readiness", timeout=30)
        assert ready.status_code == 503, ready.text
        assert ready.json()["status"] == "unhealthy" and "ConfigError" in ready.json()["atlas"]
    taught = _post(unready_proxy, _body(MODEL))
    assert taught.status_code == 503, taught.text
    assert "bogus_key: no such setting" in taught.json()["error"]["message"]
    assert backend.calls == []
    # LiteLLM's own models keep working
    plain = _post(unready_proxy, _body(PLAIN))
    assert plain.status_code == 200 and backend.roles() == ["baseline"]
    # the operator sees why, in the log, from the start
    log = unready_proxy.log()
    assert "the atlas provider cannot be built" in log and "bogus_key" in log
