"""What a chaos run starts, and the database faults it inflicts.

Everything on loopback: an embedded PostgreSQL migrated by Alembic, the Cognito emulator in a
process of its own (`tests.chaos.moto_process`), and app instances as uvicorn processes with
production settings. Every process started here dies with the harness (PR_SET_PDEATHSIG), and
`Stack.close` stops them in any case.

The database faults go through a superuser connection that names itself `chaos-harness`, so
that "every other session" means the apps' (and their workers') sessions, whatever they call
themselves.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.util
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import asyncpg
import httpx
from alembic import command
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.core.db import create_read_sessionmaker
from app.models.outbox import OutboxLease
from app.services import directory_sync
from app.services.adoption import CREATION_KIND
from app.services.directory_sync import DirectoryRecorder
from app.services.reconcile.snapshot import creates_in_flight
from app.services.worker_status import background_work_status
from devtools.postgres import EmbeddedPostgres, quote_identifier
from tests.support.app_env import BACKEND_DIR, app_environment
from tests.support.database import alembic_config
from tests.support.moto_cognito import DUMMY_CREDENTIALS_ENV
from tests.support.net import free_port

HARNESS_APPLICATION_NAME: Final = "chaos-harness"
DATABASE: Final = "chaos"
_PR_SET_PDEATHSIG: Final = 1


def _die_with_the_harness() -> None:
    """In the child before exec: SIGKILL it when the harness dies, however it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(
    arguments: list[str], *, env: dict[str, str], cwd: Path, log: IO[bytes] | int
) -> subprocess.Popen[bytes]:
    """A child process of the harness (call from the main thread: the death signal follows
    the thread that forked it)."""
    return subprocess.Popen(
        arguments,
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_the_harness,
    )


