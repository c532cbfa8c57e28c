"""``atlas-middleware proxy``: the LiteLLM proxy with the teaching loop in front of the student."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import ConfigError
from ..proxy.launcher import BUNDLED_CONFIG, ProxySettings, exec_proxy
from .app import app


@app.command()
def proxy(
    config: Annotated[Path, typer.Option("--config", help="LiteLLM proxy config.yaml (with an atlas: section)")]
    = BUNDLED_CONFIG,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 4000,
    num_workers: Annotated[int, typer.Option("--num-workers", help="uvicorn workers (metrics are per worker)")] = 1,
) -> None:
    """Start the LiteLLM proxy with the atlas provider and hooks (needs LITELLM_MASTER_KEY)."""
    try:
        exec_proxy(ProxySettings(config=config, host=host, port=port, num_workers=num_workers))
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
