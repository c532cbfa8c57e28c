"""Reorganise atlas_middleware into the layout of issue 26 part 3, on the tree it is given.

    python scripts/reorganise.py [ROOT]        # ROOT defaults to the current directory

Driven by the tables below, not by line numbers, so it works on whatever the tree is when it
runs. What it does, in order:

1. checks the tree (every module to move is there, nothing is in the way, not run before);
2. rewrites every import of a moved module: absolute and relative ``from`` imports are parsed
   with ``ast`` (``from .. import breaker`` becomes ``from . import breaker`` in ``state/``),
   and every dotted or path reference in any text file (monkeypatch targets such as
   ``"atlas_middleware.drivers.time"``, docs, YAML, pyproject, mutant names) is mapped on its
   longest moved prefix;
3. moves the files (``git mv`` in a git tree, so history follows; plain moves otherwise);
4. splits ``provider.py`` into a package by job (``PROVIDER_SPLIT``: every top-level name
   says which module it joins; a name the table does not know stops the script);
5. writes an import shim at each moved public module's old path (a ``DeprecationWarning``
   naming the new path, then the new module itself in ``sys.modules``, for one release);
6. points ``[tool.mutmut]`` at the new paths, redraws the tree in ``docs/architecture.md`` (each
   entry, with its description, moves where its module went; the glossary in
   ``scripts/reorg/glossary.md`` and a table of the old paths follow it), and sorts the imports
   it touched (``ruff --select I``).

It refuses to run twice. It does not rewrite bare file names in prose (``see judges.py``).
"""

from __future__ import annotations

import ast
import io
import re
import shutil
import subprocess
import sys
import textwrap
import tokenize
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

PKG = "atlas_middleware"

# old module -> new module (relative to the package); a package moves with everything in it.
MOVES: list[tuple[str, str]] = [
    # teaching/: all the pure decision code, the one folder mutation testing names
    ("answers", "teaching.answers"),
    ("judges", "teaching.judges"),
    # runtime/: the drivers and the stream classes that run what the flow decides
    ("drivers", "runtime.drivers"),
    ("streaming", "runtime.streaming"),
    ("chunks", "runtime.chunks"),
    # state/: the circuit breaker and the session cache it alone uses
    ("breaker", "state.breaker"),
    ("sessions", "state.sessions"),
    # backends/http/: the lean HTTP path
    ("backends.openai_http", "backends.http.transport"),
    ("backends.param_contract", "backends.http.param_contract"),
    # backends/local/: models in this process, the embedded one with them
    ("backends.local", "backends.local.backend"),
    ("backends.local_batcher", "backends.local.batcher"),
    ("backends.local_generation", "backends.local.generation"),
    ("backends.vllm_inprocess", "backends.local.vllm_inprocess"),
    ("embedded", "backends.local.embedded"),
    # offline/: tooling that reads the ledger or runs benchmarks, never on a call's path
    ("learning.export", "offline.export"),
    ("eval", "offline.eval"),
    ("reporting", "offline.reporting"),
    # internal helpers: private
    ("imports", "_imports"),
    ("redact", "_redact"),
    ("tenants", "_tenants"),
]
# Moved only when present. (backends/compat.py stays where it is: it holds the private
# internals of LiteLLM, aiohttp, LangChain and torch for every backend and adapter, not the HTTP
# path's alone; tests/test_compat.py names it by that path.)
OPTIONAL: set[str] = set()

NEW_PACKAGES = {
    "runtime": "Running what the teaching flow decides: the drivers, and the streams a caller iterates.",
    "offline": "Offline tooling (export, eval, reporting): reads the ledger or runs benchmarks, "
               "never on a call's path.",
    "backends.http": "The lean HTTP path: OpenAI-compatible servers without LiteLLM on the call.",
    "backends.local": "Models in this process: transformers (``local/...``), vLLM (``vllm/...``), "
                      "the embedded SmolLM2.",
}

# How the tree in docs/architecture.md shows a new folder, and where it goes (after which entry).
TREE_FOLDERS: dict[str, tuple[str, str | None]] = {
    "runtime": ("runs what the flow decides: drivers and every stream a caller iterates", "teaching/"),
    "offline": ("tooling beside the online path: reads the ledger or runs benchmarks", "testing/"),
    "backends.http": ("the lean path: OpenAI-compatible servers without LiteLLM on the call", None),
    "backends.local": ("models in this process (local/..., vllm/...) and the embedded one", None),
}
SPLIT_TREE = {
    "options": "a call's options (metadata.atlas, x-atlas-* headers) and tenant; the error boundary",
    "pricing": "the student's prices a deployment sets; the known cost of a report",
    "streams": "PendingStream (what LiteLLM wraps) and GenericWriter: our chunks as LiteLLM's generic ones",
    "reports": "ReportStore for LiteLLM's callbacks; find_report/report_of for a response or stream",
    "adapter": "AtlasLLM: LiteLLM's CustomLLM around one Atlas (built on first use)",
    "registration": "register(): makes atlas/... models callable through litellm.completion",
}
# Private names in the split, renamed so that one word means one thing (docs/architecture.md, Glossary).
SPLIT_RENAMES = {("method", "_generic"): "_generic_chunks", ("function", "_generic"): "_generic_chunk"}

