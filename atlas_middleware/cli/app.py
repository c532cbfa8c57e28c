"""The Typer application; each command group lives in its own module (see ``commands.py``)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="atlas-middleware",
    help="An ATLAS-style teacher between your application and its LLM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def main() -> None:
    from . import commands  # noqa: F401  (registers every command on ``app``)

    app()


@app.callback()
def _root() -> None:
    """An ATLAS-style teacher between your application and its LLM."""
