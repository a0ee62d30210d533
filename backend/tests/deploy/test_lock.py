"""The lock (requirements/*.txt): what the venv holds, what each install gets, and its check.

`scripts/deps.py` writes and installs it; `make test` runs its check before anything else.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from .nginx_harness import REPO_ROOT

LOCKS = REPO_ROOT / "requirements"
LEVELS = ("runtime", "local", "dev", "bench")
PROJECT = "one-system-backend"


def pin_lines(level: str) -> list[str]:
    """`name==version ; marker` lines of a lock, as they stand before their hashes."""
    lines = (LOCKS / f"{level}.txt").read_text().splitlines()
    return [
        line.removesuffix("\\").strip()
        for line in lines
        if line and not line.startswith((" ", "#"))
    ]


def pins_here(level: str) -> dict[str, str]:
    """The lock's versions for this interpreter and platform: name -> version."""
    versions: dict[str, str] = {}
    for line in pin_lines(level):
        requirement, _, marker = line.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate():
            continue
        name, _, version = requirement.strip().partition("==")
        versions[canonicalize_name(name)] = version
    return versions


def test_the_venv_holds_exactly_the_lock_it_was_installed_from() -> None:
    record_path = Path(sys.prefix) / ".locked.json"
    assert record_path.is_file(), f"{sys.prefix} was not installed by make (scripts/deps.py)"
    level = json.loads(record_path.read_text())["level"]
    installed = {
        canonicalize_name(dist.metadata["Name"]): dist.version
        for dist in metadata.distributions()
        if Path(str(dist.locate_file(""))).resolve().is_relative_to(Path(sys.prefix).resolve())
    }
    assert installed.pop(canonicalize_name(PROJECT)) == metadata.version(PROJECT)
    assert installed == pins_here(level)


def test_every_locked_version_carries_hashes_and_no_lock_names_an_index() -> None:
    for level in LEVELS:
        text = (LOCKS / f"{level}.txt").read_text()
        assert "://" not in text, f"{level}.txt names an address"
        assert "--index-url" not in text
        assert "--find-links" not in text
        blocks = text.split("\n")
        for number, line in enumerate(blocks):
            if line and not line.startswith((" ", "#")):
                assert line.endswith("\\"), line
                assert blocks[number + 1].strip().startswith("--hash=sha256:"), line


def test_each_lock_is_the_one_before_plus_its_extra_at_the_same_versions() -> None:
    previous: set[str] = set()
    for level in LEVELS:
        pins = set(pin_lines(level))
        assert previous < pins, f"{level}.txt drops or changes {sorted(previous - pins)}"
        previous = pins
    runtime = {line.partition("==")[0] for line in pin_lines("runtime")}
    # The image gets the API's dependencies, not the tools of make run, the tests or the bench.
    assert {"fastapi", "sqlalchemy", "uvicorn", "asyncpg"} <= runtime
    assert not {"moto", "pgserver", "pytest", "ruff", "mypy", "matplotlib"} & runtime


def test_sqlalchemy_stays_below_the_next_minor_release_the_pool_was_not_tested_on() -> None:
    (requirement,) = [
        Requirement(line)
        for line in metadata.requires(PROJECT) or []
        if Requirement(line).name.lower() == "sqlalchemy"
    ]
    assert SpecifierSet("<2.2") == SpecifierSet(
        ",".join(str(s) for s in requirement.specifier if s.operator.startswith("<"))
    )
    assert pins_here("runtime")["sqlalchemy"] in requirement.specifier


def test_the_lock_check_fails_when_pyproject_asks_for_what_the_lock_lacks(
    tmp_path: Path,
) -> None:
    """`make test` starts with this check: pyproject.toml changed without `make lock`."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPO_ROOT / "scripts" / "deps.py", tmp_path / "scripts")
    shutil.copytree(LOCKS, tmp_path / "requirements")
    uv_dir = REPO_ROOT / ".venv" / ".uv"
    if uv_dir.is_dir():  # else the script installs uv itself, with the base Python's pip
        (tmp_path / ".venv").mkdir()
        (tmp_path / ".venv" / ".uv").symlink_to(uv_dir)
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    changed = pyproject.replace("dependencies = [\n", 'dependencies = [\n    "tomli-w>=1.0",\n', 1)
    assert changed != pyproject
    (tmp_path / "pyproject.toml").write_text(changed)

    python = getattr(sys, "_base_executable", sys.executable)  # a Python with pip
    result = subprocess.run(
        [python, str(tmp_path / "scripts" / "deps.py"), "check"],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "requirements/runtime.txt: +tomli-w==" in result.stderr
    assert "run `make lock`" in result.stderr
