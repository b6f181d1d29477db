"""The documentation's links lead somewhere: README.md and docs/*.md link to files (and
headings) that exist, and the code and config point at docs/ files that exist, not at notes
outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks (a ``# comment`` in a code block is no heading)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    return {
        _slug(line.lstrip("#"))
        for line in _prose(path.read_text(encoding="utf-8"))
        if re.match(r"^#{1,6} ", line)
    }


def _links(path: Path) -> list[str]:
    prose = "\n".join(_prose(path.read_text(encoding="utf-8")))
    prose = re.sub(r"`[^`\n]*`", "", prose)  # inline code is not a link
    return LINK.findall(prose)


def test_the_docs_folder_has_the_guides() -> None:
    names = {p.name for p in DOCS}
    assert {"architecture.md", "alerts.md", "conversion.md", "operations.md"} <= names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_to_existing_files_and_headings(doc: Path) -> None:
    broken = []
    for target in _links(doc):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        path = (doc.parent / file_part).resolve() if file_part else doc
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif not path.is_relative_to(REPO):
            broken.append(f"{target}: outside the repository")
        elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(REPO)}")
    assert not broken, f"{doc.relative_to(REPO)}: " + "; ".join(broken)


def test_link_checker_sees_a_broken_link(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text(
        "# Title `x`\n\nsee [a](missing.md) and [b](#title-x)\n```\n[c](not-a-link)\n```\n"
    )
    assert _links(doc) == ["missing.md", "#title-x"]
    assert _anchors(doc) == {"title-x"}


def _repo_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        pytest.skip("not a git checkout")
    return [REPO / name for name in out.stdout.splitlines()]


def test_code_and_config_point_at_docs_that_exist() -> None:
    missing, outside = [], []
    for path in _repo_files():
        if (
            path.suffix not in (".py", ".yaml", ".yml", ".md", ".service", ".sh")
            or not path.is_file()
        ):
            continue
        if path == Path(__file__).resolve():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        rel = path.relative_to(REPO)
        for name in re.findall(r"(?<![\w/.])docs/([\w-]+\.md)", text):
            if not (REPO / "docs" / name).is_file():
                missing.append(f"{rel}: docs/{name}")
        if "DESIGN.md" in text:
            outside.append(str(rel))
    assert not missing, f"links to docs that do not exist: {missing}"
    assert not outside, f"point at DESIGN.md, a note outside the repository: {outside}"
