"""The app under test: built by `create_app`, its lifespan run, spoken to over ASGI with httpx."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Protocol, cast

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.deps import COGNITO
from app.core.config import Settings
from app.core.db import Sessionmaker
from app.core.roles import Role
from app.main import create_app
from app.models.outbox import OutboxEntry
from app.models.user import User
from app.models.worker import WorkerHeartbeat
from app.services.cognito import CognitoUserPool
from app.services.directory_sync import DirectoryRecorder
from app.services.worker_status import TurnRecorder
from app.worker import background_work
from devtools.postgres import PsqlAdmin
from tests.conftest import unique_database_name
from tests.support.jwt_tokens import (
    TEST_CLIENT_ID,
    TEST_REGION,
    TEST_USER_POOL_ID,
    JWKSServer,
    access_token_claims,
    mint_token,
    shared_rsa_key,
)
from tests.support.moto_cognito import MotoCognito, running_moto_cognito

SIGNING_KEY_ID = "test-signing-key-1"


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


class _WithLifespanState:
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
async def served(app: FastAPI, **overrides: Any) -> AsyncIterator[_WithLifespanState]:
    """Run the app's lifespan, and the worker process's background work beside it (as a host
    runs both); yield the app's ASGI entry point, with these state overrides."""
    async with (
        app.router.lifespan_context(app) as state,
        background_beside(state or {}) as switch,
    ):
        asgi = _WithLifespanState(app, state or {}, switch)
        asgi.overrides.update(overrides)
        yield asgi


def client_of(
    asgi: _WithLifespanState, before_each_request: Callable[[], Awaitable[None]] | None = None
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


@pytest.fixture(scope="session")
def jwks_server() -> Iterator[JWKSServer]:
    """The user pool's JWKS, served over real HTTP on loopback."""
    with JWKSServer(shared_rsa_key(SIGNING_KEY_ID)) as server:
        yield server


@pytest.fixture(scope="session")
async def api_database_url(pg: PsqlAdmin, migrated_template: str) -> AsyncIterator[str]:
    """The database of the session-wide app: its own, since its tests commit for real."""
    name = unique_database_name("api")
    await asyncio.to_thread(pg.create_database, name, migrated_template)
    try:
        yield pg.url(name)
    finally:
        await asyncio.to_thread(pg.drop_database, name)


@pytest.fixture(scope="session")
def app_settings(api_database_url: str, jwks_server: JWKSServer) -> Settings:
    return make_settings(api_database_url, cognito_jwks_url=jwks_server.url)


def token_for(user: User, **claims: object) -> str:
    """A valid access token for `user`, signed by the key the test JWKS serves."""
    return mint_token(
        access_token_claims({"sub": user.cognito_user_id, "username": user.email, **claims}),
        shared_rsa_key(SIGNING_KEY_ID),
    )


def auth_headers(user: User, **claims: object) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(user, **claims)}"}


class UserFactory(Protocol):
    async def __call__(
        self,
        role: Role = Role.ADMIN,
        *,
        province: str | None = None,
        is_active: bool = True,
        email: str | None = None,
        full_name: str | None = None,
    ) -> User: ...


@pytest.fixture
def make_user(db_session: AsyncSession) -> UserFactory:
    """Insert and commit a user row (no Cognito side)."""

    async def create(
        role: Role = Role.ADMIN,
        *,
        province: str | None = None,
        is_active: bool = True,
        email: str | None = None,
        full_name: str | None = None,
    ) -> User:
        unique = uuid.uuid4().hex[:12]
        if role is Role.OFFICER and province is None:
            province = "Chiang Mai"
        user = User(
            cognito_user_id=str(uuid.uuid4()),
            email=email or f"{role.lower()}-{unique}@example.gov",
            full_name=full_name or f"Test {role.title()} {unique}",
            role=role,
            responsible_province=province,
            is_active=is_active,
        )
        db_session.add(user)
        await db_session.commit()
        return user

    return create


@pytest.fixture
async def admin_headers(make_user: UserFactory) -> dict[str, str]:
    """The headers of a new active ADMIN's request."""
    return auth_headers(await make_user(Role.ADMIN))


@pytest.fixture(scope="session")
def app(app_settings: Settings) -> FastAPI:
    return create_app(app_settings)


@pytest.fixture(scope="session")
async def served_app(app: FastAPI) -> AsyncIterator[_WithLifespanState]:
    async with served(app) as asgi:
        yield asgi


