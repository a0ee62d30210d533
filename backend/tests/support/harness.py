"""The app under test, started one way for every test directory.

`create_app(make_settings(database_url, ...))` on a migrated PostgreSQL database of the test's
(`tests/support/database.py`), its lifespan run here as a server runs it, the worker process's
background work beside it (`app.worker.background_work`, as a host runs both), the users'
Cognito calls on the moto emulator (`using_cognito`) and tokens signed by the key the test JWKS
server serves (`jwt_tokens.SIGNING_KEY_ID`; the `jwks_server` and `moto_cognito` fixtures of
`tests/conftest.py`).

    served / serve       the app over ASGI in this event loop (API, service, docs tests)
    live_app             the same, with the client and lifespan state at hand (hardening tests)
    app_process          the app as a uvicorn process on loopback, over real HTTP (soak)
    add_user, bearer     a committed user row and a token for it (`new_user`, `token_for`)

The app keeps production's configuration (pool, caches, read paths, timeouts); a test that
changes one says why where it does.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import httpx
from fastapi import FastAPI
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.deps import COGNITO
from app.core.config import Settings
from app.core.roles import Role
from app.main import create_app
from app.models.user import User
from app.services.cognito import CognitoUserPool
from app.services.directory_sync import DirectoryRecorder
from app.worker import background_work
from tests.support.app_env import BACKEND_DIR, app_environment
from tests.support.jwt_tokens import (
    SIGNING_KEY_ID,
    TEST_CLIENT_ID,
    TEST_REGION,
    TEST_USER_POOL_ID,
    access_token_claims,
    mint_token,
    shared_rsa_key,
)
from tests.support.net import free_port


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for a test app: only what the tests say, nothing from the environment or `.env`."""
    url = make_url(database_url)
    values: dict[str, Any] = {
        "db_host": url.host,
        "db_port": url.port or 5432,
        "db_name": url.database,
        "db_user": url.username,
        "db_password": url.password or "unused",
        "db_secret_id": None,
        "aws_region": TEST_REGION,
        "cognito_user_pool_id": TEST_USER_POOL_ID,
        "cognito_app_client_id": TEST_CLIENT_ID,
        "s3_attachments_bucket": "attachments",
        "s3_exports_bucket": "exports",
        "s3_audit_bucket": "audit",
        "s3_landing_bucket": "landing",
        "sqs_notification_queue_url": "http://localhost/notifications",
        "sqs_export_queue_url": "http://localhost/exports",
        "environment": "test",
        "cors_origins": ["https://spa.example.gov"],
        "health_timeout_seconds": 2.0,
        # The test apps name a pool that exists nowhere (tests hand their adapter on a moto
        # pool to the app after startup), so a startup check could only report that; it is
        # tested on its own against moto pools (tests/services/test_pool_check.py).
        "cognito_pool_check": False,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


# ---------------------------------------------------------------------------------------------
# The app over ASGI, in this event loop


class ServedApp:
    """Hands the lifespan state to each request, as an ASGI server does; `overrides` replace
    entries of it (a cache on a fake clock), each test saying why."""

    def __init__(
        self, app: ASGIApp, state: Mapping[str, Any], background: CognitoSwitch | None = None
    ) -> None:
        self.app = app
        self.state = state
        # The Cognito of the worker process's background work, run beside the app in tests.
        self.background = background
        self.overrides: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app({**scope, "state": {**self.state, **self.overrides}}, receive, send)


class CognitoSwitch:
    """Forwards every use to `target`: the Cognito adapter the background work beside a test
    app is given, so that `using_cognito` points it at a test's pool (whatever its handlers)."""

    def __init__(self, target: CognitoUserPool) -> None:
        self.target = target

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


@asynccontextmanager
async def background_beside(state: Mapping[str, Any]) -> AsyncIterator[CognitoSwitch]:
    """The worker process's background work beside an app (as a host runs both), on the app's
    Cognito until `using_cognito` says otherwise; yields what `using_cognito` switches."""
    switch = CognitoSwitch(state["cognito"])
    async with background_work(state["settings"], cognito=cast(CognitoUserPool, switch)):
        yield switch


@asynccontextmanager
async def served(
    app: FastAPI, *, background: bool = True, **overrides: Any
) -> AsyncIterator[ServedApp]:
    """Run the app's lifespan, and the worker process's background work beside it (as a host
    runs both) unless `background` is false (a test of the web process alone); yield the app's
    ASGI entry point, with these state overrides."""
    async with app.router.lifespan_context(app) as lifespan_state:
        state: Mapping[str, Any] = lifespan_state or {}
        work = background_beside(state) if background else nullcontext()
        async with work as switch:
            asgi = ServedApp(app, state, switch)
            asgi.overrides.update(overrides)
            yield asgi


def client_of(
    asgi: ServedApp, before_each_request: Callable[[], Awaitable[None]] | None = None
) -> httpx.AsyncClient:
    hooks: dict[str, list[Callable[..., Any]]] = {}
    if before_each_request is not None:
        hooks["request"] = [lambda _: before_each_request()]
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=asgi), base_url="http://testserver", event_hooks=hooks
    )