# provider.py -> provider/<module>.py: every top-level name of provider.py, by job. __init__
# re-exports __all__. The order is the import order (each imports only from those before it).
PROVIDER_SPLIT: dict[str, tuple[str, list[str]]] = {
    "options": ("What a call brings in (options, its tenant) and the error boundary of what leaves it.",
                ["PROVIDER", "NO_LOG", "HEADER_OPTIONS", "PROXY_KEY_FIELD", "PROXY_TEAM_FIELD",
                 "RequestOptions", "gathered", "call_tenant", "_boundary"]),
    "pricing": ("The prices a deployment sets for its student, and the known cost of a report.",
                ["_student_prices", "known_cost"]),
    "streams": ("The async stream LiteLLM wraps, and Atlas's chunks as LiteLLM's generic chunks.",
                ["PendingStream", "_nothing", "GenericWriter", "_tool_use", "_generic"]),
    "reports": ("Reports kept for LiteLLM's callbacks, and the report of a response or stream.",
                ["REPORT_KEY", "ReportStore", "report_of", "find_report"]),
    "adapter": ("AtlasLLM: LiteLLM's CustomLLM interface around an Atlas.",
                ["log", "_quiet", "AtlasLLM"]),
    "registration": ("Registering the ``atlas`` provider with LiteLLM.",
                     ["_registered", "register", "registered"]),
}
SPLIT_MODULE = "provider"
HISTORY_FILE = "adapter"  # provider.py is git-moved here, so history follows the largest piece

GLOSSARY = "scripts/reorg/glossary.md"  # inserted after the tree in docs/architecture.md
TEXT_SUFFIXES = {".py", ".md", ".toml", ".yaml", ".yml", ".txt", ".cfg", ".ini", ".sh", ".json", ".rst"}
TEXT_NAMES = {"Makefile", "Dockerfile", "Dockerfile.dockerignore"}
SKIP_DIRS = {".git", ".hypothesis", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
             "mutants", "artifacts", "atlas_middleware.egg-info"}
SELF = {"scripts/reorganise.py", GLOSSARY}


class Refused(Exception):
    pass


@dataclass
class Plan:
    root: Path
    moves: list[tuple[str, str]]  # absolute dotted names
    modules: dict[str, str] = field(default_factory=dict)  # every old module file -> new module
    packages: set[str] = field(default_factory=set)  # new dotted names that are packages
    split_defs: dict[str, str] = field(default_factory=dict)  # provider name -> new module
    split_exports: set[str] = field(default_factory=set)
    conflicts: dict[str, set[str]] = field(default_factory=dict)  # old module that is now a package -> exports
    old_dirs: set[str] = field(default_factory=set)  # old packages that moved whole

    def new_name(self, old: str) -> str | None:
        """The new name of a module (or a package) at ``old``, or None if it did not move."""
        if old in self.modules:
            return self.modules[old]
        best = max((o for o in self.old_dirs if old.startswith(o + ".")), key=len, default=None)
        if best is None:
            return None
        return dict(self.moves)[best] + old[len(best):]

    def is_old(self, dotted: str) -> bool:
        return self.new_name(dotted) is not None

    def is_new(self, dotted: str) -> bool:
        return dotted in self.modules.values() or dotted in self.packages or dotted in self.split_defs.values()