def end_process(process: subprocess.Popen[Any], *, grace: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ---------------------------------------------------------------------------------------------
# The app instances


def background_commands() -> list[list[str]]:
    """The processes an instance runs beside its web server: the worker, once there is one
    (`python -m app.worker`); today the background work runs inside the web process."""
    if importlib.util.find_spec("app.worker") is None:
        return []
    return [[sys.executable, "-m", "app.worker"]]


@dataclass
class Instance:
    """One app instance (an EC2 host): uvicorn, plus its worker when the app has one."""

    name: str
    env: dict[str, str]
    workdir: Path
    port: int = field(default_factory=free_port)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # (down, up) monotonic instants of each time it was killed; up is None while it is down.
    outages: list[tuple[float, float | None]] = field(default_factory=list)
    starts: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def up(self) -> bool:
        return not self.outages or self.outages[-1][1] is not None

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            uvicorn = [
                *(sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"),
                *("--port", str(self.port), "--timeout-keep-alive", "15", "--no-server-header"),
            ]
            self.processes = [
                spawn(command_line, env=self.env, cwd=self.workdir, log=log)
                for command_line in [uvicorn, *background_commands()]
            ]

    async def ready(self, within: float = 60.0) -> None:
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(timeout=2) as client:
            while True:
                for process in self.processes:
                    if process.poll() is not None:
                        raise RuntimeError(f"instance {self.name} exited; see {self.log_path}")
                with suppress(httpx.HTTPError):
                    if (await client.get(f"{self.url}/health/live")).status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"instance {self.name} did not start; see {self.log_path}")
                await asyncio.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL every process of the instance, as a host that dies."""
        self.outages.append((time.monotonic(), None))
        for process in self.processes:
            with suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
        for process in self.processes:
            process.wait()

    async def restart(self) -> None:
        self.start()
        await self.ready()
        down, _ = self.outages[-1]
        self.outages[-1] = (down, time.monotonic())

    def was_down(self, start: float, end: float) -> bool:
        """Whether the instance was down (or being killed) at any time in [start, end]."""
        return any(down - 0.5 <= end and (up is None or up >= start) for down, up in self.outages)

    def stop(self) -> None:
        for process in self.processes:
            end_process(process)


def instance_environment(
    database_url: str, moto_url: str, proxy_url: str, pool_id: str, client_id: str
) -> dict[str, str]:
    """Production settings (caches, pool, deadlines as shipped); Cognito through the proxy."""
    return app_environment(
        database_url,
        f"{moto_url}/{pool_id}/.well-known/jwks.json",
        **DUMMY_CREDENTIALS_ENV,
        AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER=proxy_url,
        COGNITO_USER_POOL_ID=pool_id,
        COGNITO_APP_CLIENT_ID=client_id,
        PYTHONPATH=str(BACKEND_DIR),
        ENVIRONMENT="chaos",
        LOG_LEVEL="WARNING",
        ACCESS_LOG="false",
    )


def cli_environment(
    database_url: str, moto_url: str, pool_id: str, client_id: str
) -> dict[str, str]:
    """A command-line tool's settings: Cognito reached directly, as an operator's shell does."""
    return app_environment(
        database_url,
        "http://127.0.0.1:9/jwks.json",
        **DUMMY_CREDENTIALS_ENV,
        AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER=moto_url,
        COGNITO_USER_POOL_ID=pool_id,
        COGNITO_APP_CLIENT_ID=client_id,
        PYTHONPATH=str(BACKEND_DIR),
        LOG_LEVEL="WARNING",
    )


async def run_cli(env: dict[str, str], cwd: Path, *arguments: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", *arguments),
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), 90)
    except TimeoutError:
        process.kill()
        await process.wait()
        return -1, "", f"{' '.join(arguments)} timed out"
    return int(process.returncode or 0), stdout.decode(), stderr.decode()


# ---------------------------------------------------------------------------------------------
# PostgreSQL and the emulator


class Stack:
    """PostgreSQL and the emulator, started in `open` and stopped in `close` whatever happened."""

    def __init__(self) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="onesys-chaos-"))
        self.postgres = EmbeddedPostgres(self.workdir / "pg", durable=False)
        self.moto: subprocess.Popen[bytes] | None = None
        self.moto_url = ""
        self.instances: list[Instance] = []

    @property
    def database_url(self) -> str:
        return self.postgres.url(DATABASE)

    async def open(self) -> None:
        await asyncio.to_thread(self.postgres.start)
        await asyncio.to_thread(self.postgres.create_database, DATABASE)
        config = alembic_config(self.database_url)
        await asyncio.to_thread(command.upgrade, config, "head")
        self.moto = self._start_moto()
        assert self.moto.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(self.moto.stdout.readline), 60)
        self.moto_url = line.decode().strip()
        if not self.moto_url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"the emulator did not start; see {self.workdir / 'moto.log'}")

    def _start_moto(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.chaos.moto_process"],
            env={**os.environ, "PYTHONPATH": str(BACKEND_DIR)},
            cwd=self.workdir,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=(self.workdir / "moto.log").open("wb"),
            preexec_fn=_die_with_the_harness,
        )

    def close(self, *, keep_logs: bool) -> None:
        for instance in self.instances:
            instance.stop()
        if self.moto is not None:
            assert self.moto.stdin is not None
            with suppress(OSError):
                self.moto.stdin.close()
            end_process(self.moto, grace=5)
        with suppress(Exception):
            self.postgres.stop()
        shutil.rmtree(self.workdir / "pg", ignore_errors=True)
        if not keep_logs:
            shutil.rmtree(self.workdir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Database faults


@asynccontextmanager
async def harness_connection(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    url = make_url(database_url)
    connection = await asyncpg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        database=url.database,
        timeout=5,
        # Its own writes (locks, settings) must work inside a read-only window too.
        server_settings={
            "application_name": HARNESS_APPLICATION_NAME,
            "default_transaction_read_only": "off",
        },
    )
    try:
        yield connection
    finally:
        await connection.close()


async def hold_table_lock(database_url: str, seconds: float) -> None:
    """Every statement on `users` waits while another session holds ACCESS EXCLUSIVE."""
    async with harness_connection(database_url) as connection, connection.transaction():
        await connection.execute("SET LOCAL lock_timeout = '3s'")
        await connection.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        await asyncio.sleep(seconds)


async def hold_row_locks(database_url: str, seconds: float, rng: random.Random) -> None:
    """A few user rows locked FOR UPDATE: their updates (and nothing else) wait."""
    async with harness_connection(database_url) as connection, connection.transaction():
        await connection.execute("SET LOCAL lock_timeout = '3s'")
        await connection.execute(
            "SELECT id FROM users WHERE id = ANY("
            "  SELECT id FROM users ORDER BY md5(id::text || $1) LIMIT 5"
            ") FOR UPDATE",
            str(rng.random()),
        )
        await asyncio.sleep(seconds)


async def terminate_app_sessions(connection: asyncpg.Connection, only: str = "TRUE") -> int:
    """pg_terminate_backend of the apps' sessions (those matching `only`); how many."""
    terminated = await connection.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid() "
        f"AND application_name <> $1 AND backend_type = 'client backend' AND ({only})",
        HARNESS_APPLICATION_NAME,
    )
    return int(terminated or 0)


