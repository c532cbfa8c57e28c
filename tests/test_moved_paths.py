"""The import paths of modules the package's layout moved keep working for one release
(``atlas_middleware/_moved.py``): the module itself, a warning naming the new path, and no
file left at the old path."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import atlas_middleware
from atlas_middleware._moved import MOVED, new_name

PKG = Path(atlas_middleware.__file__).parent


def test_every_old_path_is_gone_and_every_new_one_is_there() -> None:
    for old, new in MOVED.items():
        old_path, new_path = PKG.joinpath(*old.split(".")), PKG.joinpath(*new.split("."))
        assert not old_path.with_suffix(".py").exists() and not (old_path / "__init__.py").exists(), old
        assert new_path.with_suffix(".py").exists() or (new_path / "__init__.py").exists(), new


@pytest.mark.parametrize(("old", "new", "first"), [
    ("atlas_middleware.drivers", "atlas_middleware.runtime.drivers", None),
    # A moved package's old name warns first, as its submodule's import passes through it.
    ("atlas_middleware.eval.runner", "atlas_middleware.offline.eval.runner", "atlas_middleware.eval"),
    ("atlas_middleware.backends.openai_http", "atlas_middleware.backends.http.transport", None),
    ("atlas_middleware.learning.export", "atlas_middleware.offline.export", None),
])
def test_an_old_path_is_the_new_module_with_a_warning_naming_it(old: str, new: str, first: str | None) -> None:
    # A fresh interpreter: this process has imported every module under its new name already.
    code = (f"import warnings, sys\nwarnings.simplefilter('error')\n"
            f"try:\n    import {old}\nexcept DeprecationWarning as w:\n    print('warned', w)\n"
            f"warnings.simplefilter('ignore')\nimport {old} as a, {new} as b\n"
            f"print(a is b, a.__spec__.name, sys.modules['{old}'] is b)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    warned = first or old
    assert f"warned {warned} moved to {new_name(warned)}; import it from there" in out
    assert f"True {new} True" in out


def test_only_moved_names_are_answered() -> None:
    assert new_name("atlas_middleware.evaluation") is None  # a prefix of a word is not a package
    assert new_name("atlas_middleware.teaching.judges") is None
    assert new_name("os.path") is None
    assert new_name("atlas_middleware.reporting.html") == "atlas_middleware.offline.reporting.html"


def test_the_new_modules_are_imported_once() -> None:
    with pytest.warns(DeprecationWarning):
        old = importlib.import_module("atlas_middleware.sessions")
    assert old is importlib.import_module("atlas_middleware.state.sessions")
