"""The README is the front door: every page under docs/ is linked from it, every relative
link and anchor resolves, and the commands the pages show exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cli.main import main as cli

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading slugs: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    headings = re.findall(r"^#+ (.+)$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_the_readme_stays_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in (ROOT / "docs").glob("*.md"):
        assert f"(docs/{page.name})" in readme, f"{page.name} is not linked from the README"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    for target in LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page.name}: {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{page.name}: {target}"


CODE = re.compile(r"```.*?```|`[^`\n]+`", re.S)
CLI_CALL = re.compile(r"(?:^|[\s`(])(?:\.venv/bin/)?embeddings ([a-z][\w-]*)\b(?![:-])", re.M)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_commands_shown_exist(page: Path) -> None:
    code = "\n".join(CODE.findall(page.read_text()))
    for command in CLI_CALL.findall(code):
        assert command in cli.commands, f"{page.name}: embeddings {command}"
    for command in re.findall(r"python3 dev\.py (\w+)", code):
        assert command in {"up", "test", "bench", "lint", "fuzz", "install"}, command
