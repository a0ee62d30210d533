"""scripts/deploy_backend.sh run for real: a Compose stand-in that refuses what Compose refuses
(fake_docker.py) starts real processes, the real nginx is in front, and a client keeps sending
requests through it while a release is deployed and rolled back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from .nginx_harness import (
    REPO_ROOT,
    RateLimit,
    RunningNginx,
    free_port,
    nginx_command,
    run_nginx,
    tool,
)

SCRIPT = REPO_ROOT / "scripts" / "deploy_backend.sh"
INSTALLER = REPO_ROOT / "scripts" / "install_test_tools.sh"
APP_ENV_EXAMPLE = REPO_ROOT / "deploy" / "backend.env.example"
APP_COMPOSE = REPO_ROOT / "docker-compose.app.yml"
FAKE_DOCKER = Path(__file__).with_name("fake_docker.py")
REGISTRY = "123456789012.dkr.ecr.ap-southeast-1.example"
TOKEN = "ecr-login-token"
HEADS = {"v1": "0006", "v2": "0007"}

FAKES = {
    "docker": f'exec "{sys.executable}" "{FAKE_DOCKER}" "$@"',
    "aws": f'echo "aws $*" >>"$FAKE_DOCKER_STATE/calls.log"; echo {TOKEN}',
    "systemctl": 'echo "systemctl $*" >>"$FAKE_DOCKER_STATE/calls.log"',
}


def digest(tag: str) -> str:
    """The digest the stand-in gives an image pulled as ``tag``."""
    import hashlib

    ref = f"{REGISTRY}/one-system-backend:{tag}"
    return f"{REGISTRY}/one-system-backend@sha256:{hashlib.sha256(ref.encode()).hexdigest()}"


@dataclass
class Host:
    root: Path
    env: dict[str, str]
    release_env: Path
    app_env: Path
    upstream_file: Path
    nginx: RunningNginx | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def deploy(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(SCRIPT), *args],
            capture_output=True,
            text=True,
            check=False,
            env={**self.env, **env},
            timeout=60,
        )

    def docker(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.root / "bin" / "docker"), *args],
            capture_output=True,
            text=True,
            check=False,
            env={**self.env, **env},
            timeout=30,
        )

    @property
    def calls(self) -> list[str]:
        path = self.root / "docker" / "calls.log"
        return path.read_text().splitlines() if path.exists() else []

    def release(self) -> dict[str, str]:
        lines = self.release_env.read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if "=" in line)

    def db_revision(self, value: str | None = None) -> str:
        path = self.root / "docker" / "db_revision"
        if value is not None:
            path.write_text(value)
        return path.read_text()

    def running(self, slot: str) -> bool:
        pid_file = self.root / "docker" / f"one-system-{slot}" / "app.pid"
        if not pid_file.exists():
            return False
        try:
            os.kill(int(pid_file.read_text()), 0)
        except ProcessLookupError:
            return False
        return True


def make_host(tmp_path: Path) -> Host:
    fakebin = tmp_path / "bin"
    fakebin.mkdir()
    for name, body in FAKES.items():
        fake = fakebin / name
        fake.write_text(f"#!/bin/bash\nset -u\n{body}\n")
        fake.chmod(0o755)
    etc = tmp_path / "etc"
    etc.mkdir()
    release_env = etc / "release.env"
    release_env.write_text(
        f"ECR_REGISTRY={REGISTRY}\nAWS_REGION=ap-southeast-1\nIMAGE_TAG=v1\n"
        f"APP_IMAGE={digest('v1')}\nSLOT=blue\nALEMBIC_HEAD=0006\n"
    )
    # The host's app settings are the committed example: what an operator starts from.
    app_env = etc / "backend.env"
    app_env.write_text(APP_ENV_EXAMPLE.read_text())
    upstream = tmp_path / "nginx-upstream" / "upstream.conf"
    upstream.parent.mkdir()
    ports = {"one-system-blue": free_port(), "one-system-green": free_port()}
    env = {
        "PATH": f"{fakebin}:{Path(sys.executable).parent}:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": str(tmp_path),
        "FAKE_DOCKER_STATE": str(tmp_path / "docker"),
        "FAKE_PORTS": json.dumps(ports),
        "FAKE_IMAGE_HEADS": json.dumps(HEADS),
        "APP_DIR": str(REPO_ROOT),
        "CONFIG_DIR": str(etc),
        "LOCK_FILE": str(tmp_path / "deploy.lock"),
        "UPSTREAM_FILE": str(upstream),
        "UPSTREAM_BLUE": f"127.0.0.1:{ports['one-system-blue']}",
        "UPSTREAM_GREEN": f"127.0.0.1:{ports['one-system-green']}",
        "HEALTH_TIMEOUT": "30",
        "HEALTH_INTERVAL": "0.1",
        "DRAIN_SECONDS": "0.5",
    }
    return Host(tmp_path, env, release_env, app_env, upstream)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    """A host whose release file says v1 runs in slot blue; nothing is running."""
    return make_host(tmp_path)


@pytest.fixture
def live_host(tmp_path: Path) -> Iterator[Host]:
    """The host with v1 running in slot blue behind the real nginx, as after a deploy of v1."""
    host = make_host(tmp_path)
    host.docker("pull", f"{REGISTRY}/one-system-backend:v1")
    host.db_revision("0006")
    blue = {"SLOT": "blue", "APP_IMAGE": digest("v1"), "APP_ENV": str(host.app_env)}
    started = host.docker("compose", "-f", str(APP_COMPOSE), "up", "-d", **blue)
    assert started.returncode == 0, started.stderr
    host.upstream_file.write_text(f"server {host.env['UPSTREAM_BLUE']};\n")
    try:
        # The steady client stands for a whole office's traffic, from one address: the
        # per-address allowance of /health (the zone the client's requests fall in) is not
        # what a deploy is judged by here (test_nginx_rate_limits.py tests it).
        office = {"one_system_public": RateLimit(rate="1000r/s", burst=1000)}
        with run_nginx(0, upstream_file=host.upstream_file, rate_limits=office) as nginx:
            host.nginx = nginx
            host.env["FAKE_NGINX_CMD"] = json.dumps(
                nginx_command(nginx.prefix, nginx.prefix / "nginx.conf")
            )
            wait_for_release(nginx, "v1")
            yield host
    finally:
        for slot in ("blue", "green"):
            env = {"SLOT": slot, "APP_IMAGE": digest("v1"), "APP_ENV": str(host.app_env)}
            host.docker("compose", "-f", str(APP_COMPOSE), "down", "--timeout", "5", **env)


def wait_for_release(nginx: RunningNginx, release: str) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            if httpx.get(nginx.url("/health"), timeout=1).headers.get("x-release") == release:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{release} never answered through nginx:\n{nginx.log_text}")


class Client(threading.Thread):
    """Sends GET /health through nginx at a constant rate; keeps every outcome."""

    def __init__(self, url: str, rate: float = 40.0) -> None:
        super().__init__(daemon=True)
        self.url, self.interval = url, 1 / rate
        self.stop = threading.Event()
        self.answers: list[str] = []
        self.failures: list[str] = []

    def run(self) -> None:
        with httpx.Client(timeout=10) as client:
            next_at = time.monotonic()
            while not self.stop.is_set():
                try:
                    response = client.get(self.url)
                    if response.status_code == 200:
                        self.answers.append(response.headers["x-release"])
                    else:
                        self.failures.append(f"{response.status_code} {response.text[:80]}")
                except httpx.HTTPError as error:
                    self.failures.append(repr(error))
                next_at += self.interval
                time.sleep(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Client:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.join(timeout=15)


def assert_moved(client: Client, before: str, after: str) -> None:
    """Every answer came from ``before`` and then, once switched, only from ``after``."""
    assert client.failures == []
    answers = client.answers
    assert len(answers) > 40
    first_after = answers.index(after)
    assert set(answers[:first_after]) == {before}
    assert set(answers[first_after:]) == {after}


@pytest.mark.long
def test_a_deploy_and_a_rollback_drop_no_request(live_host: Host) -> None:
    assert live_host.nginx is not None
    live_host.docker("pull", f"{REGISTRY}/one-system-backend:v0")  # an older release's image
    with Client(live_host.nginx.url("/health")) as client:
        time.sleep(0.5)
        deployed = live_host.deploy("v2")
        time.sleep(0.5)
    assert deployed.returncode == 0, deployed.stderr
    assert_moved(client, "v1", "v2")
    assert live_host.release() | {"AWS_REGION": ""} == {
        "ECR_REGISTRY": REGISTRY,
        "AWS_REGION": "",
        "IMAGE_TAG": "v2",
        "APP_IMAGE": digest("v2"),
        "SLOT": "green",
        "ALEMBIC_HEAD": "0007",
        "PREVIOUS_IMAGE_TAG": "v1",
        "PREVIOUS_APP_IMAGE": digest("v1"),
        "PREVIOUS_ALEMBIC_HEAD": "0006",
    }
    assert live_host.db_revision() == "0007"
    assert (live_host.running("blue"), live_host.running("green")) == (False, True)
    assert not [call for call in live_host.calls if call.startswith("systemctl")]
    # Pruned: the live release and the previous one stay, an older one goes.
    images = live_host.docker("image", "ls", f"{REGISTRY}/one-system-backend").stdout.split()
    assert sorted(images) == sorted([digest("v1"), digest("v2")])

    with Client(live_host.nginx.url("/health")) as client:
        time.sleep(0.5)
        rolled_back = live_host.deploy("--rollback")
        time.sleep(0.5)
    assert rolled_back.returncode == 0, rolled_back.stderr
    assert_moved(client, "v2", "v1")
    assert live_host.release()["SLOT"] == "blue"
    assert live_host.release()["APP_IMAGE"] == digest("v1")
    assert (live_host.running("blue"), live_host.running("green")) == (True, False)
    # No migration ran backwards or forwards, and the deploys' one pull was v2's.
    assert live_host.db_revision() == "0007"
    assert [c for c in live_host.calls if c.startswith("pull")] == [
        f"pull {REGISTRY}/one-system-backend:{tag}" for tag in ("v1", "v0", "v2")
    ]


def test_a_release_that_never_turns_healthy_never_gets_traffic(live_host: Host) -> None:
    assert live_host.nginx is not None
    before = live_host.release_env.read_text()
    result = live_host.deploy("v2", FAKE_UNHEALTHY_TAGS="v2", HEALTH_TIMEOUT="2")
    assert result.returncode == 1
    assert "did not pass /health" in result.stderr
    assert live_host.release_env.read_text() == before
    assert (live_host.running("blue"), live_host.running("green")) == (True, False)
    assert httpx.get(live_host.nginx.url("/health")).headers["x-release"] == "v1"


def test_an_upstream_nginx_refuses_is_put_back(live_host: Host) -> None:
    """nginx -t fails on the new upstream file: the old one is written back, nothing moved."""
    assert live_host.nginx is not None
    before = live_host.upstream_file.read_text()
    result = live_host.deploy("v2", UPSTREAM_GREEN="127.0.0.1:not-a-port")
    assert result.returncode != 0
    assert "rolling back" in result.stderr
    assert live_host.upstream_file.read_text().splitlines()[-1] == before.splitlines()[-1]
    assert live_host.release()["IMAGE_TAG"] == "v1"
    assert (live_host.running("blue"), live_host.running("green")) == (True, False)
    assert httpx.get(live_host.nginx.url("/health")).headers["x-release"] == "v1"


@pytest.mark.long
def test_a_signal_after_the_switch_moves_everything_back(live_host: Host) -> None:
    assert live_host.nginx is not None
    before = live_host.release_env.read_text()
    process = subprocess.Popen(
        ["bash", str(SCRIPT), "v2"],
        env={**live_host.env, "DRAIN_SECONDS": "20"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_release(live_host.nginx, "v2")
    time.sleep(0.3)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=40)
    assert process.returncode == 143, stderr
    assert "rolling back" in stderr
    assert httpx.get(live_host.nginx.url("/health")).headers["x-release"] == "v1"
    assert live_host.release_env.read_text() == before
    assert (live_host.running("blue"), live_host.running("green")) == (True, False)


def test_the_first_release_creates_the_edge_and_starts_the_unit(host: Host) -> None:
    host.release_env.write_text(f"ECR_REGISTRY={REGISTRY}\nAWS_REGION=ap-southeast-1\n")
    try:
        result = host.deploy("v1")
        assert result.returncode == 0, result.stderr
        assert host.running("blue")
    finally:
        env = {"SLOT": "blue", "APP_IMAGE": digest("v1"), "APP_ENV": str(host.app_env)}
        host.docker("compose", "-f", str(APP_COMPOSE), "down", "--timeout", "5", **env)
    compose = [c.split(" ", 3)[3] for c in host.calls if c.startswith("compose")]
    assert compose.index("create --no-recreate") < compose.index(
        "up -d --no-build --remove-orphans"
    )
    systemctl = [c for c in host.calls if c.startswith("systemctl")]
    assert systemctl == ["systemctl enable --now one-system-backend"]
    assert host.upstream_file.read_text().splitlines()[-1] == (
        f"server {host.env['UPSTREAM_BLUE']};"
    )
    assert host.release()["SLOT"] == "blue"
    assert host.release()["PREVIOUS_IMAGE_TAG"] == ""


def test_a_rollback_refuses_when_the_database_is_ahead(host: Host) -> None:
    host.docker("pull", f"{REGISTRY}/one-system-backend:v1")
    host.docker("pull", f"{REGISTRY}/one-system-backend:v2")
    host.release_env.write_text(
        f"ECR_REGISTRY={REGISTRY}\nAWS_REGION=ap-southeast-1\nIMAGE_TAG=v2\n"
        f"APP_IMAGE={digest('v2')}\nSLOT=green\nALEMBIC_HEAD=0007\nPREVIOUS_IMAGE_TAG=v1\n"
        f"PREVIOUS_APP_IMAGE={digest('v1')}\nPREVIOUS_ALEMBIC_HEAD=0006\n"
    )
    before = host.release_env.read_text()
    # A later release migrated the database to 0008, then failed and was stopped.
    host.db_revision("0008")
    for args in (["--rollback"], ["v1"]):
        result = host.deploy(*args)
        assert result.returncode == 1
        assert "refusing to roll back to v1: the database is at 0008" in result.stderr
    assert host.release_env.read_text() == before
    assert not [c for c in host.calls if " up " in f" {c} " or "upgrade" in c]


def test_a_deploy_waits_for_no_reconcile_run_and_starts_nothing_during_one(host: Host) -> None:
    """The reconcile unit holds the lock with flock(1) while it runs; a deploy then refuses."""
    holder = subprocess.Popen(["flock", host.env["LOCK_FILE"], "sleep", "30"])
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not Path(host.env["LOCK_FILE"]).exists():
            time.sleep(0.05)
        time.sleep(0.2)
        result = host.deploy("v2")
    finally:
        holder.kill()
        holder.wait()
    assert result.returncode == 1
    assert "another deploy or a reconcile run holds" in result.stderr
    assert host.calls == []


def test_a_failed_migration_starts_nothing(host: Host) -> None:
    before = host.release_env.read_text()
    result = host.deploy("v2", FAKE_MIGRATE_EXIT="1")
    assert result.returncode == 1
    assert "migration failed" in result.stderr
    assert not [c for c in host.calls if " up " in f" {c} "]
    assert host.release_env.read_text() == before
    (migration,) = [c for c in host.calls if "alembic upgrade head" in c]
    assert "-e MIGRATION_LOCK_TIMEOUT=5s -e MIGRATION_STATEMENT_TIMEOUT=10min" in migration
    # The migrator's secret, for the migration alone (docs/operations.md, Database roles).
    assert "-e DB_SECRET_ID=/one-system/db/migrator " in migration
    assert not [c for c in host.calls if "migrator" in c and "alembic upgrade" not in c]


def test_the_stand_in_refuses_what_compose_refuses(host: Host) -> None:
    """Guards the guard: the command the old script ran, and an unknown service, both fail."""
    compose = ["compose", "-f", str(APP_COMPOSE)]
    result = host.docker(*compose, "exec", "-T", "worker", "python", "-m", "app.worker")
    assert result.returncode == 1
    assert "required variable SLOT is missing a value: SLOT is not set" in result.stderr
    slot = {"SLOT": "blue", "APP_IMAGE": digest("v1"), "APP_ENV": str(host.app_env)}
    result = host.docker(*compose, "exec", "-T", "nginx", "nginx", "-s", "reload", **slot)
    assert (result.returncode, result.stderr.strip()) == (1, "no such service: nginx")
    result = host.docker(*compose, "up", "-d", **slot)
    assert result.returncode == 1
    assert "pull access denied" in result.stderr
    result = host.docker(*compose, "up", "-d", **{**slot, "APP_ENV": str(host.root / "nope")})
    assert "env file" in result.stderr


def test_dry_run_shows_the_move_and_changes_nothing(host: Host) -> None:
    before = host.release_env.read_text()
    result = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "v2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
        env=host.env,
    )
    printed = result.stdout
    assert result.returncode == 0, printed
    assert host.release_env.read_text() == before
    assert host.calls == []
    steps = [
        "docker pull",
        "alembic upgrade head",
        "starting v2 in slot green beside v1 in slot blue",
        "up -d",
        "exec -T app python -c",
        "exec -T worker python -m app.worker --check",
        "switching nginx to slot green",
        "nginx -s reload",
        "draining slot blue",
        "SLOT=blue",
        "down --timeout 30",
    ]
    positions = [printed.index(step) for step in steps]
    assert positions == sorted(positions)
    assert "systemctl" not in printed


@pytest.mark.parametrize(
    "line", ["DB_PASSWORD=hunter2-not-real", "export DB_PASSWORD='hunter2-not-real'"]
)
def test_refuses_an_app_env_file_with_a_database_password(host: Host, line: str) -> None:
    host.app_env.write_text(host.app_env.read_text() + line + "\n")
    for args in (["--dry-run", "v2"], ["v2"]):
        result = host.deploy(*args)
        assert result.returncode == 1
        assert f"{host.app_env} sets DB_PASSWORD" in result.stderr
        assert "hunter2" not in result.stdout + result.stderr
    assert host.calls == []


@pytest.mark.parametrize(
    "text", ["", "DB_SECRET_ID=\n", "# DB_SECRET_ID=/one-system/db/credentials\n"], ids=repr
)
def test_refuses_an_app_env_file_without_a_secret_id(host: Host, text: str) -> None:
    host.app_env.write_text("AWS_REGION=ap-southeast-1\n" + text)
    result = host.deploy("v2")
    assert result.returncode == 1
    assert "does not set DB_SECRET_ID" in result.stderr
    assert host.calls == []


def test_refuses_a_missing_app_env_file(host: Host) -> None:
    host.app_env.unlink()
    result = host.deploy("v2")
    assert result.returncode == 1
    assert f"cannot read {host.app_env}" in result.stderr
    assert host.calls == []


@pytest.mark.parametrize("args", [[], ["v1", "v2"], ["--bogus", "v2"], ["--rollback", "v2"]])
def test_usage_errors(host: Host, args: list[str]) -> None:
    result = host.deploy(*args)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert host.calls == []


def test_rejects_a_tag_that_is_not_a_docker_tag(host: Host) -> None:
    result = host.deploy("v2;rm -rf /")
    assert result.returncode == 1
    assert host.calls == []


def test_shellcheck_is_clean() -> None:
    result = subprocess.run(
        [tool("shellcheck"), str(SCRIPT), str(INSTALLER)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout) == (0, "")


def test_installer_is_quiet_and_fast_when_everything_is_present() -> None:
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(INSTALLER)], capture_output=True, text=True, check=False, env=dict(os.environ)
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert time.monotonic() - started < 5
