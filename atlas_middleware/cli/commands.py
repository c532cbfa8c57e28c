"""Importing this module registers every command on the Typer app. One line per module."""

from . import demo, run  # noqa: F401
from .eval import eval_command  # noqa: F401
from .proxy import proxy  # noqa: F401
from .report import report  # noqa: F401
from . import teacher  # noqa: F401
