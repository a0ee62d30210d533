"""scripts/deploy_backend.sh with fake aws/docker/systemctl/curl that record calls."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from .nginx_harness import REPO_ROOT, tool

SCRIPT = REPO_ROOT / "scripts" / "deploy_backend.sh"
INSTALLER = REPO_ROOT / "scripts" / "install_test_tools.sh"
APP_ENV_EXAMPLE = REPO_ROOT / "deploy" / "backend.env.example"
REGISTRY = "123456789012.dkr.ecr.ap-southeast-1.example"
TOKEN = "ecr-login-token"

# Each fake appends one line per call: its name and arguments (docker also the IMAGE_TAG it
# was run with). The release file decides health: the fake curl answers 200 only while
# IMAGE_TAG there is one of $FAKE_HEALTHY_TAGS, as the real stack would after a restart.
FAKES = {
    "aws": f'echo "aws $*" >>"$CALLS"; echo {TOKEN}',
    "docker": """
if [[ "$1" == login ]]; then read -r password; echo "docker $* <stdin:$password>" >>"$CALLS"
else echo "docker $* [IMAGE_TAG=${IMAGE_TAG:-}]" >>"$CALLS"; fi
if [[ "$*" == *"alembic upgrade head"* ]]; then exit "${FAKE_MIGRATE_EXIT:-0}"; fi
if [[ "$*" == *"app.worker --check"* ]]; then exit "${FAKE_WORKER_EXIT:-0}"; fi
""",
    "systemctl": 'echo "systemctl $*" >>"$CALLS"',
    "curl": """
