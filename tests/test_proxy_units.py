"""Headers, body and metrics built from a report, without a proxy process."""

from __future__ import annotations

import pytest

from atlas_middleware.report import CallReport, Reason
from atlas_middleware.usage import Usage

pytest.importorskip("prometheus_client")

from atlas_middleware.proxy.headers import report_body, report_headers  # noqa: E402
from atlas_middleware.proxy.metrics import AtlasMetrics  # noqa: E402
from atlas_middleware.report import GateInfo  # noqa: E402


def _report(**changes: object) -> CallReport:
    report = CallReport(student_model="openai/s", teacher_model="openai/t", policy="strict",
                        decision="guided", reason=Reason.AGREEMENT, guidance="secret plan",
                        tokens_saved=-3, net_tokens=120, latency_ms={"teacher": 250.0, "total": 400.0},
                        counterfactual_basis="measured")
    report.usage.add("teacher", Usage(prompt_tokens=100, completion_tokens=20, calls=1))
    report.usage.add("guided", Usage(prompt_tokens=10, completion_tokens=7, calls=1))
    return report.model_copy(update=changes)


def test_headers_and_body() -> None:
    report = _report()
    headers = report_headers(report)
    assert headers["x-atlas-decision"] == "guided" and headers["x-atlas-reason"] == "agreement"
    assert headers["x-atlas-tokens-saved"] == "-3" and headers["x-atlas-net-tokens"] == "120"
    assert report_headers(_report(tokens_saved=None))["x-atlas-tokens-saved"] == ""
    assert headers["x-atlas-gate"] == headers["x-atlas-reused-from"] == ""
    gated = report_headers(_report(task_family="t:faq", reused_from="c1", gate=GateInfo(
        state="closed", p_gain=0.01, p_effect=0.2, evidence=12.0)))
    assert (gated["x-atlas-task-family"], gated["x-atlas-gate"], gated["x-atlas-reused-from"]) == ("t:faq", "closed", "c1")
    body = report_body(report.model_copy(update={"probe": "my plan: add 20 and 22"}))
    assert "guidance" not in body and "probe" not in body and body["call_id"] == report.call_id
    assert body["usage"]["teacher"]["prompt_tokens"] == 100


def test_headers_lead_with_net_dollars() -> None:
    # The call's net dollars against the student alone come first, with what they are made of;
    # an estimate says so, with its sample; an unknown figure is an empty value.
    estimated = _report(cost_usd=0.00042, student_alone_cost_usd=0.0003, cost_saved_usd=-0.00012,
                        counterfactual_basis="estimated", counterfactual_samples=7)
    headers = report_headers(estimated)
    assert list(headers)[:5] == ["x-atlas-cost-saved-usd", "x-atlas-cost-usd", "x-atlas-student-alone-cost-usd",
                                 "x-atlas-counterfactual", "x-atlas-counterfactual-samples"]
    assert float(headers["x-atlas-cost-saved-usd"]) == pytest.approx(-0.00012)
    assert float(headers["x-atlas-cost-usd"]) == pytest.approx(0.00042)
    assert float(headers["x-atlas-student-alone-cost-usd"]) == pytest.approx(0.0003)
    assert (headers["x-atlas-counterfactual"], headers["x-atlas-counterfactual-samples"]) == ("estimated", "7")
    measured = report_headers(_report(cost_usd=1.5e-05, student_alone_cost_usd=2.5e-05, cost_saved_usd=1e-05))
    assert (measured["x-atlas-cost-saved-usd"], measured["x-atlas-counterfactual"]) == ("1e-05", "measured")
    assert measured["x-atlas-counterfactual-samples"] == ""
    unknown = report_headers(_report(counterfactual_basis=None, tokens_saved=None, net_tokens=None))
    assert unknown["x-atlas-cost-saved-usd"] == unknown["x-atlas-counterfactual"] == unknown["x-atlas-cost-usd"] == ""
    body = report_body(estimated)
    assert (body["cost_saved_usd"], body["counterfactual_basis"], body["counterfactual_samples"]) == (
        -0.00012, "estimated", 7)


def test_metrics_sum_net_dollars_by_basis_and_tokens_only_when_measured() -> None:
    metrics = AtlasMetrics(replica="proxy-a")
    metrics.observe(_report(cost_saved_usd=-0.002))
    metrics.observe(_report(cost_saved_usd=0.0005, counterfactual_basis="estimated", tokens_saved=40, net_tokens=-9))
    assert _sample(metrics, "atlas_cost_saved_usd", basis="measured") == pytest.approx(-0.002)
    assert _sample(metrics, "atlas_cost_saved_usd", basis="estimated") == pytest.approx(0.0005)
    # The token gauges are "over calls that measured it": the estimate stays out of them.
    assert (_sample(metrics, "atlas_tokens_saved"), _sample(metrics, "atlas_net_tokens")) == (-3, 120)


def _sample(metrics: AtlasMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, {"replica": metrics.replica, **labels})
    return 0.0 if value is None else value


def test_metrics_observe_reports() -> None:
    metrics = AtlasMetrics(replica="proxy-a")
    metrics.observe(_report())
    metrics.observe(_report(reason=Reason.TEACHER_TIMEOUT, decision="student_only", tokens_saved=None,
                            net_tokens=None))
    assert _sample(metrics, "atlas_calls_total", decision="guided", reason="agreement") == 1
    assert _sample(metrics, "atlas_tokens_total", role="teacher", kind="prompt") == 200
    assert _sample(metrics, "atlas_tokens_total", role="probe", kind="prompt") == 0
    assert _sample(metrics, "atlas_tokens_saved") == -3
    assert _sample(metrics, "atlas_net_tokens") == 120
    assert _sample(metrics, "atlas_teacher_latency_seconds_count") == 2
    assert _sample(metrics, "atlas_teacher_errors_total", reason="teacher_timeout") == 1
    metrics.observe(_report(guidance_reused=True, reused_from="c1"))
    metrics.observe(_report(guidance_reused=True))
    metrics.observe(_report(guidance_reused=True))
    assert _sample(metrics, "atlas_guidance_reused_total", source="family") == 1
    assert _sample(metrics, "atlas_guidance_reused_total", source="session") == 2
    assert b'atlas_calls_total{decision="guided",reason="agreement",replica="proxy-a"} 4.0' in metrics.render()


def test_every_series_names_its_replica_so_a_fleet_sums(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes behind one address (two workers, a restart) are two series, not one
    that jumps between their counts; without a name the process gets host and pid."""
    import os
    import socket

    monkeypatch.delenv("ATLAS_REPLICA", raising=False)
    assert AtlasMetrics().replica == f"{socket.gethostname()}-{os.getpid()}"
    monkeypatch.setenv("ATLAS_REPLICA", "atlas-proxy-7d9f")
    metrics = AtlasMetrics()
    metrics.observe(_report())
    lines = [line for line in metrics.render().decode().splitlines() if line.startswith("atlas_")]
    assert lines and all('replica="atlas-proxy-7d9f"' in line for line in lines), lines
    assert any(line.startswith("atlas_process_start_time_seconds{") for line in lines)