def dotted(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_path(root: Path, name: str) -> Path | None:
    base = root.joinpath(*name.split("."))
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    if (base / "__init__.py").is_file():
        return base
    return None


def make_plan(root: Path) -> Plan:
    if not (root / PKG / "__init__.py").is_file():
        raise Refused(f"{root} has no {PKG}/ package")
    if (root / PKG / "runtime").exists() or (root / PKG / SPLIT_MODULE / "__init__.py").exists():
        raise Refused("this tree is reorganised already (atlas_middleware/runtime or provider/ exists)")
    moves = []
    for old, new in MOVES:
        src = module_path(root, f"{PKG}.{old}")
        if src is None:
            if old in OPTIONAL:
                continue
            raise Refused(f"{PKG}.{old} is missing: update MOVES in scripts/reorganise.py")
        moves.append((f"{PKG}.{old}", f"{PKG}.{new}"))
    plan = Plan(root, moves)
    for old, new in moves:
        src = module_path(root, old)
        assert src is not None
        if src.is_dir():
            plan.packages.add(new)
            plan.old_dirs.add(old)
            for f in sorted(src.rglob("*.py")):
                rel = dotted(f.relative_to(src))
                suffix = f".{rel}" if rel else ""
                plan.modules[old + suffix] = new + suffix
        else:
            plan.modules[old] = new
    for name in NEW_PACKAGES:
        plan.packages.add(f"{PKG}.{name}")
    plan.packages.add(f"{PKG}.{SPLIT_MODULE}")
    for new in list(plan.modules.values()):
        if module_path(root, new) is not None and new not in plan.modules:
            raise Refused(f"{new} exists already: it is in the way of a move")
    split_provider_table(plan)
    local_old = f"{PKG}.backends.local"
    plan.conflicts[local_old] = public_names(root / PKG / "backends" / "local.py")
    return plan


def split_provider_table(plan: Plan) -> None:
    path = plan.root / PKG / f"{SPLIT_MODULE}.py"
    tree = ast.parse(path.read_text("utf-8"))
    by_name = {n: mod for mod, (_, names) in PROVIDER_SPLIT.items() for n in names}
    unknown = [n for stmt in tree.body for n in defined(stmt) if n not in by_name and n != "__all__"]
    if unknown:
        raise Refused(f"{SPLIT_MODULE}.py defines names PROVIDER_SPLIT does not place: {unknown}; "
                      "add each to the module whose job it is")
    sp = read_split(path)  # every check the split makes, before anything changes
    for mod in PROVIDER_SPLIT:
        part_imports(sp, mod)
    split_init(sp)
    plan.split_defs = {n: f"{PKG}.{SPLIT_MODULE}.{m}" for n, m in by_name.items()}
    plan.split_exports = set(module_all(tree))
    plan.conflicts[f"{PKG}.{SPLIT_MODULE}"] = plan.split_exports
    plan.modules[f"{PKG}.{SPLIT_MODULE}"] = f"{PKG}.{SPLIT_MODULE}"  # the module's path is the package's


def defined(stmt: ast.stmt) -> list[str]:
    if isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [stmt.name]
    if isinstance(stmt, ast.Assign):
        names = [t for t in stmt.targets if isinstance(t, ast.Name)]
        names += [e for t in stmt.targets if isinstance(t, ast.Tuple) for e in t.elts if isinstance(e, ast.Name)]
        return [n.id for n in names]
    if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
        return [stmt.target.id]
    return []


def module_all(tree: ast.Module) -> list[str]:
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__"
                                                for t in stmt.targets):
            return [ast.literal_eval(e) for e in stmt.value.elts]  # type: ignore[attr-defined]
    return []


def public_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    explicit = module_all(tree)
    if explicit:
        return set(explicit)
    return {n for stmt in tree.body if not isinstance(stmt, ast.Assign) for n in defined(stmt)
            if not n.startswith("_")}


# --------------------------------------------------------------------------- references

DOTTED = re.compile(r"(?<![\w.])" + PKG + r"(?:\.[^\W\d]\w*)+")
PATHLIKE = re.compile(r"(?<![\w/.])" + PKG + r"((?:/[^\W\d]\w*)+)(\.py)?(/)?")


def map_dotted(plan: Plan, text: str, in_python: bool) -> str:
    """A dotted reference mapped on its longest moved prefix; new names are left alone."""
    parts = text.split(".")
    k_old = next((k for k in range(len(parts), 1, -1) if plan.is_old(".".join(parts[:k]))), 0)
    if k_old == 0:
        return text
    k_new = next((k for k in range(len(parts), 1, -1) if plan.is_new(".".join(parts[:k]))), 0)
    if k_new > k_old:
        return text  # already the new name (the import pass wrote it)
    head, rest = ".".join(parts[:k_old]), parts[k_old:]
    if head in plan.conflicts and rest:
        owner = owner_of(plan, head, rest[0])
        if owner is None or (not in_python and rest[0] in plan.conflicts[head]):
            return text  # the package's own public name, or one of its submodules
        return ".".join([owner, *rest])
    new = plan.new_name(head)
    assert new is not None
    if head in plan.conflicts:
        return text  # the old module path is the new package
    return ".".join([new, *rest])


def owner_of(plan: Plan, old_module: str, name: str) -> str | None:
    """Which new module defines ``name`` of a module that became a package."""
    if old_module == f"{PKG}.{SPLIT_MODULE}":
        return plan.split_defs.get(name)
    if name in {"backend", "batcher", "generation", "vllm_inprocess", "embedded"}:
        return None
    return plan.new_name(old_module)


def map_path(plan: Plan, m: re.Match[str]) -> str:
    name = PKG + m.group(1).replace("/", ".")
    if name in plan.modules:
        new = plan.modules[name]  # a file path names the file, even where a package took its name
    else:
        new = map_dotted(plan, name, in_python=True)
    if new == name and name != f"{PKG}.{SPLIT_MODULE}":
        return m.group(0)
    is_pkg = new in plan.packages
    out = new.replace(".", "/")
    if is_pkg:
        return out + "/" if (m.group(2) or m.group(3)) else out
    return out + (m.group(2) or "") + (m.group(3) or "")


