"""The test suite stays one a newcomer can follow (docs/architecture.md, Tests): what tests share
is in modules they import (`tests/support/`), never in a conftest, and no test file is too long
to read."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
MAX_LINES = 800


def conftest_imports(root: Path) -> list[str]:
    """`file: module` for each import of a conftest module below `root`."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
                modules += [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            found += [
                f"{path.relative_to(root)}: {module}"
                for module in modules
                if module.split(".")[-1] == "conftest"
            ]
    return found


def long_files(root: Path) -> list[str]:
    """`file: lines` for each Python file below `root` longer than `MAX_LINES`."""
    lengths = {path: len(path.read_text().splitlines()) for path in sorted(root.rglob("*.py"))}
    return [f"{path.relative_to(root)}: {n}" for path, n in lengths.items() if n > MAX_LINES]


def test_no_test_imports_a_conftest() -> None:
    assert conftest_imports(TESTS) == []


def test_no_test_file_is_over_800_lines() -> None:
    assert long_files(TESTS) == []


def test_the_checks_see_the_test_files() -> None:
    # Guards the two tests above against passing on an empty walk.
    assert len(list(TESTS.rglob("test_*.py"))) > 50
    assert (TESTS / "conftest.py").exists()
