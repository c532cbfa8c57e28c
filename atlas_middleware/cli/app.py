"""The Typer application; each command group lives in its own module (see ``commands.py``).

Every command shares ``main``: a failure the commands do not turn into a message themselves
(a provider's error on the student's call: no key, no network) is printed as one line and
exits 1; ``--debug``, anywhere on the command line, shows the whole traceback instead.
"""

from __future__ import annotations

import sys

import typer

app = typer.Typer(
    name="atlas-middleware",
    help="An ATLAS-style teacher between your application and its LLM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

DEBUG_FLAG = "--debug"
_MESSAGE_CHARS = 400


def main(argv: list[str] | None = None) -> None:
    from . import commands  # noqa: F401  (registers every command on ``app``)

    args = list(sys.argv[1:] if argv is None else argv)
    # Taken off before Typer parses, so it works after any command: ``run ... --debug``.
    head = args[:args.index("--")] if "--" in args else args
    debug = DEBUG_FLAG in head
    if debug:
        args.remove(DEBUG_FLAG)
    try:
        app(args=args, prog_name="atlas-middleware")
    except Exception as exc:
        if debug:
            raise
        typer.echo(f"error: {one_line(exc)}", err=True)
        typer.echo(f"(run again with {DEBUG_FLAG} for the traceback)", err=True)
        raise SystemExit(1) from None


def one_line(exc: BaseException) -> str:
    """The exception as one line: its type and the first line of its message, shortened."""
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    if len(text) > _MESSAGE_CHARS:
        text = text[:_MESSAGE_CHARS - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@app.callback()
def _root(
    debug: bool = typer.Option(False, DEBUG_FLAG, help="Show the whole traceback when a command fails."),
) -> None:
    """An ATLAS-style teacher between your application and its LLM."""
