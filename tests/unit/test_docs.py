"""The README and the pages under docs/: every relative link points at a file that exists,
and every ``#anchor`` at a heading of that file (the README's reference moved into docs/,
issue 18; a renamed heading must not leave a link dangling)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from marketstream.settings import PROJECT_ROOT

PAGES = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of a page's headings (lower case, punctuation dropped, - for spaces)."""
    found = set()
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    for link in re.findall(r"\]\(([^)\s]+)\)", text) + re.findall(r'src="([^"]+)"', text):
        if re.match(r"[a-z]+:", link):
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: {link} points at nothing"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target), f"{page.name}: no heading for {link}"


def test_the_readme_is_a_first_screen_and_links_every_page() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 200, "the reference belongs in docs/"
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme, f"the README does not link {page.name}"