echo "curl $*" >>"$CALLS"
tag="$(sed -n 's/^IMAGE_TAG=//p' "$RELEASE_ENV")"
[[ " ${FAKE_HEALTHY_TAGS:-} " == *" $tag "* ]] || exit 22
""",
}


@dataclass
class Host:
    root: Path
    calls_file: Path
    release_env: Path
    app_env: Path
    env: dict[str, str]

    def deploy(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(SCRIPT), *args],
            capture_output=True,
            text=True,
            check=False,
            env={**self.env, **env},
            timeout=30,
        )

    @property
    def calls(self) -> list[str]:
        if not self.calls_file.exists():
            return []
        return self.calls_file.read_text().splitlines()

    def release_tag(self) -> str:
        (line,) = [x for x in self.release_env.read_text().splitlines() if x.startswith("IMAGE_")]
        return line.removeprefix("IMAGE_TAG=")


@pytest.fixture
def host(tmp_path: Path) -> Host:
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    for name, body in FAKES.items():
        fake = fakebin / name
        fake.write_text(f"#!/bin/bash\nset -u\n{body}")
        fake.chmod(0o755)
    release_env = tmp_path / "etc" / "release.env"
    release_env.parent.mkdir()
    release_env.write_text(f"ECR_REGISTRY={REGISTRY}\nAWS_REGION=ap-southeast-1\nIMAGE_TAG=v1\n")
    # The host's app settings are the committed example: what an operator starts from.
    app_env = release_env.parent / "backend.env"
    app_env.write_text(APP_ENV_EXAMPLE.read_text())
    calls = tmp_path / "calls.log"
    env = {
        "PATH": f"{fakebin}:/usr/bin:/bin",
        "CALLS": str(calls),
        "APP_DIR": "/opt/one-system",
        "CONFIG_DIR": str(release_env.parent),
        "RELEASE_ENV": str(release_env),
        "LOCK_FILE": str(tmp_path / "deploy.lock"),
        "HEALTH_TIMEOUT": "1",
        "HEALTH_INTERVAL": "0.2",
    }
    return Host(tmp_path, calls, release_env, app_env, env)


def expected_steps(tag: str) -> list[str]:
    return [
        "aws ecr get-login-password --region ap-southeast-1",
        f"docker login --username AWS --password-stdin {REGISTRY} <stdin:{TOKEN}>",
        f"docker pull {REGISTRY}/one-system-backend:{tag} [IMAGE_TAG=]",
        "docker compose -f /opt/one-system/docker-compose.prod.yml run --rm --no-deps app"
        f" alembic upgrade head [IMAGE_TAG={tag}]",
        "systemctl restart one-system-backend",
    ]


def test_shellcheck_is_clean() -> None:
    result = subprocess.run(
        [tool("shellcheck"), str(SCRIPT), str(INSTALLER)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "")


def test_happy_path_runs_every_step_in_order(host: Host) -> None:
    result = host.deploy("v2", FAKE_HEALTHY_TAGS="v1 v2")
    assert result.returncode == 0, result.stderr
    steps = expected_steps("v2")
    assert host.calls[: len(steps)] == steps
    health_check, worker_check = host.calls[len(steps) :]
    assert health_check.startswith("curl --fail")
    assert "--max-time 5 http://127.0.0.1/health" in health_check
    assert worker_check.startswith(
        "docker compose -f /opt/one-system/docker-compose.prod.yml exec -T worker"
        " python -m app.worker --check"
    )
    assert host.release_tag() == "v2"
    # The ECR password went through stdin, never onto a command line.
    assert all(TOKEN not in call for call in host.calls if not call.endswith(f"<stdin:{TOKEN}>"))


def test_failed_migration_stops_before_restart(host: Host) -> None:
    result = host.deploy("v2", FAKE_HEALTHY_TAGS="v1 v2", FAKE_MIGRATE_EXIT="1")
    assert result.returncode != 0
    assert "migration failed" in result.stderr
    assert not any(call.startswith(("systemctl", "curl")) for call in host.calls)
    assert host.release_tag() == "v1"


def test_unhealthy_release_is_rolled_back_to_the_previous_tag(host: Host) -> None:
    started = time.monotonic()
    result = host.deploy("v2", FAKE_HEALTHY_TAGS="v1")
    assert result.returncode == 1
    assert "rolling back to one-system-backend:v1" in result.stderr
    restarts = [call for call in host.calls if call.startswith("systemctl")]
    assert restarts == ["systemctl restart one-system-backend"] * 2
    # Health was polled more than once until the deadline, then again after the rollback.
    after_first_restart = host.calls[host.calls.index(restarts[0]) + 1 :]
    assert sum(call.startswith("curl") for call in after_first_restart) >= 3
    # The rolled-back release passed both checks: the API's /health and the worker's own.
    assert host.calls[-2].startswith("curl")
    assert "app.worker --check" in host.calls[-1]
    assert host.release_tag() == "v1"
    assert time.monotonic() - started < 10


def test_a_release_whose_worker_never_turns_is_rolled_back(host: Host) -> None:
    result = host.deploy("v2", FAKE_HEALTHY_TAGS="v1 v2", FAKE_WORKER_EXIT="1")
    assert "rolling back to one-system-backend:v1" in result.stderr
    assert any("app.worker --check" in call for call in host.calls)
    assert result.returncode == 3  # the fake worker never turns, whatever the release
    assert host.release_tag() == "v1"


def test_rollback_that_is_unhealthy_too_exits_distinctly(host: Host) -> None:
    result = host.deploy("v2", FAKE_HEALTHY_TAGS="")
    assert result.returncode == 3
    assert "unhealthy too" in result.stderr
    assert host.release_tag() == "v1"


def test_first_release_that_fails_has_nothing_to_roll_back_to(host: Host) -> None:
    host.release_env.write_text(f"ECR_REGISTRY={REGISTRY}\nAWS_REGION=ap-southeast-1\n")
    result = host.deploy("v1", FAKE_HEALTHY_TAGS="")
    assert result.returncode == 1
    assert "no previous release" in result.stderr
    assert [call for call in host.calls if call.startswith("systemctl")] == [
        "systemctl restart one-system-backend"
    ]


def test_dry_run_prints_the_steps_and_changes_nothing(host: Host) -> None:
    before = host.release_env.read_text()
    result = host.deploy("--dry-run", "v2")
    assert result.returncode == 0, result.stderr
    assert host.calls == []
    assert host.release_env.read_text() == before
    printed = result.stdout
    for fragment in [
        "aws ecr get-login-password",
        "docker login --username AWS --password-stdin",
        f"docker pull {REGISTRY}/one-system-backend:v2",
        "run --rm --no-deps app alembic upgrade head",
        "systemctl restart one-system-backend",
        "curl --fail",
    ]:
        assert fragment in printed, fragment
    assert "rolled back to v1" in result.stderr


@pytest.mark.parametrize(
    "line", ["DB_PASSWORD=hunter2-not-real", "export DB_PASSWORD='hunter2-not-real'"]
)
def test_refuses_an_app_env_file_with_a_database_password(host: Host, line: str) -> None:
    host.app_env.write_text(host.app_env.read_text() + line + "\n")
    for args in (["--dry-run", "v2"], ["v2"]):
        result = host.deploy(*args, FAKE_HEALTHY_TAGS="v1 v2")
        assert result.returncode == 1
        assert f"{host.app_env} sets DB_PASSWORD" in result.stderr
        assert "hunter2" not in result.stdout + result.stderr
    assert host.calls == []
    assert host.release_tag() == "v1"


@pytest.mark.parametrize(
    "text", ["", "DB_SECRET_ID=\n", "# DB_SECRET_ID=/one-system/db/credentials\n"], ids=repr
)
def test_refuses_an_app_env_file_without_a_secret_id(host: Host, text: str) -> None:
    host.app_env.write_text("AWS_REGION=ap-southeast-1\n" + text)
    result = host.deploy("v2", FAKE_HEALTHY_TAGS="v1 v2")
    assert result.returncode == 1
    assert "does not set DB_SECRET_ID" in result.stderr
    assert host.calls == []


def test_refuses_a_missing_app_env_file(host: Host) -> None:
    host.app_env.unlink()
    result = host.deploy("v2", FAKE_HEALTHY_TAGS="v1 v2")
    assert result.returncode == 1
    assert f"cannot read {host.app_env}" in result.stderr
    assert host.calls == []


@pytest.mark.parametrize("args", [[], ["v1", "v2"], ["--bogus", "v2"]])
def test_usage_errors(host: Host, args: list[str]) -> None:
    result = host.deploy(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert host.calls == []


def test_rejects_a_tag_that_is_not_a_docker_tag(host: Host) -> None:
    result = host.deploy("v2;rm -rf /")
    assert result.returncode == 1
    assert host.calls == []


def test_installer_is_quiet_and_fast_when_everything_is_present() -> None:
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(INSTALLER)], capture_output=True, text=True, check=False, env=dict(os.environ)
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert time.monotonic() - started < 5