@asynccontextmanager
async def serve(app: FastAPI, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Run the app's lifespan and yield a client that talks to it over ASGI."""
    async with served(app, **overrides) as asgi, client_of(asgi) as client:
        yield client


@dataclass
class LiveApp:
    """An app after startup: its client (ASGI, in this event loop) and its lifespan state."""

    app: FastAPI
    client: httpx.AsyncClient
    state: Mapping[str, Any]

    @property
    def engine(self) -> AsyncEngine:
        engine: AsyncEngine = self.state["engine"]
        return engine

    def checked_out(self) -> int:
        """Connections the app's pool has handed out and not got back."""
        return int(self.engine.pool.checkedout())  # type: ignore[attr-defined]


@asynccontextmanager
async def live_app(
    settings: Settings,
    *,
    cognito: CognitoUserPool | None = None,
    customize: Callable[[FastAPI], None] | None = None,
    background: bool = True,
) -> AsyncIterator[LiveApp]:
    """`create_app(settings)` served (see `served`), with a client; its Cognito calls go to
    `cognito` when one is given."""
    app = create_app(settings)
    if customize is not None:
        customize(app)
    async with served(app, background=background) as asgi, client_of(asgi) as client:
        pointed = (
            nullcontext()
            if cognito is None
            else using_cognito(app, asgi.state, cognito, asgi.background)
        )
        with pointed:
            yield LiveApp(app, client, asgi.state)


# ---------------------------------------------------------------------------------------------
# Cognito on moto: the `moto_cognito` fixture's server and pool, an adapter of the test's own


@contextmanager
def using_cognito(
    app: FastAPI,
    state: Mapping[str, Any],
    adapter: CognitoUserPool,
    background: CognitoSwitch | None = None,
) -> Iterator[None]:
    """Point the app at `adapter`: its requests (the dependency) and the background work
    beside it (`background_beside`'s switch)."""
    original = background.target if background is not None else None
    app.dependency_overrides[COGNITO] = lambda: adapter
    if background is not None:
        background.target = adapter
    try:
        yield
    finally:
        app.dependency_overrides.pop(COGNITO, None)
        if background is not None and original is not None:
            background.target = original


async def directory_caught_up(state: Mapping[str, Any], within: float = 10.0) -> None:
    """Wait until the background work has carried out every pending directory entry."""
    worker: DirectoryRecorder = state["directory_sync"]
    async with asyncio.timeout(within):
        while await worker.pending():  # noqa: ASYNC110 - the outbox is a table, not an event
            await asyncio.sleep(0.02)


# ---------------------------------------------------------------------------------------------
# Users and their tokens


class UserFactory(Protocol):
    """The `make_user` fixture of the API tests: a user row committed in the test's session."""

    async def __call__(
        self,
        role: Role = Role.ADMIN,
        *,
        province: str | None = None,
        is_active: bool = True,
        email: str | None = None,
        full_name: str | None = None,
    ) -> User: ...


def new_user(
    role: Role = Role.ADMIN,
    *,
    province: str | None = None,
    is_active: bool = True,
    email: str | None = None,
    full_name: str | None = None,
    sub: str | None = None,
) -> User:
    """A user row, not yet added anywhere (no Cognito side unless `sub` names one); an OFFICER
    gets a province unless the test gives one."""
    unique = uuid.uuid4().hex[:12]
    if role is Role.OFFICER and province is None:
        province = "Chiang Mai"
    return User(
        cognito_user_id=sub or str(uuid.uuid4()),
        email=email or f"{role.lower()}-{unique}@example.gov",
        full_name=full_name or f"Test {role.title()} {unique}",
        role=role,
        responsible_province=province,
        is_active=is_active,
    )


async def add_user(
    database_url: str,
    role: Role = Role.ADMIN,
    *,
    email: str | None = None,
    sub: str | None = None,
    province: str | None = None,
) -> User:
    """A user row committed on its own connection (see `new_user`)."""
    user = new_user(role, email=email, sub=sub, province=province)
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            session.add(user)
            await session.commit()
    finally:
        await engine.dispose()
    return user


async def wait_until(predicate: Callable[[], Any], *, within: float, every: float = 0.1) -> None:
    """Until `predicate()` (or what it returns, awaited) is true; AssertionError past `within`."""
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(every)


def uncached_user_list() -> str:
    """A user-list path whose read always reaches the database: a search no earlier request
    made, so neither its page nor its count is cached (`UserListCache`)."""
    return f"/api/v1/users?q={uuid.uuid4().hex}"


def token_for(user: User, **claims: object) -> str:
    """A valid access token for `user`, signed by the key the test JWKS serves."""
    return mint_token(
        access_token_claims({"sub": user.cognito_user_id, "username": user.email, **claims}),
        shared_rsa_key(SIGNING_KEY_ID),
    )


def auth_headers(user: User, **claims: object) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(user, **claims)}"}


def bearer(sub: str, *, kid: str = SIGNING_KEY_ID, **claims: object) -> dict[str, str]:
    """Authorization header with a fresh token (its own jti, so no verified-claims cache hit)."""
    token = mint_token(
        access_token_claims({"sub": sub, "jti": str(uuid.uuid4()), **claims}),
        shared_rsa_key(kid),
    )
    return {"Authorization": f"Bearer {token}"}


# ---------------------------------------------------------------------------------------------
# The app as a process of its own, over real HTTP


@dataclass
class AppProcess:
    """`uvicorn app.main:app` on loopback: its URL, its process and its log."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_bytes(self) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def wait_until_healthy(self, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while True:
            assert self.process.poll() is None, self.log.read_text()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)


@contextmanager
def app_process(database_url: str, jwks_url: str, **environment: str) -> Iterator[AppProcess]:
    """The app served by uvicorn in a process of its own, configured by its environment
    (`app_environment` plus `environment`), from a directory where no `.env` lies; stopped
    with SIGTERM as a host stops it."""
    port = free_port()
    env = app_environment(database_url, jwks_url, PYTHONPATH=str(BACKEND_DIR), **environment)
    log = Path(tempfile.mkdtemp(prefix="onesys-app-")) / "server.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1"),
                *("--port", str(port), "--timeout-keep-alive", "15", "--no-access-log"),
            ],
            cwd=log.parent,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    running = AppProcess(f"http://127.0.0.1:{port}", process, log)
    try:
        running.wait_until_healthy()
        yield running
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
