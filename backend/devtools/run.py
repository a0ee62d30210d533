"""`make run`: the API on embedded defaults, with nothing to install by hand.

Unless the environment or `.env` names a database (DB_HOST, DB_NAME, DB_USER, DB_PASSWORD or
DB_SECRET_ID), an embedded PostgreSQL is started with its data under `<LOCAL_DIR>/postgres`, kept
across restarts. Unless they name a Cognito pool (COGNITO_USER_POOL_ID or
COGNITO_APP_CLIENT_ID), a local Cognito emulator is started and bootstrapped (see
`devtools.local_cognito`). Migrations are applied, then uvicorn serves on 127.0.0.1:8000.

This process stays in front as the supervisor: Ctrl-C, SIGTERM or SIGHUP stop the API, the
emulator and the embedded PostgreSQL, in that order, and so does the exit of the API or the
emulator. Whatever an earlier run left behind (it was killed with SIGKILL) is found through
`<LOCAL_DIR>/run.json` and replaced (API, emulator) or reused (PostgreSQL), with one line
saying so. A problem the user can fix ends the run with one line, not a traceback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType

import asyncpg
from alembic import command
from alembic.config import Config
from dotenv import dotenv_values
from sqlalchemy.exc import DBAPIError

from app.core.config import ConfigError, load_database_settings, load_settings
from app.core.secrets import fetch_database_credentials
from devtools.local_cognito import (
    LOCAL_ADMIN_EMAIL,
    LOCAL_PASSWORD,
    EmulatorError,
    bootstrap,
    start_emulator,
    token_for,
    wait_for_emulator,
)
from devtools.postgres import EmbeddedPostgres, PostgresError
from devtools.processes import (
    OWNER_VARIABLE,
    ROOT,
    ChildRecord,
    RunLock,
    RunRecord,
    api_arguments,
    emulator_arguments,
    is_ours,
    local_dir,
    port_is_free,
    read_record,
    remove_record,
    shown,
    stop_child,
    stop_pid,
    wait_for_port,
    worker_arguments,
    write_record,
)

LOCAL_DATABASE = "onesystem"
API_STOP_SECONDS = 10
API_START_SECONDS = 60
EMULATOR_STOP_SECONDS = 5

DATABASE_SETTINGS = ("DB_HOST", "DB_NAME", "DB_USER", "DB_PASSWORD", "DB_SECRET_ID")
COGNITO_SETTINGS = ("COGNITO_USER_POOL_ID", "COGNITO_APP_CLIENT_ID")

# Settings phase 2 does not use yet (S3, SQS) still have to be named; these are placeholders.
LOCAL_DEFAULTS = {
    "ENVIRONMENT": "local",
    "AWS_REGION": "ap-southeast-1",
    "S3_ATTACHMENTS_BUCKET": "one-system-local-attachments",
    "S3_EXPORTS_BUCKET": "one-system-local-exports",
    "S3_AUDIT_BUCKET": "one-system-local-audit",
    "S3_LANDING_BUCKET": "one-system-local-landing",
    "SQS_NOTIFICATION_QUEUE_URL": "http://localhost/queue/one-system-local-notifications",
    "SQS_EXPORT_QUEUE_URL": "http://localhost/queue/one-system-local-exports",
    "CORS_ORIGINS": "http://localhost:5173,http://127.0.0.1:5173",
}


class RunError(RuntimeError):
    """Something the user can fix; printed as one line, and the run stops."""


class Shutdown(BaseException):
    """SIGTERM or SIGHUP: unwinds like KeyboardInterrupt does for Ctrl-C."""


def _raise_shutdown(signum: int, frame: FrameType | None) -> None:
    raise Shutdown(signal.Signals(signum).name)


# -- configuration -----------------------------------------------------------------------------


class Sources:
    """Where each setting comes from: the environment first, then `.env`, as the API reads them."""

    def __init__(self, environment: Mapping[str, str], dotenv: Mapping[str, str | None]) -> None:
        # Settings are case-insensitive (pydantic-settings), so compare names upper-cased.
        self._environment = {name.upper(): value for name, value in environment.items() if value}
        self._dotenv = {name.upper(): value for name, value in dotenv.items() if value}

    def first(self, names: tuple[str, ...]) -> str | None:
        """'NAME from the environment' / 'NAME from .env' for the first of `names` set, or None."""
        for origin, values in (("the environment", self._environment), (".env", self._dotenv)):
            for name in names:
                if name in values:
                    return f"{name} from {origin}"
        return None

    def is_set(self, name: str) -> bool:
        return name in self._environment or name in self._dotenv

    def value(self, name: str) -> str | None:
        return self._environment.get(name) or self._dotenv.get(name)


def read_sources() -> Sources:
    # The API reads `.env` from its working directory, which is ours; so must this.
    return Sources(os.environ, dotenv_values(".env") if Path(".env").is_file() else {})


# -- the run -----------------------------------------------------------------------------------


class LocalRun:
    """One `make run`: what it started, and how to stop all of it."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.record = RunRecord(supervisor_pid=os.getpid())
        self.api: subprocess.Popen[bytes] | None = None
        self.worker: subprocess.Popen[bytes] | None = None
        self.emulator: subprocess.Popen[bytes] | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.api_port = _port_setting("PORT", 8000)
        self.api_host = os.environ.get("HOST", "127.0.0.1")
        self.emulator_port = _port_setting("LOCAL_COGNITO_PORT", 9229)
        self.db_port = _port_setting("LOCAL_DB_PORT", 54329)

    def save(self) -> None:
        write_record(self.directory, self.record)

    # -- leftovers and ports -------------------------------------------------------------------

    def clear_leftovers(self, embedded_db: bool, local_cognito: bool) -> None:
        """Stop the API and emulator an earlier, killed run left; say so in one line."""
        earlier = read_record(self.directory)
        done: list[str] = []
        if earlier is not None and earlier.api is not None:
            api = earlier.api
            if is_ours(api.pid, self.directory, *api_arguments(api.port)):
                stop_pid(api.pid, API_STOP_SECONDS)
                done.append(f"stopped its API (pid {api.pid})")
        if earlier is not None and earlier.worker is not None:
            worker = earlier.worker
            if is_ours(worker.pid, self.directory, *worker_arguments()):
                stop_pid(worker.pid, API_STOP_SECONDS)
                done.append(f"stopped its worker (pid {worker.pid})")
        if earlier is not None and earlier.emulator is not None:
            emulator = earlier.emulator
            if is_ours(emulator.pid, self.directory, *emulator_arguments(emulator.port)):
                stop_pid(emulator.pid, EMULATOR_STOP_SECONDS)
                done.append(f"stopped its Cognito emulator (pid {emulator.pid})")
        server = EmbeddedPostgres(self.directory / "postgres", port=self.db_port)
        if server.is_running():
            if embedded_db:
                done.append(f"reusing its PostgreSQL on 127.0.0.1:{server.port}")
            else:
                port = server.port
                server.stop()
                done.append(f"stopped its embedded PostgreSQL (port {port})")
        remove_record(self.directory)
        if done:
            print(f"an earlier make run was not shut down: {', '.join(done)}", flush=True)
        self._check_port(self.api_port, "PORT")
        if local_cognito:
            self._check_port(self.emulator_port, "LOCAL_COGNITO_PORT")
        if embedded_db and not server.is_running():
            self._check_port(self.db_port, "LOCAL_DB_PORT")

    @staticmethod
    def _check_port(port: int, setting: str) -> None:
        if not port_is_free(port):
            raise RunError(
                f"port {port} ({setting}) is taken by a process make run did not start "
                f"(`ss -ltnp` or `lsof -i :{port}` names it); stop it or set {setting} "
                "to a free port"
            )

    # -- the parts -----------------------------------------------------------------------------

    def start_embedded_database(self, why: str) -> None:
        data_dir = self.directory / "postgres"
        server = EmbeddedPostgres(data_dir, port=self.db_port)
        self.record.postgres_data_dir = str(data_dir)
        self.save()  # before starting: a kill during the start must still find it
        self.postgres = server
        try:
            server.start()
            server.ensure_database(LOCAL_DATABASE)
        except PostgresError as error:
            raise RunError(
                f"the embedded PostgreSQL did not start: {_cause(error)} "
                f"(log: {shown(server.log_file)})"
            ) from None
        os.environ.update(
            DB_HOST="127.0.0.1",
            DB_PORT=str(server.port),
            DB_NAME=LOCAL_DATABASE,
            DB_USER="postgres",
            DB_PASSWORD="postgres",  # trust auth locally; the setting is still required
        )
        print(
            f"database: embedded PostgreSQL on 127.0.0.1:{server.port}, data in "
            f"{shown(data_dir)} ({why})",
            flush=True,
        )

    def check_configured_database(self, source: str) -> None:
        try:
            settings = load_database_settings()
            credentials = fetch_database_credentials(settings)
        except ConfigError as error:
            raise RunError(f"database settings ({source}): {error}") from None
        where = f"{credentials.name} on {credentials.host}:{credentials.port}"
        try:
            asyncio.run(_can_connect(credentials.url().render_as_string(hide_password=False)))
        except (OSError, TimeoutError, asyncpg.PostgresError) as error:
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise RunError(
                f"cannot connect to the database {where} ({source}): {reason}; fix the DB_* "
                "settings, or remove them to use the embedded PostgreSQL"
            ) from None
        print(f"database: {where} ({source})", flush=True)

    def launch_local_cognito(self) -> None:
        """Start the emulator's process; `start_local_cognito` waits for it and bootstraps it.

        Launched first, so that its start-up (a second or two of imports) overlaps the
        database's start and the migrations instead of following them.
        """
        self.emulator = start_emulator(self.emulator_port, self.directory)
        self.record.emulator = ChildRecord(self.emulator.pid, self.emulator_port)
        self.save()

    def start_local_cognito(self, why: str) -> None:
        if self.emulator is None:
            self.launch_local_cognito()
        assert self.emulator is not None
        try:
            # Only now, with the child recorded: a Ctrl-C during the wait must find it.
            wait_for_emulator(self.emulator, self.emulator_port, self.directory)
            endpoint = f"http://127.0.0.1:{self.emulator_port}"
            pool, users = bootstrap(endpoint, os.environ["AWS_REGION"])
        except EmulatorError as error:
            raise RunError(str(error)) from None
        self.record.pool = pool
        self.save()
        print(
            f"Cognito: local emulator on {endpoint}, pool {pool.pool_id}, {users} user(s) "
            f"provisioned ({why})",
            flush=True,
        )

    def start_api(self) -> subprocess.Popen[bytes]:
        arguments = ["--host", self.api_host, "--port", str(self.api_port)]
        self.api = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "app.main:app",
                *arguments,
                "--no-access-log",
                "--timeout-graceful-shutdown",
                str(API_STOP_SECONDS // 2),
            ],
            stdin=subprocess.DEVNULL,
            env={**os.environ, OWNER_VARIABLE: str(self.directory)},
            # Its own session, like the emulator's: Ctrl-C reaches only this supervisor,
            # which then stops the children in order.
            start_new_session=True,
        )
        self.record.api = ChildRecord(self.api.pid, self.api_port)
        self.save()
        return self.api

    def start_worker(self) -> None:
        """The background work (`python -m app.worker`), as production runs it beside the API."""
        self.worker = subprocess.Popen(
            [sys.executable, "-m", *worker_arguments()],
            stdin=subprocess.DEVNULL,
            env={
                **os.environ,
                OWNER_VARIABLE: str(self.directory),
                "WORKER_HEARTBEAT_FILE": str(self.directory / "worker.heartbeat"),
            },
            start_new_session=True,
        )
        self.record.worker = ChildRecord(self.worker.pid, 0)
        self.save()

    def supervise(self) -> int:
        """Wait until the API, the worker or the emulator exits; that ends the run (status 1)."""
        children = {
            "the API": self.api,
            "the worker": self.worker,
            "the local Cognito emulator": self.emulator,
        }
        while True:
            for name, child in children.items():
                if child is not None and child.poll() is not None:
                    code = child.returncode
                    how = f"on {signal.Signals(-code).name}" if code < 0 else f"with status {code}"
                    print(
                        f"make run: {name} exited {how}; stopping the rest",
                        file=sys.stderr,
                        flush=True,
                    )
                    return 1
            time.sleep(0.2)

    def stop(self) -> None:
        stopped: list[str] = []
        if self.api is not None and self.api.poll() is None:
            stop_child(self.api, API_STOP_SECONDS)
            stopped.append("the API")
        if self.worker is not None and self.worker.poll() is None:
            stop_child(self.worker, API_STOP_SECONDS)
            stopped.append("the worker")
        if self.emulator is not None and self.emulator.poll() is None:
            stop_child(self.emulator, EMULATOR_STOP_SECONDS)
            stopped.append("the Cognito emulator")
        if self.postgres is not None and self.postgres.is_running():
            try:
                self.postgres.stop()
            except PostgresError as error:
                print(f"make run: {_cause(error)}", file=sys.stderr, flush=True)
            else:
                stopped.append(f"the embedded PostgreSQL (data kept in {shown(self.directory)})")
        remove_record(self.directory)
        if stopped:
            print(f"make run: stopped {', '.join(stopped)}", flush=True)