def rewrite_text(plan: Plan, text: str, in_python: bool) -> str:
    text = DOTTED.sub(lambda m: map_dotted(plan, m.group(0), in_python), text)
    return PATHLIKE.sub(lambda m: map_path(plan, m), text)


# --------------------------------------------------------------------------- imports (ast)

def resolve(module_name: str | None, level: int, package: str | None) -> str | None:
    if level == 0:
        return module_name
    if package is None:
        return None
    base = package.split(".")
    if level - 1 > len(base) - 1:
        return None
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module_name] if module_name else []))


def relative(from_package: str, target: str) -> tuple[int, str]:
    p, t = from_package.split("."), target.split(".")
    k = 0
    while k < min(len(p), len(t)) and p[k] == t[k]:
        k += 1
    return len(p) - k + 1, ".".join(t[k:])


def targets(plan: Plan, base: str, alias: ast.alias) -> tuple[str, str, str | None]:
    """(new base module, imported name, as-name) for one name of a ``from base import ...``."""
    full = f"{base}.{alias.name}"
    if full in plan.modules and full not in plan.conflicts:
        new = plan.modules[full]
        parent, leaf = new.rsplit(".", 1)
        return parent, leaf, alias.asname or (alias.name if leaf != alias.name else None)
    if base in plan.conflicts and alias.name not in plan.conflicts[base]:
        owner = owner_of(plan, base, alias.name)
        if owner is not None:
            return owner, alias.name, alias.asname
    if base in plan.conflicts:
        return base, alias.name, alias.asname
    return plan.new_name(base) or base, alias.name, alias.asname


def render(level: int, module: str, names: list[tuple[str, str | None]], multiline: bool, indent: str) -> str:
    src = "." * level + module
    items = [n if a is None else f"{n} as {a}" for n, a in names]
    if multiline and len(items) > 1:
        body = "".join(f"{indent}    {i},\n" for i in items)
        return f"from {src} import (\n{body}{indent})"
    return f"from {src} import {', '.join(items)}"


def rewrite_imports(plan: Plan, text: str, old_module: str | None, new_module: str | None,
                    is_package: bool) -> str:
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    edits: list[tuple[int, int, int, int, str]] = []
    old_pkg = old_module if is_package else (old_module.rsplit(".", 1)[0] if old_module else None)
    new_pkg = new_module if is_package else (new_module.rsplit(".", 1)[0] if new_module else None)
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        base = resolve(node.module, node.level, old_pkg)
        if base is None or not (base == PKG or base.startswith(PKG + ".")):
            continue
        groups: dict[str, list[tuple[str, str | None]]] = {}
        for alias in node.names:
            nb, name, asname = targets(plan, base, alias)
            groups.setdefault(nb, []).append((name, asname))
        moved_file = node.level and old_pkg != new_pkg
        unchanged = list(groups) == [base] and all(
            (n, a) == (al.name, al.asname) for (n, a), al in zip(groups[base], node.names, strict=True))
        if unchanged and not moved_file:
            continue
        seg_lines = lines[node.lineno - 1: node.end_lineno]
        indent = re.match(r"\s*", lines[node.lineno - 1]).group(0)  # type: ignore[union-attr]
        comments = re.findall(r"#[^\n]*", "".join(seg_lines)[node.col_offset:])
        out = []
        for nb, names in groups.items():
            if node.level and new_pkg is not None:
                level, mod = relative(new_pkg, nb)
            else:
                level, mod = 0, nb
            out.append(render(level, mod, names, node.end_lineno != node.lineno, indent))
        new_src = f"\n{indent}".join(out)
        if comments and node.end_lineno != node.lineno:
            first, sep, tail = new_src.partition("\n")
            new_src = f"{first}  {comments[0]}{sep}{tail}"
        edits.append((node.lineno, node.col_offset, node.end_lineno or node.lineno,
                      node.end_col_offset or 0, new_src))
    for lineno, col, end_lineno, end_col, new_src in sorted(edits, reverse=True):
        # ast's columns count UTF-8 bytes
        before = lines[lineno - 1].encode()[:col].decode()
        after = lines[end_lineno - 1].encode()[end_col:].decode()
        lines[lineno - 1: end_lineno] = [before + new_src + after]
    return "".join(lines)


# --------------------------------------------------------------------------- the tree

def text_files(root: Path) -> Iterable[Path]:
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS or part.startswith(".venv") for part in rel.parts) or not path.is_file():
            continue
        if rel.as_posix() in SELF or rel.parts[:2] == ("scripts", "reorg"):
            continue
        if path.suffix in TEXT_SUFFIXES or path.name in TEXT_NAMES:
            yield path


