"""Dollars through the real LiteLLM proxy, with the openai client: a self-hosted student priced
by its deployment (``litellm_params``), a self-hosted teacher priced by ``teacher_params``,
neither in LiteLLM's cost map.

LiteLLM's spend for the call (``x-litellm-response-cost``, and the cost its callbacks log,
which key and team budgets add up) is the report's total cost, the teacher's and the judge's
calls included; the ``x-atlas-*`` headers lead with the call's net dollars. The upstream is
strict (it refuses any body field OpenAI's API does not know): no price reaches the wire.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

openai = pytest.importorskip("openai")
pytest.importorskip("litellm.proxy.proxy_server")

from atlas_middleware.testing import OpenAITestServer, ScriptedBackend, teacher_reply  # noqa: E402
from atlas_middleware.testing.proxy import ProxyProcess  # noqa: E402

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is 2+2?"}]
STUDENT = {"input_cost_per_token": 3e-6, "output_cost_per_token": 1.5e-5}
TEACHER = {"input_cost_per_token": 2e-7, "output_cost_per_token": 6e-7}
SCRIPT = {"probe": "It is an addition.", "teacher": teacher_reply("Add the two numbers."),
          "guided": "The answer is 4", "baseline": "I think the answer is 5", "judge_pair": "<verdict>A</verdict>"}

SPEND_MODULE = '''"""Each call's spend as LiteLLM logs it (what key and team budgets add up), one JSON line each."""

import json

from litellm.integrations.custom_logger import CustomLogger


class SpendLog(CustomLogger):
    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        report = kwargs.get("atlas_report")
        line = {"logged": kwargs.get("response_cost"), "call_id": getattr(report, "call_id", None)}
        with open("spend.jsonl", "a") as out:
            out.write(json.dumps(line) + "\\n")


spend_log = SpendLog()
'''


class SpendProxy(ProxyProcess):
    def _write_config(self) -> None:
        super()._write_config()
        assert self.folder is not None
        config = yaml.safe_load(self.config_path.read_text())
        config["litellm_settings"]["callbacks"] = [*config["litellm_settings"]["callbacks"], "spend.spend_log"]
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        (self.folder / "spend.py").write_text(SPEND_MODULE)

    def logged(self, call_id: str, timeout: float = 15.0) -> float:
        assert self.folder is not None
        path, deadline = self.folder / "spend.jsonl", time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = path.read_text().splitlines() if path.exists() else []
            found = [json.loads(x) for x in lines if json.loads(x)["call_id"] == call_id]
            if found:
                assert len(found) == 1, found
                return float(found[0]["logged"])
            time.sleep(0.1)
        raise AssertionError(f"LiteLLM logged no spend for {call_id}")


@pytest.fixture(scope="module")
def upstream() -> Iterator[OpenAITestServer]:
    with OpenAITestServer(ScriptedBackend(SCRIPT), models=["house-student", "self-hosted-teacher"],
                          strict=True) as server:
        yield server


@pytest.fixture(scope="module")
def proxy(upstream: OpenAITestServer) -> Iterator[SpendProxy]:
    atlas = {"teacher": "hosted_vllm/self-hosted-teacher", "teacher_api_base": upstream.url,
             "teacher_params": TEACHER, "policy": "strict", "ledger": "none", "teacher_retries": 1}
    with SpendProxy(student_url=upstream.url, atlas=atlas, models={"house": "hosted_vllm/house-student"},
                    deployments={"house": STUDENT}) as p:
        yield p


@pytest.fixture
def client(proxy: ProxyProcess) -> Iterator[Any]:
    with openai.OpenAI(base_url=proxy.url, api_key=proxy.master_key, max_retries=0, timeout=60) as client:
        yield client  # closed after the test, and its pooled connections with it


def _priced(usage: dict[str, Any], prices: dict[str, float]) -> float:
    return (usage["prompt_tokens"] * prices["input_cost_per_token"]
            + usage["completion_tokens"] * prices["output_cost_per_token"])


def test_the_spend_litellm_records_is_every_roles_price(client: Any, proxy: SpendProxy,
                                                        upstream: OpenAITestServer) -> None:
    upstream.clear()
    raw = client.chat.completions.with_raw_response.create(model="house", messages=QUESTION)
    report = raw.parse().model_extra["atlas"]
    usage = report["usage"]
    for role, prices in (("probe", STUDENT), ("guided", STUDENT), ("baseline", STUDENT),
                         ("teacher", TEACHER), ("judge", TEACHER)):
        assert usage[role]["calls"], role
        assert usage[role]["cost_usd"] == pytest.approx(_priced(usage[role], prices)), role
    assert report["cost_usd"] == pytest.approx(sum(usage[r]["cost_usd"] for r in usage))
    # LiteLLM's spend is the report's total, teacher and judge included: the header, and the
    # cost its callbacks log (what key and team budgets add up).
    assert float(raw.headers["x-litellm-response-cost"]) == pytest.approx(report["cost_usd"])
    assert proxy.logged(report["call_id"]) == pytest.approx(report["cost_usd"])
    # The atlas headers lead with the call's net dollars, measured on its own baseline.
    atlas_headers = [h for h in raw.headers if h.lower().startswith("x-atlas-")]
    assert atlas_headers[0].lower() == "x-atlas-cost-saved-usd"
    assert float(raw.headers["x-atlas-cost-saved-usd"]) == pytest.approx(report["cost_saved_usd"])
    assert report["cost_saved_usd"] == pytest.approx(usage["baseline"]["cost_usd"] - report["cost_usd"])
    assert float(raw.headers["x-atlas-cost-usd"]) == pytest.approx(report["cost_usd"])
    assert raw.headers["x-atlas-counterfactual"] == "measured"
    # No price reached a model: the strict upstream would have refused it (and answered 400).
    assert upstream.requests and not any(set(STUDENT) & set(r["body"]) for r in upstream.requests)


def test_an_unmeasured_call_reports_its_estimate(client: Any, proxy: SpendProxy) -> None:
    client.chat.completions.create(model="house", messages=QUESTION)  # strict: a measured baseline
    raw = client.chat.completions.with_raw_response.create(model="house", messages=QUESTION,
                                                           extra_headers={"x-atlas-policy": "off"})
    report = raw.parse().model_extra["atlas"]
    assert report["usage"]["baseline"]["calls"] == 0
    assert (raw.headers["x-atlas-counterfactual"], report["counterfactual_basis"]) == ("estimated", "estimated")
    assert int(raw.headers["x-atlas-counterfactual-samples"]) == report["counterfactual_samples"] >= 1
    assert float(raw.headers["x-atlas-cost-saved-usd"]) == pytest.approx(report["cost_saved_usd"])
    assert float(raw.headers["x-litellm-response-cost"]) == pytest.approx(report["cost_usd"])