def _cause(error: PostgresError) -> str:
    """The line of a server command's output that says what went wrong."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # pg_ctl and initdb end with their verdict; the log tail after it is ours, from pg_ctl start.
    for line in lines:
        if "error:" in line or "FATAL:" in line:
            return line
    return lines[-1] if lines else type(error).__name__


def _port_setting(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise RunError(f"{name} must be a port number (1-65535)")
    return int(value)


async def _can_connect(url: str) -> None:
    # asyncpg's own URL form: the SQLAlchemy driver suffix is not part of it.
    connection = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"), timeout=5)
    await connection.close()


def migrate() -> None:
    try:
        command.upgrade(Config(str(ROOT / "alembic.ini")), "head")
    except DBAPIError as error:
        # Rights or server problems are the configuration's; a broken migration (any other
        # exception) is a bug and keeps its traceback.
        reason = str(error.orig).splitlines()[0] if error.orig else type(error).__name__
        raise RunError(f"migrating the database failed: {reason}") from None


def banner(run: LocalRun) -> str:
    url = f"http://{run.api_host}:{run.api_port}"
    lines = [f"API on {url}  (Swagger UI: {url}/docs, metrics: {url}/metrics)"]
    if run.record.pool is not None:
        try:
            token = token_for(run.record.pool, LOCAL_ADMIN_EMAIL)
        except EmulatorError as error:
            raise RunError(str(error)) from None
        lines += [
            f"  sign in as:    {LOCAL_ADMIN_EMAIL} / {LOCAL_PASSWORD}",
            f"  access token:  {token}",
            "  Swagger UI:    Authorize, paste the token",
            "  other users:   every user in the database at start has the same password; for a",
            "                 user created since, or a new token: make token EMAIL=...",
        ]
    else:
        lines.append("  a token:       .venv/bin/python -m app.cli.token --email ... (your pool)")
    stays = f" (data stays in {shown(run.postgres.data_dir)})" if run.postgres else ""
    lines.append(f"stop everything: Ctrl-C here, or make stop{stays}")
    return "\n".join(lines)


def _start(run: LocalRun) -> int:
    sources = read_sources()
    for name, value in LOCAL_DEFAULTS.items():
        # Only where neither names it: a default in the environment would hide `.env`'s value.
        if not sources.is_set(name):
            os.environ[name] = value
    database_source = sources.first(DATABASE_SETTINGS)
    cognito_source = sources.first(COGNITO_SETTINGS)
    _check_settings(embedded_db=database_source is None, local_cognito=cognito_source is None)
    run.clear_leftovers(database_source is None, cognito_source is None)
    run.save()
    if cognito_source is None:
        run.launch_local_cognito()
    if database_source is None:
        run.start_embedded_database(
            f"none of {', '.join(DATABASE_SETTINGS)} is set in the environment or .env"
        )
    else:
        run.check_configured_database(database_source)
    migrate()
    if cognito_source is None:
        # Seeds an admin in the emulator and the database, so it runs after the migrations.
        run.start_local_cognito(
            f"none of {', '.join(COGNITO_SETTINGS)} is set in the environment or .env"
        )
    else:
        pool = sources.value("COGNITO_USER_POOL_ID")
        print(f"Cognito: user pool {pool} ({cognito_source})", flush=True)
    run.start_worker()
    api = run.start_api()
    # The banner comes last, below uvicorn's start-up lines, where it is seen.
    if wait_for_port(run.api_port, API_START_SECONDS, api):
        print(banner(run), flush=True)
    return run.supervise()


def _check_settings(*, embedded_db: bool, local_cognito: bool) -> None:
    """Refuse a bad configuration before anything starts, with the same message as the API's."""
    # Stand-ins for what the embedded parts will provide, so that only the user's settings
    # are judged.
    provided: dict[str, str] = {}
    if embedded_db:
        provided.update(
            db_host="127.0.0.1", db_port="5432", db_name="-", db_user="-", db_password="-"
        )
    if local_cognito:
        provided.update(cognito_user_pool_id="-", cognito_app_client_id="-")
    try:
        load_settings(**provided)
    except ConfigError as error:
        raise RunError(f"configuration error: {error}") from None


def main() -> int:
    handlers: dict[int, Callable[[int, FrameType | None], None]] = {
        # Explicitly: Python leaves SIGINT ignored when it starts ignored (a background job).
        signal.SIGINT: signal.default_int_handler,
        signal.SIGTERM: _raise_shutdown,
        signal.SIGHUP: _raise_shutdown,
    }
    for signum, handler in handlers.items():
        signal.signal(signum, handler)
    directory = local_dir()
    lock = RunLock(directory)
    if not lock.acquire():
        holder = lock.holder()
        pid = f" (pid {holder})" if holder else ""
        print(
            f"make run: already running{pid} for {shown(directory)}; make stop stops it",
            file=sys.stderr,
        )
        return 1
    run: LocalRun | None = None
    status = 0
    try:
        run = LocalRun(directory)
        status = _start(run)
    except RunError as error:
        print(f"make run: {error}", file=sys.stderr, flush=True)
        status = 1
    except (KeyboardInterrupt, Shutdown):
        status = 0
    finally:
        # A second Ctrl-C must not cut the clean-up short; every wait in it is bounded.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        if run is not None:
            run.stop()
        lock.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
