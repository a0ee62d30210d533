"""The Dockerfile: lint-clean, builds from files that exist, runs a command that works."""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn

from .nginx_harness import (
    ECHO_APP,
    ECHO_APP_DIR,
    REPO_ROOT,
    free_port,
    offline_app_env,
    run_uvicorn,
    tool,
)

DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped; stage = FROM count."""
    instructions: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), args.strip(), stage))
    return instructions


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not exec form: {args}"
    return [str(item) for item in value]


def cmd_args() -> list[str]:
    """uvicorn's command line as the image runs it (`python -m app.serve` becomes uvicorn)."""
    (cmd,) = [i for i in parse_dockerfile() if i.keyword == "CMD"]
    args = exec_form(cmd.args)
    assert args[:3] == ["python", "-m", "app.serve"]
    return ["uvicorn", *args[3:]]


def healthcheck_command() -> list[str]:
    (check,) = [i for i in parse_dockerfile() if i.keyword == "HEALTHCHECK"]
    return exec_form(check.args[check.args.index("CMD ") + len("CMD ") :])


def copy_sources() -> list[str]:
    """Sources of every COPY from the build context (not --from another stage)."""
    sources: list[str] = []
    for instruction in parse_dockerfile():
        if instruction.keyword != "COPY":
            continue
        words = shlex.split(instruction.args)
        if any(word.startswith("--from") for word in words):
            continue
        paths = [word for word in words if not word.startswith("--")]
        sources += paths[:-1]
    return sources


def test_hadolint_reports_nothing() -> None:
    result = subprocess.run(
        [tool("hadolint"), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    sources = copy_sources()
    assert {
        "pyproject.toml",
        "requirements/runtime.txt",
        "backend/app",
        "alembic.ini",
        "alembic",
    } <= set(sources)
    missing = [source for source in sources if not (REPO_ROOT / source).exists()]
    assert missing == [], f"Dockerfile COPYs paths missing from the repo: {missing}"
    ignored = [source for source in sources if dockerignore_excludes(source)]
    assert ignored == [], f".dockerignore keeps these COPY sources out of the context: {ignored}"


def dockerignore_excludes(path: str) -> bool:
    """Docker's rule: the last matching pattern wins; ``!`` re-includes."""
    excluded = False
    for raw in DOCKERIGNORE.read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.removeprefix("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern + "/*"):
            excluded = not negate
    return excluded


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    for path in [".env", ".venv", ".git", "backend/tests", "scripts", "backend/app/__pycache__"]:
        assert dockerignore_excludes(path), path


def test_build_is_multi_stage_and_runtime_is_slim_non_root_without_compilers() -> None:
    instructions = parse_dockerfile()
    froms = [i for i in instructions if i.keyword == "FROM"]
    assert len(froms) == 2
    assert froms[0].args.split()[0] == "python:3.12-slim"
    assert any(i.stage == 0 and "pip wheel" in i.args for i in instructions if i.keyword == "RUN")
    runtime = [i for i in instructions if i.stage == 1]
    assert runtime[0].args.split()[0] == "python:3.12-slim"
    users = [i.args for i in runtime if i.keyword == "USER"]
    assert users, "runtime stage never drops root"
    assert users[-1].split(":")[0] not in {"root", "0"}
    runtime_runs = " ".join(i.args for i in runtime if i.keyword == "RUN")
    for compiler in ["gcc", "build-essential", "apt-get install", "clang"]:
        assert compiler not in runtime_runs
    assert "--no-index" in runtime_runs, "runtime must install only the wheels built in stage 1"


def test_the_image_installs_the_locked_runtime_dependencies_and_resolves_nothing() -> None:
    instructions = parse_dockerfile()
    build_runs = [i.args for i in instructions if i.keyword == "RUN" and i.stage == 0]
    # Every dependency from the lock's runtime part, each download checked against its hashes.
    (locked,) = [run for run in build_runs if "-r requirements/runtime.txt" in run]
    assert locked.startswith("pip wheel ")
    assert "--require-hashes" in locked.split()
    assert "--no-deps" in locked.split()
    # The project's own wheel adds nothing the lock does not hold.
    (project,) = [run for run in build_runs if run.rstrip().endswith(" .")]
    assert "--no-deps" in project.split()
    # The runtime stage installs those wheels as they are: no index, no resolution.
    (install,) = [
        i.args
        for i in instructions
        if i.keyword == "RUN" and i.stage == 1 and "pip install" in i.args
    ]
    assert {"--no-index", "--no-deps"} <= set(install.split())
    assert "pip check" in install


def test_cmd_is_exec_form_uvicorn_with_proxy_headers_and_env_driven_workers() -> None:
    args = cmd_args()
    assert args[:2] == ["uvicorn", "app.main:app"]
    assert "--proxy-headers" in args
    # Workers and trusted proxies come from WEB_CONCURRENCY / FORWARDED_ALLOW_IPS, which
    # uvicorn reads only when the flags are absent.
    assert "--workers" not in args
    assert "--forwarded-allow-ips" not in args
    env = " ".join(i.args for i in parse_dockerfile() if i.keyword == "ENV")
    assert "WEB_CONCURRENCY=" in env
    assert "FORWARDED_ALLOW_IPS=" in env
    # Every web worker's metrics in one directory, on the container's sized /tmp.
    assert "PROMETHEUS_MULTIPROC_DIR=/tmp/metrics" in env


def test_cmd_flags_are_accepted_by_uvicorn_and_env_vars_are_honoured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cli = importlib.import_module("uvicorn.main").main
    context = cli.make_context("uvicorn", cmd_args()[1:])
    assert context.params["app"] == "app.main:app"
    assert context.params["proxy_headers"] is True
    monkeypatch.setenv("WEB_CONCURRENCY", "3")
    monkeypatch.setenv("FORWARDED_ALLOW_IPS", "172.28.0.0/24")
    config = uvicorn.Config(
        "app.main:app",
        workers=context.params["workers"],
        forwarded_allow_ips=context.params["forwarded_allow_ips"],
    )
    assert config.workers == 3
    assert config.forwarded_allow_ips == "172.28.0.0/24"


def test_cmd_module_imports() -> None:
    # In a fresh interpreter with production-like settings: the module builds the app at import.
    module_name, _, attribute = cmd_args()[1].partition(":")
    code = (
        f"import importlib; module = importlib.import_module({module_name!r}); "
        f"assert callable(getattr(module, {attribute!r}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO_ROOT / "backend",
        env={**os.environ, **offline_app_env()},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def run_healthcheck(port: int) -> subprocess.CompletedProcess[str]:
    command = healthcheck_command()
    assert command[0] == "python"
    assert "127.0.0.1:8000/health/live" in command[-1]
    code = command[-1].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    return subprocess.run(
        [sys.executable, *command[1:-1], code], capture_output=True, text=True, check=False
    )


def test_healthcheck_passes_on_200_and_fails_on_error_status_or_no_listener() -> None:
    with run_uvicorn(ECHO_APP, app_dir=ECHO_APP_DIR) as port:
        assert run_healthcheck(port).returncode == 0
    # Nothing listens on a fresh free port: connection refused must fail the check.
    assert run_healthcheck(free_port()).returncode != 0


def test_healthcheck_fails_on_503() -> None:
    command = healthcheck_command()
    with run_uvicorn(ECHO_APP, app_dir=ECHO_APP_DIR) as port:
        code = command[-1].replace("127.0.0.1:8000/health/live", f"127.0.0.1:{port}/?status=503")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, check=False)
    assert result.returncode != 0
