"""The lock files and the venv built from them: `make lock`, `make lock-check`, and the installs.

The lock is `requirements/*.txt`, compiled by uv from pyproject.toml: exact versions with the
hashes of every file of each, for every platform and Python the project supports, and no index
address (the files say what to install, not where from). One lock per install, each the
previous one plus an extra, all at the same versions:

    runtime  the API (the Docker image)           local  + what `make run` starts
    dev      + the test and lint tools (make test) bench + the benchmark's chart and profiler

uv itself is pinned here (UV_VERSION) and installed with pip into `.venv/.uv`. It reads neither
pip's configuration nor PIP_INDEX_URL, so an index that pip is configured with is handed to it
(UV_DEFAULT_INDEX), together with pip's CA bundle: both install from the same place.

Runs on the Python that creates the venv, before the venv exists, so it uses the stdlib only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

UV_VERSION = "0.13.9"

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
UV_DIR = VENV / ".uv"
RECORD = VENV / ".locked.json"
LOCKS = ROOT / "requirements"

# Each level installs its lock, which holds everything of the levels before it.
LEVELS: dict[str, tuple[str, ...]] = {
    "runtime": (),
    "local": ("local",),
    "dev": ("dev",),
    "bench": ("dev", "bench"),
}
FULL = "bench"


class DepsError(RuntimeError):
    """Printed as one line; the make target fails."""


def lock_file(level: str, directory: Path = LOCKS) -> Path:
    return directory / f"{level}.txt"


# -- uv ----------------------------------------------------------------------------------------


def pip_settings() -> dict[str, str]:
    """pip's own global settings, from its environment variables and configuration files."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"],
        capture_output=True,
        text=True,
        check=False,
    )
    settings: dict[str, str] = {}
    # Lines such as `global.index-url='...'` and `:env:.cert='...'`; the environment wins.
    for line in sorted(result.stdout.splitlines(), key=lambda line: line.startswith(":env:")):
        key, _, value = line.partition("=")
        section, _, name = key.rpartition(".")
        if section in {"global", ":env:"}:
            settings[name] = value.strip().strip("'\"")
    return settings


def uv_environment() -> dict[str, str]:
    """The environment for uv: pip's index and CA bundle unless uv's own settings name them."""
    environment = dict(os.environ)
    pip = pip_settings()
    uv_index = any(environment.get(name) for name in ("UV_DEFAULT_INDEX", "UV_INDEX_URL"))
    if not uv_index and pip.get("index-url"):
        # Only the index: pip's extra indexes and find-links are folders of this machine.
        environment["UV_DEFAULT_INDEX"] = pip["index-url"]
    if not environment.get("SSL_CERT_FILE") and pip.get("cert"):
        environment["SSL_CERT_FILE"] = pip["cert"]
    return environment


def uv_binary() -> Path:
    """uv at UV_VERSION, installed with pip into `.venv/.uv` the first time."""
    binary = UV_DIR / "bin" / "uv"
    marker = UV_DIR / "VERSION"
    if binary.is_file() and marker.is_file() and marker.read_text().strip() == UV_VERSION:
        return binary
    shutil.rmtree(UV_DIR, ignore_errors=True)
    print(f"installing uv {UV_VERSION} into {UV_DIR.relative_to(ROOT)}", flush=True)
    # -qq: pip's warnings about find-links folders a machine's configuration names are noise.
    run(
        [
            *(sys.executable, "-m", "pip", "install", "-qq", "--disable-pip-version-check"),
            *("--root-user-action=ignore", "--target", str(UV_DIR), f"uv=={UV_VERSION}"),
        ],
        what=f"pip could not install uv {UV_VERSION}",
    )
    marker.write_text(UV_VERSION + "\n")
    return binary


def run(command: Sequence[str], *, what: str, environment: Mapping[str, str] | None = None) -> None:
    result = subprocess.run(list(command), env=environment, cwd=ROOT, check=False)
    if result.returncode != 0:
        raise DepsError(f"{what} (exit status {result.returncode})")


# -- compiling ---------------------------------------------------------------------------------


def compile_command(uv: Path, level: str, directory: Path, *, upgrade: bool) -> list[str]:
    """`uv pip compile` of one level into `directory`; the existing file there is a preference.

    The full lock is resolved first; the others are constrained by it, so that one package has
    one version (per Python) in every lock.
    """
    command = [
        str(uv),
        "pip",
        "compile",
        "--quiet",
        "pyproject.toml",  # relative: the lock's comments name it as written here
        "--universal",
        "--generate-hashes",
        "--custom-compile-command",
        "make lock",
        "--output-file",
        str(lock_file(level, directory)),
    ]
    for extra in LEVELS[level]:
        command += ["--extra", extra]
    if level != FULL:
        command += ["--constraint", str(lock_file(FULL, directory))]
    if upgrade:
        command.append("--upgrade")
    return command