def rewrite_all(plan: Plan) -> list[Path]:
    """Rewrites every reference in place (before any file moves); returns the changed .py files."""
    changed = []
    for path in text_files(plan.root):
        try:
            text = path.read_text("utf-8")
        except UnicodeDecodeError:
            continue
        new = text
        rel = path.relative_to(plan.root)
        if path.suffix == ".py":
            old_module = dotted(rel) if rel.parts[0] == PKG else None
            new_module = (plan.new_name(old_module) or old_module) if old_module else None
            # (provider.py is rewritten where it stands; the split moves its imports one level down)
            try:
                new = rewrite_imports(plan, new, old_module, new_module, path.name == "__init__.py")
            except SyntaxError:
                pass
        new = rewrite_text(plan, new, path.suffix == ".py")
        if path.name == "pyproject.toml":
            new = fix_mutmut(new)
        if new != text:
            path.write_text(new, "utf-8")
            if path.suffix == ".py":
                changed.append(path)
    return changed


def fix_mutmut(text: str) -> str:
    """Entries the teaching/ glob now covers are dropped from only_mutate."""
    def drop(m: re.Match[str]) -> str:
        block = m.group(0)
        if f'"{PKG}/teaching/*"' not in block:
            return block
        return re.sub(rf'\s*"{PKG}/teaching/[a-z_]+\.py",', "", block)
    return re.sub(r"only_mutate = \[[^\]]*\]", drop, text)


