"""Importing this module registers every command on the Typer app. One line per module."""

from . import (  # noqa: F401
    demo,
    run,
    teacher,  # noqa: F401
)
from .eval import eval_command  # noqa: F401
from .export import export_command  # noqa: F401
from .proxy import proxy  # noqa: F401
from .report import report  # noqa: F401