def compile_all(uv: Path, directory: Path, *, upgrade: bool = False) -> None:
    environment = uv_environment()
    run(
        compile_command(uv, FULL, directory, upgrade=upgrade),
        what=f"uv could not resolve pyproject.toml ({FULL})",
        environment=environment,
    )
    others = [level for level in LEVELS if level != FULL]
    processes = {
        level: subprocess.Popen(
            compile_command(uv, level, directory, upgrade=upgrade), env=environment, cwd=ROOT
        )
        for level in others
    }
    failed = [level for level, process in processes.items() if process.wait() != 0]
    if failed:
        raise DepsError(f"uv could not resolve pyproject.toml ({', '.join(failed)})")


def pins(path: Path) -> list[str]:
    """The requirement lines of a lock (`name==version ; marker`), without hashes and comments."""
    lines: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.strip().removesuffix("\\").strip()
        if line and not line.startswith(("#", "--")):
            lines.append(line)
    return lines


def lock(*, upgrade: bool) -> None:
    uv = uv_binary()
    LOCKS.mkdir(exist_ok=True)
    compile_all(uv, LOCKS, upgrade=upgrade)
    print(f"locked: {', '.join(str(lock_file(level).relative_to(ROOT)) for level in LEVELS)}")


def check() -> None:
    """Fail unless resolving pyproject.toml again, preferring the locked versions, changes no pin.

    With the lock as the preference, a new release elsewhere changes nothing; only a
    requirement the lock no longer satisfies (or a lock edited by hand) does.
    """
    missing = [
        str(lock_file(level).relative_to(ROOT))
        for level in LEVELS
        if not lock_file(level).is_file()
    ]
    if missing:
        raise DepsError(f"no lock file {', '.join(missing)}: run `make lock`")
    uv = uv_binary()
    with tempfile.TemporaryDirectory(prefix="lock-check-") as scratch:
        directory = Path(scratch)
        for level in LEVELS:
            shutil.copy(lock_file(level), lock_file(level, directory))
        compile_all(uv, directory)
        stale: list[str] = []
        for level in LEVELS:
            locked, wanted = pins(lock_file(level)), pins(lock_file(level, directory))
            if locked != wanted:
                changes = [f"-{pin}" for pin in locked if pin not in wanted]
                changes += [f"+{pin}" for pin in wanted if pin not in locked]
                stale.append(f"  {lock_file(level).relative_to(ROOT)}: {' '.join(changes)}")
    if stale:
        print("\n".join(stale), file=sys.stderr)
        raise DepsError(
            "the lock no longer matches pyproject.toml: run `make lock` and commit requirements/"
        )


# -- the venv ----------------------------------------------------------------------------------


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def installed() -> dict[str, str] | None:
    try:
        record = json.loads(RECORD.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_current(level: str) -> bool:
    """The venv holds this level's lock, or a later level's (which holds it), unchanged since."""
    record = installed()
    if record is None or not (VENV / "bin" / "python").exists():
        return False
    have = record.get("level")
    if have not in LEVELS or list(LEVELS).index(have) < list(LEVELS).index(level):
        return False
    return record.get("lock_sha256") == digest(lock_file(have)) and record.get("uv") == UV_VERSION


def sync(level: str) -> None:
    """Make `.venv` hold exactly `requirements/<level>.txt`, plus the project itself (editable)."""
    if is_current(level):
        return
    # Run by whatever `python3` is, before the venv exists; the venv is made with it.
    if sys.version_info < (3, 11):  # noqa: UP036
        raise DepsError(f"Python >= 3.11 needed ({sys.executable} is {sys.version.split()[0]})")
    python = VENV / "bin" / "python"
    if not python.exists():
        # No pip in the venv: uv installs into it, and `make` never uses the venv's pip.
        run(
            [sys.executable, "-m", "venv", "--without-pip", str(VENV)], what="python -m venv failed"
        )
    uv = uv_binary()
    locked = lock_file(level)
    print(f"installing {locked.relative_to(ROOT)} into .venv", flush=True)
    RECORD.unlink(missing_ok=True)
    # Exactly the lock (what is not in it is removed), every file checked against its hash, and
    # the project itself, editable, in the same pass.
    with tempfile.TemporaryDirectory(prefix="deps-") as scratch:
        project = Path(scratch) / "project.txt"
        project.write_text(f"--editable {ROOT}\n")
        run(
            [str(uv), "pip", "sync", "--quiet", "--python", str(python), str(locked), str(project)],
            what=f"uv could not install {locked.relative_to(ROOT)}",
            environment=uv_environment(),
        )
    RECORD.write_text(
        json.dumps({"level": level, "lock_sha256": digest(locked), "uv": UV_VERSION}) + "\n"
    )


def main(arguments: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command", required=True)
    lock_parser = commands.add_parser("lock", help="write requirements/*.txt from pyproject.toml")
    lock_parser.add_argument("--upgrade", action="store_true", help="newest versions allowed")
    commands.add_parser("check", help="fail when the lock no longer matches pyproject.toml")
    sync_parser = commands.add_parser("sync", help="install a level's lock into .venv")
    sync_parser.add_argument("level", choices=list(LEVELS))
    options = parser.parse_args(arguments)
    try:
        if options.command == "lock":
            lock(upgrade=options.upgrade)
        elif options.command == "check":
            check()
        else:
            sync(options.level)
    except DepsError as error:
        print(f"{Path(__file__).name}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