@asynccontextmanager
async def read_only_window(database_url: str) -> AsyncIterator[None]:
    """A failover seen from the app: every session cut, and the sessions opened meanwhile
    reach a server that refuses writes (`default_transaction_read_only`)."""
    name = quote_identifier(DATABASE)
    async with harness_connection(database_url) as connection:
        await connection.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
        try:
            await terminate_app_sessions(connection)
            yield
        finally:
            await connection.execute(f"ALTER DATABASE {name} RESET default_transaction_read_only")


# The LISTEN connection of each web process. PostgreSQL lists no session's channels, so it is
# found by the last statement it ran: LISTEN, or its heartbeat (a NOTIFY it sends, or a bare
# `SELECT 1` ping). The health probe's idle connection also last ran `SELECT 1`; cutting it too
# is harmless (every checkout pings first and replaces a dead connection).
_LISTENER_SESSIONS: Final = (
    "state = 'idle' AND (query ILIKE 'LISTEN%' OR query ILIKE 'NOTIFY%' "
    "OR query ILIKE '%pg_notify%' OR query = 'SELECT 1')"
)


async def kill_listeners(database_url: str) -> int:
    async with harness_connection(database_url) as connection:
        return await terminate_app_sessions(connection, _LISTENER_SESSIONS)


async def plant_unreadable_intent(database_url: str) -> None:
    """A create intent the worker's handler cannot read (as one written by a release whose
    format this one does not know): it must be dropped, not retried forever."""
    email = f"unreadable-{uuid.uuid4().hex[:10]}@example.gov"
    async with harness_connection(database_url) as connection:
        await connection.execute(
            "INSERT INTO outbox (kind, key, payload) VALUES ('user_creation', $1, $2::jsonb)",
            email,
            json.dumps({"email": email, "began": "not a time"}),
        )


async def pending_background_work(database_url: str) -> dict[str, int]:
    """The work the apps still owe, by outbox kind (and leases still held), by the apps' own
    queries: the directory's pending work (a read-back, which looks again after a failure in
    case a call lands late, is verification, not work owed: what it verifies is judged
    directly, against Cognito), the creates in flight, and any other kind's backlog.

    The one place the harness reads the apps' internals.
    """
    engine = create_async_engine(
        database_url,
        poolclass=NullPool,
        connect_args={"server_settings": {"application_name": HARNESS_APPLICATION_NAME}},
    )
    read_sessions = create_read_sessionmaker(engine)
    try:
        status = await background_work_status(read_sessions)
        pending = {item.kind: item.pending for item in status.backlog}
        pending[directory_sync.KIND] = await DirectoryRecorder(read_sessions).pending()
        pending[CREATION_KIND] = len(await creates_in_flight(read_sessions))
        async with read_sessions() as session:
            leases = await session.scalar(
                select(func.count())
                .select_from(OutboxLease)
                .where(OutboxLease.expires_at > func.now())
            )
    finally:
        await engine.dispose()
    if leases:
        pending["leases held"] = int(leases)
    return pending