# Everything a test may write, emptied after each test: cases first (they reference users and
# the reference tables).
_WRITABLE_TABLES = (
    "case_history, case_attachments, notifications, cases, case_sequences, summary_cases_daily"
)
# Reference data is seeded by the migrations; tests that edit it get the seed back afterwards.
_SEEDED_TABLES = (
    "ref_service_types",
    "ref_complaint_types",
    "ref_handlers",
    "ref_closure_reasons",
    "sla_config",
)
_SEED_SCHEMA = "test_seed"


@pytest.fixture(scope="session")
async def _seed_copy(served_app: _WithLifespanState) -> None:
    """A copy of the seeded reference rows, to put back after each test."""
    async with served_app.state["sessionmaker"]() as session, session.begin():
        await session.execute(text(f"CREATE SCHEMA {_SEED_SCHEMA}"))
        for table in _SEEDED_TABLES:
            await session.execute(
                text(f"CREATE TABLE {_SEED_SCHEMA}.{table} AS TABLE public.{table}")
            )


async def _restore(served_app: _WithLifespanState) -> None:
    """Back to the migrated state: no users or cases, the seeded reference data, cold caches."""
    async with served_app.state["sessionmaker"]() as session, session.begin():
        await session.execute(text(f"TRUNCATE {_WRITABLE_TABLES}, {', '.join(_SEEDED_TABLES)}"))
        # Through the ORM, so the app's sessions evict every cached user at this commit.
        await session.execute(delete(User))
        for table in _SEEDED_TABLES:
            await session.execute(
                text(
                    f"INSERT INTO public.{table} OVERRIDING SYSTEM VALUE "
                    f"SELECT * FROM {_SEED_SCHEMA}.{table}"
                )
            )
    served_app.state["reference_cache"].clear()


@pytest.fixture
async def db_session(
    served_app: _WithLifespanState, _seed_copy: None
) -> AsyncIterator[AsyncSession]:
    """A session of the app's own kind on its database, for what a test sets up and checks.

    The API tests run the app as production does (its pool, its autocommit reads, its caches),
    so what a test writes must really be committed: `client` commits this session before each
    request. Its sessions are the app's own, so a commit evicts the users it wrote from the
    app's cache at once, as a write through the same worker would. After the test, the database
    goes back to its migrated state and the caches are emptied.
    """
    session: AsyncSession = served_app.state["sessionmaker"]()
    try:
        yield session
    finally:
        await session.close()
        await _restore(served_app)


@pytest.fixture
async def client(
    served_app: _WithLifespanState, db_session: AsyncSession
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the session-wide app; what the test wrote is committed before each request."""
    async with client_of(served_app, before_each_request=db_session.commit) as client:
        yield client


# ---------------------------------------------------------------------------------------------
# Cognito on moto (user management tests)
#
#   moto_cognito   one moto server + user pool (groups for every role) for the test session
#   cognito        the adapter the shared `app` uses in this test: its own client on that pool
# ---------------------------------------------------------------------------------------------


@pytest.fixture
async def waiting_work(db_session: AsyncSession, served_app: Any) -> AsyncIterator[str]:
    """Three outbox entries of a kind no handler takes (they wait), and a worker's turn."""
    kind = f"metrics-test-{uuid.uuid4().hex[:8]}"
    db_session.add_all([OutboxEntry(kind=kind, key=str(n), payload={}) for n in range(3)])
    await db_session.commit()
    sessions: Sessionmaker = served_app.state["sessionmaker"]
    recorder = TurnRecorder(sessions, worker_id=f"test-{kind}")
    await recorder.record()
    yield kind
    await db_session.execute(delete(OutboxEntry).where(OutboxEntry.kind == kind))
    await db_session.execute(
        delete(WorkerHeartbeat).where(WorkerHeartbeat.worker == recorder.worker_id)
    )
    await db_session.commit()


@pytest.fixture(scope="session")
def moto_cognito() -> Iterator[MotoCognito]:
    with running_moto_cognito() as running:
        yield running


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


@pytest.fixture
def cognito(
    app: FastAPI, served_app: _WithLifespanState, moto_cognito: MotoCognito
) -> Iterator[CognitoUserPool]:
    adapter = moto_cognito.adapter()
    with using_cognito(app, served_app.state, adapter, served_app.background):
        yield adapter
