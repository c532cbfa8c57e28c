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


def test_core_import_pulls_no_heavy_dependency() -> None:
    code = (
        "import sys, atlas_middleware, atlas_middleware.cli.app;"
        "heavy = {'litellm', 'torch', 'transformers', 'langchain_core', 'vllm', 'sympy', 'matplotlib', 'sqlalchemy'};"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_error_tree() -> None:
    from atlas_middleware import errors

    assert issubclass(errors.ConfigError, ValueError) and issubclass(errors.MissingExtraError, ImportError)
    assert issubclass(errors.TeacherTimeout, TimeoutError) and issubclass(errors.TeacherTimeout, errors.TeacherError)
    for name in ("ConfigError", "InvalidRequestError", "TeacherError", "JudgeError", "LedgerError", "QueueFullError"):
        assert issubclass(getattr(errors, name), errors.AtlasError)
    assert errors.MissingExtraError("X", "local", "torch").args[0].endswith("pip install 'atlas-middleware[local]'")
