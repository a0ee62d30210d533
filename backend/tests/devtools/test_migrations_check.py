"""`make migrations-check` on a scratch repository: a release N-1, then a release N that migrates.

The scratch repository holds this tree's code as its first commit (the previous release) and a
second commit with a new migration and the model that goes with it, so the new release itself
is consistent and only what the previous release does on the new schema can fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.migrations_check import ROOT

MIGRATION = '''"""{doc}

Revision ID: 0099
Revises: {head}
"""

import sqlalchemy as sa
from alembic import op

revision = "0099"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    {upgrade}


def downgrade() -> None:
    {downgrade}
'''
MODEL = ROOT / "backend" / "app" / "models" / "user.py"
MODEL_LINE = "    full_name: Mapped[str] = mapped_column(sa.String(200))\n"


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.gov", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


def scratch_repository(tmp_path: Path) -> tuple[Path, str]:
    """This tree committed once, as the previous release; its alembic head."""
    repo = tmp_path / "repo"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    shutil.copytree(ROOT / "backend", repo / "backend", ignore=ignore)
    shutil.copytree(ROOT / "alembic", repo / "alembic", ignore=ignore)
    for name in ("alembic.ini", "pyproject.toml"):
        shutil.copy(ROOT / name, repo / name)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "release N-1")
    versions = (repo / "alembic" / "versions").glob("*.py")
    pattern = re.compile(r'^revision: str = "([0-9]+)"', re.MULTILINE)
    return repo, max(m.group(1) for f in versions if (m := pattern.search(f.read_text())))


def release(repo: Path, head: str, *, doc: str, upgrade: str, downgrade: str, model: str) -> None:
    migration = MIGRATION.format(doc=doc, head=head, upgrade=upgrade, downgrade=downgrade)
    (repo / "alembic" / "versions" / "2099_01_01_0099_change.py").write_text(migration)
    model_file = repo / "backend" / "app" / "models" / "user.py"
    text = model_file.read_text()
    assert text.count(MODEL_LINE) == 1
    model_file.write_text(text.replace(MODEL_LINE, model))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "release N")


def migrations_check(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "devtools.migrations_check"],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo / "backend")},
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


@pytest.mark.long
def test_a_rename_fails_naming_the_previous_release_and_what_broke(tmp_path: Path) -> None:
    repo, head = scratch_repository(tmp_path)
    previous = git(repo, "rev-parse", "HEAD")[:12]
    release(
        repo,
        head,
        doc="Rename users.full_name to display_name.",
        upgrade='op.alter_column("users", "full_name", new_column_name="display_name")',
        downgrade='op.alter_column("users", "display_name", new_column_name="full_name")',
        model='    full_name: Mapped[str] = mapped_column("display_name", sa.String(200))\n',
    )
    result = migrations_check(repo)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ok   alembic check" in result.stdout
    assert "renaming-column" in result.stderr
    assert f"the previous release (commit {previous}, before 2099_01_01_0099_change.py)" in (
        result.stderr
    )
    assert 'column "full_name" of relation "users" does not exist' in result.stderr


def add_a_nullable_column(repo: Path, head: str) -> None:
    """A release whose migration adds users.nickname, nullable: the previous release runs on it."""
    release(
        repo,
        head,
        doc="Add users.nickname, nullable.",
        upgrade='op.add_column("users", sa.Column("nickname", sa.String(100), nullable=True))',
        downgrade='op.drop_column("users", "nickname")',
        model=MODEL_LINE + "    nickname: Mapped[str | None] = mapped_column(sa.String(100))\n",
    )


@pytest.mark.long
def test_a_nullable_column_added_passes(tmp_path: Path) -> None:
    repo, head = scratch_repository(tmp_path)
    add_a_nullable_column(repo, head)
    result = migrations_check(repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   previous release on the new schema: the previous release (commit" in (
        result.stdout
    )


def test_a_shallow_clone_says_how_to_get_the_history(tmp_path: Path) -> None:
    repo, head = scratch_repository(tmp_path)
    add_a_nullable_column(repo, head)
    shallow = tmp_path / "shallow"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{repo}", str(shallow))
    code = (
        "from devtools.migrations_check import CheckFailed, previous_release, revisions\n"
        "try:\n    previous_release(revisions()[-1])\n"
        "except CheckFailed as failure:\n    print(failure)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=shallow,
        env={**os.environ, "PYTHONPATH": str(shallow / "backend")},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "the git history is shallow" in result.stdout
    assert "git fetch --unshallow" in result.stdout
