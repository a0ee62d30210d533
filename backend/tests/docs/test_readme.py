"""The README a newcomer reads in ten minutes: short, its file table true to the tree, its links
alive, its configuration table complete. The detail lives in docs/, linked from it."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_LINES = 350

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`]+)`")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = heading.strip().lower().replace("`", "")
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def concern_rows() -> list[str]:
    lines = README.read_text().splitlines()
    start = lines.index("| concern | where |")
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line.rsplit("|", 2)[1])
    return rows


def test_the_readme_is_at_most_350_lines() -> None:
    assert len(README.read_text().splitlines()) <= MAX_LINES


def test_the_first_screen_gives_the_two_commands() -> None:
    first_screen = "\n".join(README.read_text().splitlines()[:15])

    assert "make run" in first_screen
    assert "make test" in first_screen


def test_every_concern_row_names_files_that_exist() -> None:
    rows = concern_rows()
    assert len(rows) >= 20
    missing = []
    for row in rows:
        names = CODE.findall(row)
        assert names, row
        folder = ROOT
        for name in names:
            # A name without a folder (`pool.py`) is inside the folder named before it.
            path = ROOT / name if "/" in name else folder / name
            if not path.exists():
                missing.append(name)
            if name.endswith("/"):
                folder = path
    assert missing == []


@pytest.mark.parametrize("document", [README, *DOCS], ids=lambda path: path.name)
def test_every_relative_link_and_anchor_resolves(document: Path) -> None:
    broken = []
    for target in LINK.findall(document.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (document.parent / file_part).resolve() if file_part else document
        if not linked.exists() or (anchor and anchor not in anchors(linked)):
            broken.append(target)
    assert broken == []


def test_the_configuration_table_names_every_variable() -> None:
    readme = README.read_text()
    example = (ROOT / ".env.example").read_text()
    variables = {name.upper() for name in Settings.model_fields}
    variables |= set(re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=", example, flags=re.MULTILINE))
    variables.add("WORKER_HEARTBEAT_FILE")  # read by app/worker.py, not a setting

    assert sorted(name for name in variables if f"`{name}`" not in readme) == []


def test_each_document_in_docs_is_linked_from_the_readme() -> None:
    readme = README.read_text()

    assert [doc.name for doc in DOCS if f"(docs/{doc.name}" not in readme] == []