def git(root: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def move(root: Path, src: Path, dst: Path, use_git: bool) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if use_git:
        try:
            git(root, "mv", str(src.relative_to(root)), str(dst.relative_to(root)))
            return
        except subprocess.CalledProcessError:
            pass  # a file git does not track yet: moved as a file
    shutil.move(str(src), str(dst))


def path_of(root: Path, name: str, package: bool) -> Path:
    base = root.joinpath(*name.split("."))
    return base if package else base.with_suffix(".py")


def ensure_packages(plan: Plan) -> None:
    for name, doc in NEW_PACKAGES.items():
        init = plan.root / PKG / Path(*name.split(".")) / "__init__.py"
        init.parent.mkdir(parents=True, exist_ok=True)
        if not init.exists():
            init.write_text(f'"""{doc}"""\n', "utf-8")


def move_all(plan: Plan, use_git: bool) -> None:
    ensure_packages(plan)
    for old, new in plan.moves:
        src = module_path(plan.root, old)
        assert src is not None
        if src.is_dir():
            for f in sorted(p for p in src.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
                move(plan.root, f, path_of(plan.root, new, True) / f.relative_to(src), use_git)
            shutil.rmtree(src, ignore_errors=True)
        else:
            move(plan.root, src, path_of(plan.root, new, False), use_git)
    local = plan.root / PKG / "backends" / "local" / "__init__.py"
    names = sorted(plan.conflicts[f"{PKG}.backends.local"], key=lambda n: (n.lower(), n))
    local.write_text(
        f'"""{NEW_PACKAGES["backends.local"]}"""\n\n'
        f"from .backend import {', '.join(names)}\n\n"
        f"__all__ = {names!r}\n".replace("'", '"'), "utf-8")


# --------------------------------------------------------------------------- provider split

def used_names(stmts: list[ast.stmt]) -> tuple[set[str], set[str]]:
    """(names a statement needs when it runs, names it needs only in annotations)."""
    runtime: set[str] = set()
    annotated: set[str] = set()

    def visit(node: ast.AST, in_annotation: bool) -> None:
        if isinstance(node, ast.Name):
            (annotated if in_annotation else runtime).add(node.id)
        for fld, value in ast.iter_fields(node):
            is_ann = in_annotation or fld in ("annotation", "returns")
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, ast.AST):
                    visit(child, is_ann)
    for s in stmts:
        visit(s, False)
    return runtime, annotated - runtime


@dataclass
class Split:
    """provider.py read for the split: its parts, and which module each statement joins."""

    tree: ast.Module
    lines: list[str]
    imports: list[ast.stmt]
    header: str  # its imports, one level deeper
    body: list[ast.stmt]
    placed: dict[int, str]  # statement index in body -> its module
    owner: dict[str, str]  # top-level name -> its module


def read_split(src: Path) -> Split:
    text = src.read_text("utf-8")
    tree = ast.parse(text)
    lines = text.splitlines(keepends=True)
    imports: list[ast.stmt] = [s for s in tree.body if isinstance(s, ast.Import | ast.ImportFrom)
                               and getattr(s, "module", None) != "__future__"]
    header = "".join(seg(lines, s) + "\n" for s in imports)
    header = re.sub(r"^from \.", "from ..", header, flags=re.M)
    body = [s for s in tree.body[1:] if s not in imports and not (
        isinstance(s, ast.ImportFrom) and s.module == "__future__")]
    owner = {n: m for m, (_, names) in PROVIDER_SPLIT.items() for n in names}
    placed: dict[int, str] = {}
    for i, s in enumerate(body):
        names = defined(s)
        if names:
            placed[i] = owner.get(names[0], "")
        elif isinstance(s, ast.Expr) and i and (i - 1) in placed:
            placed[i] = placed[i - 1]  # an attribute docstring stays with its assignment
    return Split(tree, lines, imports, header, body, placed, owner)


def split_provider(plan: Plan, use_git: bool) -> list[Path]:
    root = plan.root
    src = root / PKG / f"{SPLIT_MODULE}.py"
    sp = read_split(src)
    pkg_dir = root / PKG / SPLIT_MODULE
    pkg_dir.mkdir(exist_ok=True)
    if use_git:
        move(root, src, pkg_dir / f"{HISTORY_FILE}.py", use_git)
    else:
        src.unlink()
    written = [write_part(sp, pkg_dir, mod, mdoc) for mod, (mdoc, _) in PROVIDER_SPLIT.items()]
    for path in written:
        path.write_text(rename_private(path.read_text("utf-8")), "utf-8")
    init = split_init(sp)
    (pkg_dir / "__init__.py").write_text("".join(init), "utf-8")
    written.append(pkg_dir / "__init__.py")
    return written


def part_imports(sp: Split, mod: str) -> tuple[list[int], dict[str, list[str]], dict[str, list[str]]]:
    """(its statements, the names it imports from siblings, those it needs only for typing)."""
    order = list(PROVIDER_SPLIT)
    indices = [i for i in range(len(sp.body)) if sp.placed.get(i) == mod]
    runtime, annotated = used_names([sp.body[i] for i in indices])
    sibling: dict[str, list[str]] = {}
    typing_only: dict[str, list[str]] = {}
    for name in sorted(runtime | annotated):
        other = sp.owner.get(name)
        if other is None or other == mod:
            continue
        if name in runtime and order.index(other) > order.index(mod):
            raise Refused(f"provider/{mod}.py needs {name} from provider/{other}.py, imported after it: "
                          "reorder PROVIDER_SPLIT")
        (sibling if name in runtime else typing_only).setdefault(other, []).append(name)
    return indices, sibling, typing_only


def write_part(sp: Split, pkg_dir: Path, mod: str, mdoc: str) -> Path:
    """provider/<mod>.py: its statements in their original order, the imports they need."""
    indices, sibling, typing_only = part_imports(sp, mod)
    lines, body, header = sp.lines, sp.body, sp.header
    parts = [f'"""{mdoc}"""\n\nfrom __future__ import annotations\n\n', header]
    parts += [f"from .{o} import {', '.join(ns)}\n" for o, ns in sibling.items()]
    if typing_only:
        parts.append("from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n")
        parts += [f"    from .{o} import {', '.join(ns)}\n" for o, ns in typing_only.items()]
    for k, i in enumerate(indices):
        if k and indices[k - 1] == i - 1:  # neighbours in provider.py: the same spacing
            parts.append(between(lines, body[i - 1], body[i]) + seg(lines, body[i]) + "\n")
        else:
            parts.append("\n\n" + seg(lines, body[i], with_comments=True) + "\n")
    out = pkg_dir / f"{mod}.py"
    out.write_text("".join(parts), "utf-8")
    return out


def split_init(sp: Split) -> list[str]:
    """provider/__init__.py: the module's docstring and its __all__, imported from where each now lives."""
    tree, body, imports, owner = sp.tree, sp.body, sp.imports, sp.owner
    doc = ast.get_docstring(tree, clean=False) or ""
    exports = module_all(tree)
    defined_here = {n for s in body for n in defined(s)}
    init = [f'"""{doc}"""\n\nfrom __future__ import annotations\n\n']
    by_mod: dict[str, list[str]] = {}
    for name in exports:
        if name in defined_here:
            by_mod.setdefault(owner[name], []).append(name)
            continue
        source = next((s for s in imports if isinstance(s, ast.ImportFrom)
                       and any((a.asname or a.name) == name for a in s.names)), None)
        if source is None:
            raise Refused(f"provider.py exports {name} but neither defines nor imports it")
        dots = "." * (source.level + 1 if source.level else 0)
        init.append(f"from {dots}{source.module or ''} import {name}\n")
    init += [f"from .{m} import {', '.join(ns)}\n" for m, ns in by_mod.items()]
    listed = textwrap.fill(", ".join(f'"{n}"' for n in exports), 100, initial_indent="    ",
                           subsequent_indent="    ")
    init.append(f"\n__all__ = [\n{listed},\n]\n")
    return init


def rename_private(text: str) -> str:
    """SPLIT_RENAMES applied: ``self._generic`` and ``def _generic(self`` are the method, any
    other ``_generic`` the module's function."""
    tokens = list(tokenize.generate_tokens(io.StringIO(text).readline))
    lines = text.splitlines(keepends=True)
    edits = []
    for i, tok in enumerate(tokens):
        if tok.type != tokenize.NAME or ("function", tok.string) not in SPLIT_RENAMES:
            continue
        after_dot = i and tokens[i - 1].string == "."
        is_method_def = tokens[i - 1].string == "def" and tokens[i + 2].string == "self"
        kind = "method" if after_dot or is_method_def else "function"
        edits.append((tok.start, tok.end, SPLIT_RENAMES[(kind, tok.string)]))
    for (row, col), (_, end), new in reversed(edits):
        line = lines[row - 1]
        lines[row - 1] = line[:col] + new + line[end:]
    return "".join(lines)


def between(lines: list[str], prev: ast.stmt, node: ast.stmt) -> str:
    """The original text between two neighbouring statements (blank lines, comments)."""
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return "".join(lines[prev.end_lineno or 0: start - 1])


def seg(lines: list[str], node: ast.stmt, with_comments: bool = False) -> str:
    start = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    if with_comments:
        while start > 1 and lines[start - 2].lstrip().startswith("#"):
            start -= 1
    return "".join(lines[start - 1: node.end_lineno]).rstrip("\n")


# --------------------------------------------------------------------------- docs/architecture.md

@dataclass
class Entry:
    """One line of the tree in docs/architecture.md (a module or a folder) and its description."""

    name: str
    depth: int
    col: int  # where the description starts
    lines: list[str]  # description lines, the first without padding, the rest as written
    children: list[Entry] = field(default_factory=list)
    orig_col: int = -1  # the column the rest of the lines were written for

    def __post_init__(self) -> None:
        if self.orig_col < 0:
            self.orig_col = self.col


TREE_LINE = re.compile(r"^( +)(\S+\.py|\S+/)( +)(.*)$|^( +)(\S+\.py|\S+/)$")


def parse_tree(block: list[str]) -> Entry:
    root = Entry(block[0].strip(), 0, 0, [])
    stack = [root]
    for line in block[1:]:
        m = TREE_LINE.match(line)
        indent = len(line) - len(line.lstrip(" "))
        if m and indent % 2 == 0 and indent // 2 <= stack[-1].depth + 1:
            name = m.group(2) or m.group(6)
            depth = indent // 2
            while stack[-1].depth >= depth:
                stack.pop()
            entry = Entry(name, depth, indent + len(name) + len(m.group(3) or " "), [m.group(4) or ""])
            stack[-1].children.append(entry)
            stack.append(entry)
        else:
            stack[-1].lines.append(line)
    return root


def render_tree(entry: Entry, out: list[str]) -> None:
    for child in entry.children:
        indent = "  " * child.depth
        col = max(child.col, len(indent) + len(child.name) + 2)
        out.append(f"{indent}{child.name}".ljust(col) + child.lines[0])
        for more in child.lines[1:]:
            stripped = more.lstrip(" ")
            out.append(" " * max(len(more) - len(stripped) + col - child.orig_col, 0) + stripped)
        render_tree(child, out)


def take(root: Entry, path: list[str]) -> tuple[Entry | None, int | None]:
    """Removes the entry at ``path`` (["backends/", "local.py"]) from the tree: (it, where it was)."""
    node: Entry | None = root
    for part in path[:-1]:
        node = next((c for c in node.children if c.name == part), None) if node else None
    if node is None:
        return None, None
    found = next((c for c in node.children if c.name == path[-1]), None)
    if found is None:
        return None, None
    index = node.children.index(found)
    node.children.remove(found)
    return found, index


def folder(root: Entry, path: list[str]) -> Entry:
    node = root
    for k, part in enumerate(path):
        child = next((c for c in node.children if c.name == part + "/"), None)
        if child is None:
            description, after = TREE_FOLDERS.get(".".join(path[: k + 1]), ("", None))
            col = node.children[0].col if node.children else 2 * (node.depth + 1) + 19
            child = Entry(part + "/", node.depth + 1, col, [description])
            where = next((i + 1 for i, c in enumerate(node.children) if c.name == after), len(node.children))
            node.children.insert(where, child)
        node = child
    return node


def redepth(entry: Entry, depth: int) -> None:
    shift = 2 * (depth - entry.depth)
    entry.depth, entry.col = depth, entry.col + shift
    for child in entry.children:
        redepth(child, child.depth + shift // 2)


def new_tree(plan: Plan, root: Entry) -> None:
    for old, new in plan.moves:
        old_parts = old.split(".")[1:]
        is_dir = new in plan.packages
        entry, index = take(root, [p + "/" for p in old_parts[:-1]] + [old_parts[-1] + ("/" if is_dir else ".py")])
        if entry is None:
            continue  # the page does not list it (then the docs test says so)
        new_parts = new.split(".")[1:]
        parent = folder(root, new_parts[:-1])
        entry.name = new_parts[-1] + ("/" if is_dir else ".py")
        redepth(entry, parent.depth + 1)
        if parent.children:  # line up with the new siblings
            entry.col = parent.children[0].col
        if new_parts[:-1] == old_parts[:-1] and index is not None:
            parent.children.insert(index, entry)  # renamed where it stands
        else:
            parent.children.append(entry)
    provider = next((c for c in root.children if c.name == f"{SPLIT_MODULE}.py"), None)
    if provider is not None:
        provider.name = f"{SPLIT_MODULE}/"
        provider.children = [Entry(f"{m}.py", 2, provider.col + 2, [SPLIT_TREE[m]]) for m in PROVIDER_SPLIT]


def shimmed(plan: Plan) -> list[tuple[str, str]]:
    """(old, new) of every moved public module: private targets, new modules and old paths a
    package took get no shim."""
    new_modules = {f"{PKG}.{o}" for o in OPTIONAL}
    return [(old, new) for old, new in sorted(plan.modules.items())
            if old not in plan.conflicts and old not in new_modules
            and not any(p.startswith("_") for p in new.split(".")[1:])]


def moved_note(plan: Plan) -> str:
    shims = [(o, n) for o, n in shimmed(plan) if not any(o.startswith(d + ".") for d in plan.old_dirs)]
    rows = "\n".join(f"| `{o.replace('.', '/')}{'/' if n in plan.packages else '.py'}` | "
                     f"`{n.replace('.', '/')}{'/' if n in plan.packages else '.py'}` |" for o, n in shims)
    return (
        "\nOld paths of moved public modules still import, for one release, with a\n"
        "`DeprecationWarning` that names the new path (a moved folder's modules keep their names):\n\n"
        "| old path | new path |\n|---|---|\n" + rows + "\n")


def redraw_architecture(plan: Plan) -> None:
    page = plan.root / "docs" / "architecture.md"
    text = page.read_text("utf-8")
    start = text.index("```\natlas_middleware/\n")
    end = text.index("```\n", start + 4)
    block = text[start + 4: end].rstrip("\n").split("\n")
    root = parse_tree(block)
    new_tree(plan, root)
    out = [block[0]]
    render_tree(root, out)
    extra = ""
    glossary = plan.root / GLOSSARY
    if glossary.is_file():
        extra = "\n" + glossary.read_text("utf-8").rstrip("\n") + "\n"
    page.write_text(text[: start + 4] + "\n".join(out) + "\n```\n" + extra + moved_note(plan)
                    + text[end + 4:], "utf-8")


# --------------------------------------------------------------------------- shims

SHIM = '''"""Moved to ``{new}``; this path works for one release."""

import importlib
import sys
import warnings

warnings.warn("{old} moved to {new}; import it from there",
              DeprecationWarning, stacklevel=2)
sys.modules[__name__] = importlib.import_module("{new}")
'''

PACKAGE_SHIM = '''"""Moved to ``{new}``; this path works for one release."""

import importlib
import warnings
from typing import Any

warnings.warn("{old} moved to {new}; import it from there",
              DeprecationWarning, stacklevel=2)
_new = importlib.import_module("{new}")


def __getattr__(name: str) -> Any:
    return getattr(_new, name)
'''


def write_shims(plan: Plan) -> list[Path]:
    """Old paths of moved public modules; private targets and old paths a package took get none."""
    written = []
    for old, new in shimmed(plan):
        is_pkg = new in plan.packages
        target = path_of(plan.root, old, is_pkg)
        target = target / "__init__.py" if is_pkg else target
        if target.exists():
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        template = PACKAGE_SHIM if is_pkg else SHIM
        target.write_text(template.format(old=old, new=new), "utf-8")
        written.append(target)
    return written


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else ".").resolve()
    try:
        plan = make_plan(root)
    except Refused as exc:
        print(f"reorganise: refused: {exc}", file=sys.stderr)
        return 2
    use_git = (root / ".git").exists()
    changed = rewrite_all(plan)
    move_all(plan, use_git)
    split = split_provider(plan, use_git)
    shims = write_shims(plan)
    redraw_architecture(plan)
    py = [p for p in {*changed, *split, root / PKG / "backends" / "local" / "__init__.py"} if p.exists()]
    moved = [path_of(root, n, False) for n in plan.modules.values()]
    py += [p for p in moved if p.exists()]
    ruff = [sys.executable, "-m", "ruff", "check", "--fix", "--quiet", "--select", "I"]
    subprocess.run([*ruff, *map(str, sorted(set(py)))], cwd=root, check=False)
    # the split's imports, once ruff dropped the unused names, fit on one line again
    collapse = ["--config", "lint.isort.split-on-trailing-comma=false"]
    subprocess.run([*ruff[:-1], "I,F401", *map(str, split)], cwd=root, check=False)
    subprocess.run([*ruff, *collapse, *map(str, split)], cwd=root, check=False)
    if use_git:
        git(root, "add", "-A", PKG)  # the shims, new packages and split modules, as moved
    print(f"reorganise: {len(plan.modules)} modules moved, {len(changed)} files rewritten, "
          f"provider split into {len(split) - 1} modules, {len(shims)} shims")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
