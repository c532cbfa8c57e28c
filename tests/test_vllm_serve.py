"""``atlas-middleware teacher serve``: the vLLM command, the health wait, no vLLM here."""

from __future__ import annotations

import http.server
import shlex
import threading
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from atlas_middleware.cli import teacher  # noqa: F401  (registers the command)
from atlas_middleware.cli.app import app
from atlas_middleware.cli.teacher import ServeSettings, wait_healthy


def test_dry_run_prints_the_recommended_vllm_command_and_api_base() -> None:
    result = CliRunner().invoke(app, [
        "teacher", "serve", "--model", "Arc-Intelligence/ATLAS-8B-Instruct", "--port", "8011",
        "--tensor-parallel-size", "2", "--dry-run", "--", "--max-num-seqs", "128",
    ])
    assert result.exit_code == 0, result.output
    command, hint = result.output.strip().splitlines()
    argv = shlex.split(command)
    assert argv[:3] == ["vllm", "serve", "Arc-Intelligence/ATLAS-8B-Instruct"]
    assert "--enable-prefix-caching" in argv
    assert argv[argv.index("--max-model-len") + 1] == "8192"
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[-2:] == ["--max-num-seqs", "128"]
    assert "http://127.0.0.1:8011/v1" in hint and "hosted_vllm/Arc-Intelligence/ATLAS-8B-Instruct" in hint


def test_without_vllm_serve_fails_with_the_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shutil.which", lambda name: None)
    result = CliRunner().invoke(app, ["teacher", "serve"])
    assert result.exit_code == 1
    assert "atlas-middleware[vllm]" in result.output


@pytest.fixture
def health_server() -> Iterator[str]:
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_wait_healthy_sees_the_health_endpoint_and_gives_up_on_silence(health_server: str) -> None:
    assert wait_healthy(f"{health_server}/health", None, timeout=5, poll=0.05)
    assert not wait_healthy(f"{health_server}/nothing", None, timeout=0.3, poll=0.05)


def test_api_base_uses_loopback_for_wildcard_hosts() -> None:
    assert ServeSettings(port=9000).api_base() == "http://127.0.0.1:9000/v1"
    assert ServeSettings(host="gpu-1", port=9000).api_base() == "http://gpu-1:9000/v1"


def test_integration_recipes_use_the_same_flags_as_teacher_serve() -> None:
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1] / "integrations" / "vllm"
    docs = list(yaml.safe_load_all((root / "k8s.yaml").read_text()))
    stateful = next(d for d in docs if d["kind"] == "StatefulSet")
    args = stateful["spec"]["template"]["spec"]["containers"][0]["args"]
    flags = {a.split("=")[0] for a in args}
    recommended = {a for a in ServeSettings().command() if a.startswith("--")}
    assert recommended - {"--model"} <= flags | {"--served-model-name"}
    router = yaml.safe_load((root / "litellm-router.yaml").read_text())
    group = router["model_list"]
    assert {m["model_name"] for m in group} == {"atlas-teacher"}
    replicas = stateful["spec"]["replicas"]
    assert sorted(m["litellm_params"]["api_base"] for m in group) == [
        f"http://atlas-teacher-{i}.atlas-teacher:8000/v1" for i in range(replicas)
    ]
    assert all(m["litellm_params"]["model"].startswith("hosted_vllm/") for m in group)
    script = (root / "serve.sh").read_text()
    assert all(flag in script for flag in recommended)
