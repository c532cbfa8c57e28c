"""Through the real LiteLLM proxy, no error path shows a student's key (issue 23, item 7).

Every ``model_list`` entry has a key of its own, shaped like no known key (LiteLLM masks
``sk-...`` by itself), and the students are called on LiteLLM's own path (``lean_http:
false``). The student's server checks requests as OpenAI does and quotes the caller's key in
every error, as some providers and gateways do. Each kind of bad request is sent with the
official client; the response bodies, the proxy's log (its stdout and stderr), the ledger
rows, the reports, /atlas/metrics and a training export are searched for every key and for
its first 12 characters. Before the fix every upstream error (an unknown parameter, a bad
``functions``, a wrong type, an unknown student, a 401) came back with the key in the body,
and the proxy's log quoted it three times more (eight at DEBUG): the message, and the
traceback of the chained provider errors.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("litellm.proxy.proxy_server")
pytest.importorskip("prometheus_client")

from conftest import ADDITION_QUESTION, addition_script  # noqa: E402
from test_redaction import _export, assert_clean, canary  # noqa: E402

from atlas_middleware._redact import MASK  # noqa: E402
from atlas_middleware.testing import OpenAITestServer, ScriptedBackend  # noqa: E402
from atlas_middleware.testing.proxy import ProxyProcess  # noqa: E402

pytestmark = pytest.mark.slow

TEACHER_KEY = "teacher-LEAKCANARY-proxy-2b9d4e6f"
LOCKED_KEY = "the-right-key-for-locked-4d2c"
STUDENT = "openai/gpt-4o-mini"
# model_list name -> (the student it teaches, the request's extra body, its messages)
CASES: dict[str, tuple[str, dict[str, Any], Any]] = {
    "unknown": (STUDENT, {"foo_unknown_param": 1}, ADDITION_QUESTION),
    "unknown-stream": (STUDENT, {"foo_unknown_param": 1, "stream": True}, ADDITION_QUESTION),
    "functions": (STUDENT, {"functions": [{"description": "a function without a name"}]}, ADDITION_QUESTION),
    "type": (STUDENT, {"temperature": "hot"}, ADDITION_QUESTION),
    "ghost": ("openai/no-such-student", {}, ADDITION_QUESTION),  # a student the upstream does not serve
    "shape": (STUDENT, {}, [{"role": "robot", "content": "hi"}]),
    "locked": (STUDENT, {}, ADDITION_QUESTION),  # its key is wrong: a 401 that quotes it
}
KEYS = {name: canary(f"proxy-{name}") for name in CASES}


@pytest.fixture(scope="module")
def ledger_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("proxy-redaction") / "ledger.db"


@pytest.fixture(scope="module")
def proxy(ledger_path: Path) -> Iterator[ProxyProcess]:
    models = ["gpt-4o-mini", "gpt-4o"]
    with OpenAITestServer(ScriptedBackend(addition_script()), models=models, strict=True, echo_key=True) as up, \
            OpenAITestServer(ScriptedBackend(addition_script()), models=models, strict=True, echo_key=True,
                             api_key=LOCKED_KEY) as locked:
        atlas = {"teacher": "openai/gpt-4o", "teacher_api_base": up.url, "policy": "strict", "lean_http": False,
                 "ledger": f"sqlite:///{ledger_path}", "store_texts": True, "spool": "none", "teacher_retries": 1}
        deployments: dict[str, dict[str, Any]] = {name: {"api_key": key} for name, key in KEYS.items()}
        deployments["locked"]["api_base"] = locked.url
        with ProxyProcess(student_url=up.url, atlas=atlas, models={n: c[0] for n, c in CASES.items()},
                          deployments=deployments,
                          # LiteLLM at its most verbose: every line it logs about a call is searched
                          env={"ATLAS_TEACHER_API_KEY": TEACHER_KEY, "LITELLM_LOG": "DEBUG"}) as p:
            yield p


def _send(client: Any, model: str, extra: dict[str, Any], messages: Any) -> tuple[int, str]:
    extra = dict(extra)
    stream = extra.pop("stream", False)
    try:
        if stream:
            with client.chat.completions.with_streaming_response.create(
                    model=model, messages=messages, stream=True, extra_body=extra) as raw:
                return raw.status_code, raw.read().decode(errors="replace")
        raw = client.chat.completions.with_raw_response.create(model=model, messages=messages, extra_body=extra)
        return raw.status_code, raw.text
    except openai.APIStatusError as exc:
        return exc.status_code, exc.response.text


def test_no_error_path_shows_the_students_key(proxy: ProxyProcess, ledger_path: Path, tmp_path: Path) -> None:
    client = openai.OpenAI(base_url=proxy.url, api_key=proxy.master_key, max_retries=0, timeout=60)
    bodies: dict[str, str] = {}
    for name, (_, extra, messages) in CASES.items():
        status, bodies[name] = _send(client, name, extra, messages)
        assert status >= 400 or "error" in bodies[name], (name, status, bodies[name])
    status, bodies["no-such-model"] = _send(client, "no-such-model", {}, ADDITION_QUESTION)
    assert status == 400
    # the haystack holds what is searched for: the upstream's errors came back, masked
    for name in ("unknown", "functions", "type", "ghost", "locked"):
        assert "bad request for key" in bodies[name] and MASK in bodies[name], (name, bodies[name])
    assert "messages[0].role" in bodies["shape"]

    time.sleep(1.0)  # the ledger writes and the log lines of the failed calls land
    metrics = httpx.get(f"{proxy.base}/atlas/metrics", timeout=30).text
    db = ledger_path.read_bytes() + b"".join(p.read_bytes() for p in ledger_path.parent.glob("ledger.db-*"))
    haystacks = {
        **{f"body:{name}": body for name, body in bodies.items()},
        "proxy log": proxy.log(),
        "ledger": db.decode("latin-1"),
        "metrics": metrics,
        "export": _export(f"sqlite:///{ledger_path}", tmp_path / "export"),
    }
    assert "bad request for key" in haystacks["ledger"]  # the reports in the ledger kept the errors
    assert_clean(haystacks, TEACHER_KEY, *KEYS.values())
