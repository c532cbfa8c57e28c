"""The public surface is deliberate, and importing the core pulls in no heavy extra."""

from __future__ import annotations

import inspect
import subprocess
import sys

import atlas_middleware


def test_exported_members() -> None:
    public = {
        name for name, value in vars(atlas_middleware).items()
        if not name.startswith("_") and not inspect.ismodule(value) and name != "annotations"
    }
    assert set(atlas_middleware.__all__) == public | {"__version__"}
    assert atlas_middleware.Atlas.__module__ == "atlas_middleware.client"


# Imported on the first call or construction that needs them, never with the package.
HEAVY = (
    "litellm", "httpx", "aiohttp", "torch", "transformers", "langchain_core", "langchain", "tenacity",
    "sqlalchemy", "math_verify", "vllm", "sympy", "matplotlib", "openai", "opentelemetry",
)


def _fresh_import(code: str) -> str:
    """Run ``code`` in a fresh interpreter (this one has imported everything) and return its output."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_core_import_pulls_no_heavy_dependency() -> None:
    code = (
        "import sys, atlas_middleware\n"
        "from atlas_middleware import Atlas\n"
        "import atlas_middleware.cli.app\n"
        f"print(sorted(set({HEAVY!r}) & {{m.split('.')[0] for m in sys.modules}}))"
    )
    assert _fresh_import(code) == "[]"


def test_core_import_defers_what_first_use_needs() -> None:
    """Import time stays small (docs/benchmarks.md, "Import time"): no pydantic schema is built
    (``defer_build``; a model instantiated at import time would build one and load pydantic's
    plugin machinery, ``importlib.metadata`` included), and asyncio, which only the async path
    uses and which is loaded by the time that path runs, is not imported."""
    code = (
        "import sys\n"
        "from pydantic import BaseModel\n"
        "from atlas_middleware import Atlas\n"
        "def subclasses(cls):\n"
        "    for sub in cls.__subclasses__():\n"
        "        yield sub\n"
        "        yield from subclasses(sub)\n"
        "built = sorted(c.__qualname__ for c in subclasses(BaseModel)\n"
        "               if c.__module__.startswith('atlas_middleware') and c.__pydantic_complete__)\n"
        "print(built, sorted({'asyncio', 'pydantic.plugin._loader'} & set(sys.modules)))"
    )
    assert _fresh_import(code) == "[] []"


def test_error_tree() -> None:
    from atlas_middleware import errors

    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.MissingExtraError, ImportError)
    assert issubclass(errors.TeacherTimeout, TimeoutError) and issubclass(errors.TeacherTimeout, errors.TeacherError)
    for name in ("ConfigError", "InvalidRequestError", "TeacherError", "JudgeError", "LedgerError", "QueueFullError"):
        assert issubclass(getattr(errors, name), errors.AtlasError)
    assert errors.MissingExtraError("X", "local", "torch").args[0].endswith("pip install 'atlas-middleware[local]'")
