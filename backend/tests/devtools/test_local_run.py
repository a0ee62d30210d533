"""`make run`, `make stop` and `make token` as a developer meets them: real processes, real ports.

Each test runs `python -m devtools.run` (what `make run` runs) in a scratch checkout of its own,
with its own LOCAL_DIR and free ports, so it never meets a developer's `make run`. Nothing is
stubbed: the embedded PostgreSQL, moto's Cognito server and uvicorn all start for real.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from devtools.local_cognito import LOCAL_ADMIN_EMAIL
from devtools.processes import port_is_free
from tests.support.net import free_port

REPO = Path(__file__).resolve().parents[3]
START_SECONDS = 120  # a first start makes a cluster and migrates it; on 2 busy cores
STOP_SECONDS = 60
# Settings that would configure real services; none of the caller's may leak in.
NOT_INHERITED = ("DB_", "COGNITO_", "AWS_", "S3_", "SQS_", "LOCAL_", "WEB_CONCURRENCY")
NOT_INHERITED_NAMES = {"PORT", "HOST", "ENVIRONMENT", "CORS_ORIGINS", "LOG_LEVEL", "ACCESS_LOG"}


@dataclass
class Checkout:
    """A working directory `make run` is started in, with the ports and LOCAL_DIR it uses."""

    directory: Path
    local_dir: Path
    api_port: int
    cognito_port: int
    db_port: int
    env: dict[str, str]
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def ports(self) -> list[int]:
        return [self.api_port, self.cognito_port, self.db_port]

    def run(self, log_name: str = "run.log") -> Run:
        log = self.directory / log_name
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "devtools.run"],
                cwd=self.directory,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                # As in a terminal, where `make run` leads its own process group.
                start_new_session=True,
            )
        self.started.append(process)
        return Run(process, log, self)

    def module(self, name: str, *arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", name, *arguments],
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=STOP_SECONDS + 30,
            check=False,
        )

    def record(self) -> dict[str, dict[str, int]]:
        document: dict[str, dict[str, int]] = json.loads((self.local_dir / "run.json").read_text())
        return document

    def postgres_pid(self) -> int:
        pid_file = self.local_dir / "postgres" / "pgdata" / "postmaster.pid"
        return int(pid_file.read_text().splitlines()[0])


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    log: Path
    checkout: Checkout

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_until_serving(self) -> None:
        """Until /health is 200 and the banner is out; fails if the run ends first."""
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"make run exited ({self.process.returncode}):\n{self.output()}")
            try:
                healthy = httpx.get(f"{self.checkout.api}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                healthy = False
            if healthy and "stop everything:" in self.output():
                return
            time.sleep(0.2)
        pytest.fail(f"make run did not serve within {START_SECONDS} s:\n{self.output()}")

    def children(self) -> dict[str, int]:
        """Pids of what this run started, as it recorded them."""
        record = self.checkout.record()
        return {
            "api": record["api"]["pid"],
            "worker": record["worker"]["pid"],
            "emulator": record["emulator"]["pid"],
            "postgres": self.checkout.postgres_pid(),
        }

    def finish(self) -> int:
        return self.process.wait(STOP_SECONDS)


def is_running(pid: int) -> bool:
    """Alive and not a zombie (an orphan whose reaper has not got to it yet is gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_until_gone(pids: list[int], seconds: float = 10) -> list[int]:
    """The pids still running after a bounded wait (an exiting process takes a moment)."""
    deadline = time.monotonic() + seconds
    while any(is_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return [pid for pid in pids if is_running(pid)]


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


@pytest.fixture
def checkout() -> Iterator[Checkout]:
    # Not pytest's tmp_path: every pytest run resets its base directory to mode 700, which
    # locks out the system user the embedded PostgreSQL runs as when the tests run as root.
    scratch = Path(tempfile.mkdtemp(prefix="onesys-test-make-run-"))
    directory = scratch / "checkout"
    directory.mkdir()
    ports = [free_port() for _ in range(3)]
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(NOT_INHERITED) and name not in NOT_INHERITED_NAMES
    }
    env.update(
        PYTHONPATH=str(REPO / "backend"),
        PYTHONUNBUFFERED="1",
        LOCAL_DIR=str(scratch / "local"),
        PORT=str(ports[0]),
        LOCAL_COGNITO_PORT=str(ports[1]),
        LOCAL_DB_PORT=str(ports[2]),
    )
    checkout = Checkout(directory, scratch / "local", ports[0], ports[1], ports[2], env)
    try:
        yield checkout
    finally:
        # Whatever a failed test left: `make stop` first, then by force.
        checkout.module("devtools.stop")
        for process in checkout.started:
            if process.poll() is None:
                process.kill()
                process.wait()
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.mark.long
def test_a_copied_env_example_runs_on_the_embedded_defaults_and_ctrl_c_stops_it_all(
    checkout: Checkout,
) -> None:
    shutil.copy(REPO / ".env.example", checkout.directory / ".env")

    run = checkout.run()
    run.wait_until_serving()
    metrics = httpx.get(f"{checkout.api}/metrics", timeout=5)
    children = run.children()
    run.process.send_signal(signal.SIGINT)
    status = run.finish()

    output = run.output()
    assert status == 0, output
    assert f"metrics: {checkout.api}/metrics" in output
    assert metrics.status_code == 200
    assert "one_system_http_requests_total" in metrics.text
    assert "Traceback" not in output
    assert "database: embedded PostgreSQL" in output
    assert "Cognito: local emulator" in output
    assert f"sign in as:    {LOCAL_ADMIN_EMAIL} / Local-Passw0rd!" in output
    assert (
        "make run: stopped the API, the worker, the Cognito emulator, the embedded PostgreSQL"
        in output
    )
    assert wait_until_gone(list(children.values())) == []
    assert [port for port in checkout.ports() if not port_is_free(port)] == []
    assert not (checkout.local_dir / "run.json").exists()


@pytest.mark.long
def test_users_created_during_the_run_sign_in_and_reset_passwords_and_a_killed_api_stops_all(
    checkout: Checkout,
) -> None:
    run = checkout.run()
    run.wait_until_serving()
    children = run.children()
    admin = checkout.module("devtools.token")
    assert admin.returncode == 0, admin.stderr
    as_admin = {"Authorization": f"Bearer {admin.stdout.strip()}"}
    created = httpx.post(
        f"{checkout.api}/api/v1/users",
        headers=as_admin,
        json={"full_name": "New Dispatcher", "email": "New.One@example.gov", "role": "DISPATCHER"},
        timeout=10,
    )
    assert created.status_code == 201, created.text
    # Never signed in: Cognito refuses the reset, and the app re-sends the invitation by the
    # user's real username (a UUID in an email-as-username pool), as real Cognito accepts.
    invited = httpx.post(
        f"{checkout.api}/api/v1/users",
        headers=as_admin,
        json={"full_name": "Invited", "email": "invited@example.gov", "role": "EXECUTIVE"},
        timeout=10,
    )
    assert invited.status_code == 201, invited.text
    reset = httpx.post(
        f"{checkout.api}/api/v1/users/{invited.json()['id']}/reset-password",
        headers=as_admin,
        timeout=10,
    )
    assert reset.status_code == 202, reset.text
    assert reset.json() == {"outcome": "invitation_resent"}

    signed_in = checkout.module("devtools.token", "--email", "New.One@example.gov")
    me = httpx.get(
        f"{checkout.api}/api/v1/users/me",
        headers={"Authorization": f"Bearer {signed_in.stdout.strip()}"},
        timeout=10,
    )
    unknown = checkout.module("devtools.token", "--email", "nobody@example.gov")
    # What a developer did before there was a `make stop`: kill the API found on its port.
    os.kill(children["api"], signal.SIGTERM)
    status = run.finish()

    assert signed_in.returncode == 0, signed_in.stderr
    assert "Local-Passw0rd!" in signed_in.stderr
    assert me.status_code == 200, me.text
    assert me.json()["email"] == "new.one@example.gov"
    assert unknown.returncode == 1
    assert error_lines(unknown.stderr) == [
        "make token: no user nobody@example.gov in the local Cognito emulator"
    ]
    assert status == 1, run.output()
    assert "make run: the API exited on SIGTERM; stopping the rest" in run.output()
    assert (
        "make run: stopped the worker, the Cognito emulator, the embedded PostgreSQL"
        in run.output()
    )
    assert wait_until_gone(list(children.values())) == []
    assert [port for port in checkout.ports() if not port_is_free(port)] == []


@pytest.mark.long
def test_what_a_killed_run_left_is_taken_over_in_one_line_and_make_stop_ends_it_all(
    checkout: Checkout,
) -> None:
    first = checkout.run("first.log")
    first.wait_until_serving()
    before = own_profile(checkout)
    left = first.children()
    first.process.kill()
    first.process.wait()
    # What the user meets after `kill -9`: the run is gone, all it started is not.
    assert [name for name, pid in left.items() if not is_running(pid)] == []

    second = checkout.run("second.log")
    second.wait_until_serving()
    after = own_profile(checkout)
    third = checkout.module("devtools.run")
    now = second.children()
    stopped = checkout.module("devtools.stop")
    second_status = second.finish()
    again = checkout.module("devtools.stop")

    output = second.output()
    assert "Traceback" not in output
    takeover = [line for line in output.splitlines() if "earlier make run" in line]
    assert takeover == [
        "an earlier make run was not shut down: "
        f"stopped its API (pid {left['api']}), "
        f"stopped its worker (pid {left['worker']}), "
        f"stopped its Cognito emulator (pid {left['emulator']}), "
        f"reusing its PostgreSQL on 127.0.0.1:{checkout.db_port}"
    ]
    assert now["postgres"] == left["postgres"]
    # Linked to the new emulator's user, the admin's row is otherwise unchanged.
    assert after == before
    assert third.returncode == 1
    assert error_lines(third.stdout + third.stderr) == [
        f"make run: already running (pid {second.process.pid}) for {checkout.local_dir}; "
        "make stop stops it"
    ]
    assert stopped.returncode == 0, stopped.stderr
    assert error_lines(stopped.stdout) == [
        f"stopped make run (pid {second.process.pid}) and all it started"
    ]
    assert second_status == 0
    assert wait_until_gone([*left.values(), *now.values()]) == []
    assert [port for port in checkout.ports() if not port_is_free(port)] == []
    assert again.returncode == 0
    assert error_lines(again.stdout) == [
        f"nothing to stop: no make run of {checkout.local_dir} is running"
    ]


def own_profile(checkout: Checkout) -> dict[str, object]:
    """The local admin's `/users/me`, as the running make run answers it."""
    token = checkout.module("devtools.token")
    assert token.returncode == 0, token.stderr
    me = httpx.get(
        f"{checkout.api}/api/v1/users/me",
        headers={"Authorization": f"Bearer {token.stdout.strip()}"},
        timeout=10,
    )
    assert me.status_code == 200, me.text
    profile: dict[str, object] = me.json()
    return profile


@pytest.mark.parametrize(
    ("dotenv", "message"),
    [
        pytest.param(
            "DB_HOST=127.0.0.1\nDB_PORT={closed}\nDB_NAME=app\nDB_USER=app\nDB_PASSWORD=x\n",
            "make run: cannot connect to the database app on 127.0.0.1:{closed} "
            "(DB_HOST from .env): ",
            id="unreachable-database",
        ),
        pytest.param(
            "DB_NAME=app\n",
            "make run: configuration error: set DB_SECRET_ID, or all of DB_HOST, DB_NAME, "
            "DB_USER, DB_PASSWORD (missing: DB_HOST, DB_USER, DB_PASSWORD)",
            id="half-a-database",
        ),
        pytest.param(
            "COGNITO_APP_CLIENT_ID=abc\n",
            "make run: configuration error: missing required settings: COGNITO_USER_POOL_ID",
            id="half-a-cognito-pool",
        ),
        pytest.param(
            "CORS_ORIGINS=*\n",
            "make run: configuration error: CORS_ORIGINS: ",
            id="invalid-setting",
        ),
    ],
)
def test_a_bad_configuration_ends_in_one_line_before_anything_starts(
    checkout: Checkout, dotenv: str, message: str
) -> None:
    closed = free_port()
    (checkout.directory / ".env").write_text(dotenv.format(closed=closed))

    result = checkout.module("devtools.run")

    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(message.format(closed=closed)), lines[0]
    assert not (checkout.local_dir / "postgres" / "pgdata").exists()
    assert [port for port in checkout.ports() if not port_is_free(port)] == []


def test_a_port_taken_by_another_program_ends_in_one_line_naming_the_setting(
    checkout: Checkout,
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", checkout.cognito_port))
        squatter.listen()

        result = checkout.module("devtools.run")

    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    assert error_lines(result.stderr) == [
        f"make run: port {checkout.cognito_port} (LOCAL_COGNITO_PORT) is taken by a process "
        f"make run did not start (`ss -ltnp` or `lsof -i :{checkout.cognito_port}` names it); "
        "stop it or set LOCAL_COGNITO_PORT to a free port"
    ]
    assert not (checkout.local_dir / "postgres" / "pgdata").exists()
