"""`make migrations-check`: the migrations build the models, and the running release survives them.

A deploy migrates while the previous release still serves, and a rollback runs the previous
release on the new schema (scripts/deploy_backend.sh), so every migration must let that release
keep working: expand now, contract a release later (docs/operations.md). Four checks, on a
throwaway embedded PostgreSQL; every failure is reported, then the command exits 1:

1. `alembic check`: upgraded to head, the database matches the models.
2. squawk lints each revision's SQL (Alembic's offline mode, with the lock_timeout and
   statement_timeout alembic/env.py sets) for what blocks or breaks a running release: renames,
   drops, NOT NULL without a default, indexes built without CONCURRENTLY, constraints not added
   NOT VALID, missing timeouts. A migration already deployed may carry exceptions inline:
   ``squawk_exceptions = {"rule": "why it was safe"}``.
3. Every revision goes upgrade -> downgrade -> upgrade.
4. N-1: the previous release's code (the commit before the one that added the newest migration;
   the working tree's HEAD while that migration is not committed) runs its database-facing tests
   against a database the current migrations built. A migration deployed before this check
   existed may carry ``previous_release_exception = "why"``.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import Script, ScriptDirectory

from devtools.postgres import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[2]
# Rules about column types chosen for the future (bigint, text), not about what a migration does
# to the release running beside it; the models choose those types on purpose.
SQUAWK_EXCLUDED = ("prefer-bigint-over-int", "prefer-bigint-over-smallint", "prefer-text-field")
# The previous release's tests that read and write every table through its own code; they start
# their own PostgreSQL and migrate it with the migrations of this tree.
PREVIOUS_RELEASE_TESTS = (
    "backend/tests/services/test_users.py",
    "backend/tests/services/test_outbox.py",
)
PREVIOUS_RELEASE_TIMEOUT_S = 600


class CheckFailed(Exception):
    """One check's failure, as the operator should read it."""


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)

    def run(self, name: str, check: object, *args: object) -> None:
        try:
            message = check(*args)  # type: ignore[operator]
        except CheckFailed as failure:
            self.failures.append(f"{name}: {failure}")
            print(f"FAIL {name}", file=sys.stderr)
        else:
            print(f"ok   {name}{f': {message}' if message else ''}")


def alembic_config(url: str, output: io.StringIO | None = None) -> Config:
    config = Config(str(ROOT / "alembic.ini"), output_buffer=output)
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


def revisions() -> list[Script]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(alembic_config("postgresql://unused"))
    return list(reversed(list(script.walk_revisions())))


def check_models(url: str) -> str:
    config = alembic_config(url)
    command.upgrade(config, "head")
    try:
        command.check(config)
    except Exception as error:  # alembic raises util.CommandError with the differences
        raise CheckFailed(str(error)) from None
    return "no drift between models and migrations"


def offline_sql(url: str, revision: Script) -> str:
    output = io.StringIO()
    target = (
        f"{revision.down_revision}:{revision.revision}"
        if revision.down_revision
        else revision.revision
    )
    command.upgrade(alembic_config(url, output), target, sql=True)
    return output.getvalue()


