"""The documentation points at what exists: every relative link resolves (with its anchor),
and the architecture page names every module of the package."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*)$", re.MULTILINE)
_CODE = re.compile(r"```.*?```", re.DOTALL)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in _HEADING.findall(_CODE.sub("", page.read_text("utf-8")))}


def links(page: Path) -> list[str]:
    text = _CODE.sub("", page.read_text("utf-8"))
    return [a or b for a, b in _LINK.findall(text)]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading #{anchor})")
        elif not dest.is_relative_to(ROOT):
            broken.append(f"{target} (outside the repository)")
    assert not broken, f"{page.name}: {broken}"


def test_the_link_checker_sees_links_and_anchors() -> None:
    # guards the test above: it must find the README's links and this page's headings
    assert "docs/policies.md" in links(ROOT / "README.md")
    assert "protocols" in anchors(ROOT / "docs" / "teacher.md")
    assert slug("Memory over a long run: `bench/memory.py`") == "memory-over-a-long-run-benchmemorypy"


def test_architecture_page_names_every_module() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text("utf-8")
    package = ROOT / "atlas_middleware"
    modules = [p for p in package.rglob("*.py") if p.name not in ("__init__.py", "__main__.py")]
    assert len(modules) > 50
    missing = [str(p.relative_to(package)) for p in modules if p.name not in page]
    assert not missing, f"docs/architecture.md does not name: {missing}"


_PATH_MENTION = re.compile(r"(?<![\w/.])((?:docs|bench|tests|examples|integrations|scripts)/[\w./-]+\.(?:md|py|yaml|sh))")


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_files_named_in_prose_and_commands_exist(page: Path) -> None:
    # "see docs/benchmarks-proxy.md" in plain text dangles as surely as a broken link
    named = set(_PATH_MENTION.findall(page.read_text("utf-8")))
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{page.name} names files that do not exist: {missing}"
