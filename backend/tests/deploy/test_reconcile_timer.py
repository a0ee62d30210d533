"""The reconcile timer and its service: valid for systemd, sandboxed, running the real command."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from app.cli import reconcile

from .nginx_harness import REPO_ROOT
from .test_systemd_unit import (
    MAX_EXPOSURE,
    exposure,
    systemd_verify,
    unit_entries,
    verify_root,
)

SYSTEMD_DIR = REPO_ROOT / "deploy" / "systemd"
SERVICE = SYSTEMD_DIR / "one-system-reconcile.service"
TIMER = SYSTEMD_DIR / "one-system-reconcile.timer"
BACKEND_UNIT = SYSTEMD_DIR / "one-system-backend.service"
DEPLOY_SCRIPT = REPO_ROOT / "scripts" / "deploy_backend.sh"
DEPLOY_LOCK = "/run/lock/one-system-deploy.lock"


def verify(tmp_path: Path, service_text: str, timer_text: str) -> subprocess.CompletedProcess[str]:
    """systemd-analyze verify of both units, on the EC2 host's stand-ins."""
    root = verify_root(tmp_path, {SERVICE.name: service_text, TIMER.name: timer_text})
    return systemd_verify(root, SERVICE.name, TIMER.name)


def test_systemd_analyze_verify_is_silent(tmp_path: Path) -> None:
    result = verify(tmp_path, SERVICE.read_text(), TIMER.read_text())
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_verify_catches_a_broken_timer(tmp_path: Path) -> None:
    """Guards the guard: a schedule systemd cannot parse is reported."""
    broken = TIMER.read_text().replace("OnCalendar=hourly", "OnCalendar=every hour")
    result = verify(tmp_path, SERVICE.read_text(), broken)
    assert "every hour" in result.stderr


def test_the_timer_starts_the_service_hourly_and_catches_up_after_downtime() -> None:
    timer = unit_entries(TIMER.read_text())
    assert timer["Timer"]["OnCalendar"] == ["hourly"]
    assert timer["Timer"]["Persistent"] == ["true"]
    assert timer["Timer"]["Unit"] == [SERVICE.name]
    assert timer["Install"]["WantedBy"] == ["timers.target"]


def command_words() -> list[str]:
    (start,) = unit_entries(SERVICE.read_text())["Service"]["ExecStart"]
    return shlex.split(start)


def test_the_service_runs_the_command_in_a_one_off_container_of_the_release() -> None:
    service = unit_entries(SERVICE.read_text())["Service"]
    assert service["Type"] == ["oneshot"]
    # The image of the running release, as the backend unit names it.
    assert service["EnvironmentFile"] == unit_entries()["Service"]["EnvironmentFile"]
    words = command_words()
    # Under the deploy lock: the same file the deploy script locks by default.
    assert words[:2] == ["/usr/bin/flock", DEPLOY_LOCK]
    assert f'LOCK_FILE="${{LOCK_FILE:-{DEPLOY_LOCK}}}"' in DEPLOY_SCRIPT.read_text()
    assert words[2:4] == ["/usr/bin/docker", "compose"]
    # The live release's slot project and image (SLOT, APP_IMAGE from the release file).
    assert words[words.index("-f") + 1] == "/opt/one-system/docker-compose.app.yml"
    run = words.index("run")
    assert {"--rm", "-T", "--no-deps"} <= set(words[run : words.index("app")])
    assert words[words.index("app") + 1 :][:3] == ["python", "-m", "app.cli.reconcile"]
    settings = [value for values in service.values() for value in values]
    assert not [value for value in settings if "DB_" in value or "secret" in value.lower()]


def test_the_commands_options_are_ones_it_accepts() -> None:
    options = command_words()[command_words().index("app.cli.reconcile") + 1 :]
    assert "--apply" in options
    # argparse handles --help after every option before it: a bad one exits 2 first.
    with pytest.raises(SystemExit) as parsed:
        reconcile.main([*options, "--help"])
    assert parsed.value.code == 0


def test_the_service_keeps_the_backend_units_sandbox(tmp_path: Path) -> None:
    assert exposure(tmp_path, SERVICE.read_text()) <= MAX_EXPOSURE
    service = unit_entries(SERVICE.read_text())["Service"]
    backend = unit_entries()["Service"]
    for key in ("CapabilityBoundingSet", "ProtectSystem", "SystemCallFilter"):
        assert service[key] == backend[key], key
    # It runs the image the deploy pulled: no registry, no network for the CLI.
    assert service["PrivateNetwork"] == ["yes"]
    (runtime_dir,) = service["RuntimeDirectory"]
    assert service["Environment"] == [f"DOCKER_CONFIG=/run/{runtime_dir}"]
    # The one place it writes: the deploy lock's directory.
    assert service["ReadWritePaths"] == [str(Path(DEPLOY_LOCK).parent)]