def squawk(url: str) -> str:
    """squawk on each revision's SQL, with the revision's own inline exceptions."""
    problems = []
    with tempfile.TemporaryDirectory(prefix="onesys-squawk-") as folder:
        for revision in revisions():
            exceptions: dict[str, str] = getattr(revision.module, "squawk_exceptions", {})
            path = Path(folder) / f"{revision.revision}.sql"
            path.write_text(offline_sql(url, revision))
            excluded = ",".join([*SQUAWK_EXCLUDED, *exceptions])
            result = subprocess.run(
                [
                    squawk_binary(),
                    "--pg-version=15",
                    "--reporter=gcc",
                    f"--exclude={excluded}",
                    str(path),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if result.returncode != 0:
                name = Path(revision.path).name
                problems.append(f"{name}:\n{result.stdout.strip() or result.stderr.strip()}")
    if problems:
        raise CheckFailed("\n".join(problems))
    return f"{len(revisions())} revisions linted"


def squawk_binary() -> str:
    found = shutil.which(
        "squawk", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    )
    if found is None:
        raise CheckFailed("squawk is not installed: run make venv (squawk-cli is in the dev lock)")
    return found


def round_trips(url: str) -> str:
    """upgrade -> downgrade -> upgrade of every revision in turn, from an empty database."""
    config = alembic_config(url)
    for revision in revisions():
        try:
            command.upgrade(config, revision.revision)
            command.downgrade(config, revision.down_revision or "base")
            command.upgrade(config, revision.revision)
        except Exception as error:  # a migration's own SQL error, reported with its name
            raise CheckFailed(f"{Path(revision.path).name}: {error}") from None
    return f"{len(revisions())} revisions up, down and up again"


def git(*args: str) -> str:
    result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CheckFailed(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def previous_release(newest: Script) -> str | None:
    """The commit of the release before ``newest``: the parent of the commit that added it, or
    HEAD while it is not committed. None when the repository has no commit before it."""
    path = str(Path(newest.path).relative_to(ROOT))
    added = git("log", "-1", "--format=%H", "--diff-filter=A", "--", path)
    if not added:
        return git("rev-parse", "HEAD")
    if git("rev-parse", "--is-shallow-repository") == "true" and not _has_parent(added):
        raise CheckFailed(
            "the git history is shallow, so the release before the newest migration is missing: "
            "run `git fetch --unshallow` (in CI: check out with the full history, fetch-depth 0)"
        )
    return git("rev-parse", f"{added}^") if _has_parent(added) else None


def _has_parent(commit: str) -> bool:
    return (
        subprocess.run(
            ["git", "cat-file", "-e", f"{commit}^"], cwd=ROOT, capture_output=True, check=False
        ).returncode
        == 0
    )


def previous_release_runs() -> str:
    newest = revisions()[-1]
    name = Path(newest.path).name
    reason = getattr(newest.module, "previous_release_exception", None)
    if reason:
        return f"skipped for {name}, deployed before this check: {reason}"
    commit = previous_release(newest)
    if commit is None:
        return f"{name} is the first migration: no previous release"
    with tempfile.TemporaryDirectory(prefix="onesys-previous-") as folder:
        tree = Path(folder)
        archive = subprocess.run(
            ["git", "archive", commit, "backend", "pyproject.toml", "alembic.ini"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        # Its code, this tree's migrations: the schema the deploy leaves it running on.
        shutil.copytree(ROOT / "alembic", tree / "alembic")
        tests = [test for test in PREVIOUS_RELEASE_TESTS if (tree / test).is_file()]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-q",
                "-x",
                "--numprocesses=0",
                "--no-header",
                "-rf",
                *tests,
            ],
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree / "backend")},
            capture_output=True,
            text=True,
            check=False,
            timeout=PREVIOUS_RELEASE_TIMEOUT_S,
        )
    short = commit[:12]
    if result.returncode != 0:
        raise CheckFailed(
            f"the previous release (commit {short}, before {name}) fails on the schema {name} "
            f"leaves: {name} renames, drops or requires something it still uses; split it into "
            f"expand and contract (docs/operations.md).\n{_failure_lines(result.stdout)}"
        )
    return (
        f"the previous release (commit {short}) passes {len(tests)} test files on {name}'s schema"
    )


def _failure_lines(output: str) -> str:
    """What broke: the error lines and pytest's summary, not the whole traceback."""
    lines = output.splitlines()
    wanted = [line for line in lines if line.startswith(("E ", "FAILED", "ERROR"))]
    return "\n".join(dict.fromkeys(wanted[:12] + lines[-1:]))


def main() -> None:
    report = Report()
    with tempfile.TemporaryDirectory(prefix="onesys-check-") as data_dir:
        server = EmbeddedPostgres(Path(data_dir), port=None)
        server.start()
        try:
            for database in ("models", "offline", "round_trips"):
                server.create_database(f"migrations_{database}")
            report.run("alembic check", check_models, server.url("migrations_models"))
            report.run("squawk", squawk, server.url("migrations_offline"))
            report.run(
                "upgrade/downgrade/upgrade", round_trips, server.url("migrations_round_trips")
            )
        finally:
            server.stop()
    report.run("previous release on the new schema", previous_release_runs)
    if report.failures:
        print("\n\n".join(report.failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
