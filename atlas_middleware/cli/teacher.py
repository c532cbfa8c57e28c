"""``atlas-middleware teacher serve``: launch a vLLM server for the teacher, the production path.

The application reaches it through LiteLLM as ``hosted_vllm/<served name>`` with
``teacher_api_base=http://host:port/v1``. Recommended flags, and why:

* ``--enable-prefix-caching``: every teacher call starts with the same long system prompt,
  so its KV cache is computed once and shared;
* ``--max-model-len 8192``: a teacher sees the task, the student's short plan and writes a
  few hundred tokens; a smaller window leaves more memory for concurrent sequences than the
  model's full 32k/40k context;
* ``--gpu-memory-utilization 0.90`` and ``--tensor-parallel-size`` as given.

``--dry-run`` prints the command without running it (for scripts and Kubernetes specs; the
same flags are in ``integrations/vllm/``).
"""

from __future__ import annotations

import shlex
import shutil
import signal
import subprocess
import time
from typing import Annotated

import httpx
import typer
from pydantic import BaseModel, Field

from .app import app

teacher_app = typer.Typer(help="Serve a teacher model (vLLM).", no_args_is_help=True)
app.add_typer(teacher_app, name="teacher")

DEFAULT_MODEL = "Arc-Intelligence/ATLAS-8B-Thinking"


class ServeSettings(BaseModel):
    model: str = DEFAULT_MODEL
    host: str = "0.0.0.0"
    port: int = Field(default=8000, ge=1, le=65535)
    tensor_parallel_size: int = Field(default=1, ge=1)
    max_model_len: int = Field(default=8192, ge=256)
    gpu_memory_utilization: float = Field(default=0.90, gt=0, le=1)
    served_model_name: str | None = None
    extra_args: list[str] = Field(default_factory=list)

    @property
    def name(self) -> str:
        return self.served_model_name or self.model

    def api_base(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}/v1"

    def command(self, vllm: str = "vllm") -> list[str]:
        return [
            vllm, "serve", self.model,
            "--host", self.host, "--port", str(self.port),
            "--served-model-name", self.name,
            "--tensor-parallel-size", str(self.tensor_parallel_size),
            "--max-model-len", str(self.max_model_len),
            "--gpu-memory-utilization", f"{self.gpu_memory_utilization:g}",
            "--enable-prefix-caching",
            *self.extra_args,
        ]


def wait_healthy(url: str, process: subprocess.Popen[bytes] | None, timeout: float, poll: float = 2.0) -> bool:
    """True once ``url`` answers 200; False when ``process`` exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            if httpx.get(url, timeout=poll).status_code == 200:
                return True
        except httpx.HTTPError:
            pass  # not listening yet: vLLM loads weights and captures CUDA graphs first
        time.sleep(poll)
    return False


def usage_hint(settings: ServeSettings) -> str:
    return (
        f"teacher ready at {settings.api_base()}\n"
        f"  Python: Atlas(teacher='hosted_vllm/{settings.name}', teacher_api_base='{settings.api_base()}')\n"
        f"  env:    ATLAS_TEACHER=hosted_vllm/{settings.name} ATLAS_TEACHER_API_BASE={settings.api_base()}"
    )


@teacher_app.command("serve")
def serve(
    model: str = typer.Option(DEFAULT_MODEL, help="Model id or folder for vLLM (ATLAS-8B-Thinking / -Instruct, ...)."),
    host: str = typer.Option("0.0.0.0", help="Address to listen on."),
    port: int = typer.Option(8000, help="Port to listen on."),
    tensor_parallel_size: int = typer.Option(1, help="GPUs to shard the model over."),
    max_model_len: int = typer.Option(8192, help="Context window; smaller leaves room for more concurrent calls."),
    gpu_memory_utilization: float = typer.Option(0.90, help="Share of GPU memory vLLM may take."),
    served_model_name: str | None = typer.Option(None, help="Name clients use (default: the model)."),
    wait_timeout: float = typer.Option(900.0, help="Seconds to wait for /health before giving up."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the vllm command and exit."),
    extra: Annotated[list[str] | None, typer.Argument(help="Further vllm serve flags, after --.")] = None,
) -> None:
    """Launch `vllm serve` with recommended flags, wait until healthy, print the api_base."""
    settings = ServeSettings(
        model=model, host=host, port=port, tensor_parallel_size=tensor_parallel_size,
        max_model_len=max_model_len, gpu_memory_utilization=gpu_memory_utilization,
        served_model_name=served_model_name, extra_args=list(extra or []),
    )
    if dry_run:
        typer.echo(shlex.join(settings.command()))
        typer.echo(f"api_base: {settings.api_base()}  model: hosted_vllm/{settings.name}")
        return
    vllm = shutil.which("vllm")
    if vllm is None:
        typer.echo(
            "vllm is not installed here: pip install 'atlas-middleware[vllm]' on a machine with "
            "a CUDA GPU (or use --dry-run to print the command for one).", err=True,
        )
        raise typer.Exit(1)
    process = subprocess.Popen(settings.command(vllm))
    health = settings.api_base().removesuffix("/v1") + "/health"
    typer.echo(f"starting: {shlex.join(settings.command(vllm))}\nwaiting for {health} ...")
    if not wait_healthy(health, process, wait_timeout):
        process.send_signal(signal.SIGTERM)
        typer.echo(f"vLLM did not become healthy within {wait_timeout:g} s (exit code {process.poll()})", err=True)
        raise typer.Exit(1)
    typer.echo(usage_hint(settings))
    try:
        raise typer.Exit(process.wait())
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        raise typer.Exit(process.wait()) from None
