"""In the real LiteLLM proxy with its ``otel`` callback, the proxy's spans and a taught call's
spans (``tracing.py``) form one trace: the call's span is a child of the proxy's request span,
which itself continues the client's ``traceparent``. Spans are read from LiteLLM's console
exporter (the proxy's output), the only exporter its ``otel`` callback offers without a
collector."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import yaml
from conftest import ADDITION_GUIDED, ADDITION_QUESTION

from atlas_middleware.testing import OpenAITestServer
from atlas_middleware.testing.proxy import GENERAL_SETTINGS, LITELLM_SETTINGS, ProxyProcess

pytestmark = pytest.mark.slow

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture(scope="module")
def proxy(upstream: OpenAITestServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    config = {
        "model_list": [{"model_name": "gpt-4o-mini", "litellm_params": {
            "model": "atlas/openai/gpt-4o-mini", "api_base": upstream.url, "api_key": "sk-student-test"}}],
        "litellm_settings": {**LITELLM_SETTINGS, "callbacks": [*LITELLM_SETTINGS["callbacks"], "otel"]},
        "general_settings": GENERAL_SETTINGS,
        "atlas": {"teacher": "openai/gpt-4o", "teacher_api_base": upstream.url, "policy": "off",
                  "ledger": "none", "teacher_retries": 1},
    }
    path = tmp_path_factory.mktemp("otel-proxy") / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = {"OTEL_EXPORTER": "console", "OTEL_BSP_SCHEDULE_DELAY": "100", "ATLAS_TEACHER_API_KEY": "sk-teacher-t"}
    with ProxyProcess(student_url=upstream.url, atlas={}, config_file=path, env=env) as p:
        yield p


def _spans(log: str) -> list[dict[str, Any]]:
    """The console exporter's spans: indented JSON objects, each starting on a line '{'."""
    decoder, spans, at = json.JSONDecoder(), [], 0
    while (at := log.find("\n{\n", at)) != -1:
        try:
            value, end = decoder.raw_decode(log, at + 1)
        except json.JSONDecodeError:
            at += 1
            continue
        if isinstance(value, dict) and "context" in value:
            spans.append(value)
        at = end
    return spans


def _wait_for(proxy: ProxyProcess, count: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 30
    while True:
        spans = [s for s in _spans(proxy.log()) if s["context"]["trace_id"] == "0x" + TRACE_ID]
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.2)


def test_the_proxy_request_and_the_taught_call_are_one_trace(proxy: ProxyProcess) -> None:
    client = openai.OpenAI(base_url=proxy.url, api_key=proxy.master_key, max_retries=0, timeout=60)
    traceparent = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
    out = client.chat.completions.create(model="gpt-4o-mini", messages=ADDITION_QUESTION,  # type: ignore[arg-type]
                                         extra_headers={"traceparent": traceparent})
    assert out.choices[0].message.content == ADDITION_GUIDED
    spans = _wait_for(proxy, 5)  # the proxy's request span, the call's, probe, teacher, guided
    by_id = {s["context"]["span_id"]: s for s in spans}
    calls = [s for s in spans if "atlas.decision" in s["attributes"]]
    assert len(calls) == 1, [s["name"] for s in spans]
    call = calls[0]
    request = by_id[call["parent_id"]]  # the proxy's own span, continuing the client's traceparent
    assert request["parent_id"] == "0x" + CLIENT_SPAN
    assert call["attributes"]["atlas.policy"] == "off"
    roles = {s["attributes"]["atlas.role"] for s in spans if s.get("parent_id") == call["context"]["span_id"]}
    assert roles == {"probe", "teacher", "guided"}
