"""The import paths modules had before the package was laid out by job (December 2026),
kept working for one release.

``import atlas_middleware.drivers`` still gives the module now at
``atlas_middleware.runtime.drivers``, with a ``DeprecationWarning`` that names the new path:
``MovedPaths``, a finder the package's ``__init__`` puts first on ``sys.meta_path``, answers
for the old names below (a package's old name covers its submodules) and for nothing else.
It must come first: an old package name would otherwise lend its new ``__path__`` to the
path finder, which would load a second copy of each submodule under the old name. No file
sits at an old path, so the tree shows the layout as it is. The module is the new one itself, not a copy: its
``__spec__`` and everything in it stay the new module's.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

MOVED: dict[str, str] = {
    "answers": "teaching.answers",
    "backends.local_batcher": "backends.local.batcher",
    "backends.local_generation": "backends.local.generation",
    "backends.openai_http": "backends.http.transport",
    "backends.param_contract": "backends.http.param_contract",
    "backends.vllm_inprocess": "backends.local.vllm_inprocess",
    "breaker": "state.breaker",
    "chunks": "runtime.chunks",
    "drivers": "runtime.drivers",
    "embedded": "backends.local.embedded",
    "eval": "offline.eval",
    "judges": "teaching.judges",
    "learning.export": "offline.export",
    "reporting": "offline.reporting",
    "sessions": "state.sessions",
    "streaming": "runtime.streaming",
}
"""Old module path -> new, both under ``atlas_middleware.``."""

_PKG = "atlas_middleware."


def new_name(name: str) -> str | None:
    """The module now at ``name``'s old path, or None when ``name`` did not move."""
    if not name.startswith(_PKG):
        return None
    rest = name[len(_PKG):]
    for old, new in MOVED.items():
        if rest == old or rest.startswith(old + "."):
            return _PKG + new + rest[len(old):]
    return None


class _Alias(importlib.abc.Loader):
    """Hands the import system the module at the new path under the old name."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.module: ModuleType | None = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        self.module = importlib.import_module(self.target)
        self._spec = self.module.__spec__
        return self.module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamped the old name's spec on the module: it is the new one's.
        module.__spec__ = self._spec


class MovedPaths(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        new = new_name(fullname)
        if new is None:
            return None
        # stacklevel 2 skips the import system's own frames: the warning names the importer.
        warnings.warn(f"{fullname} moved to {new}; import it from there", DeprecationWarning, stacklevel=2)
        return importlib.util.spec_from_loader(fullname, _Alias(new))


def install() -> None:
    if not any(isinstance(f, MovedPaths) for f in sys.meta_path):
        sys.meta_path.insert(0, MovedPaths())
