"""The app under test: built by `create_app`, its lifespan run, spoken to over ASGI with httpx."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.config import Settings
from app.core.roles import Role
from app.main import create_app
from app.models.user import User
from app.services.cognito import CognitoUserPool, get_cognito
from app.services.reference import ProvincesCache
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
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


class _WithLifespanState:
    """Hands the lifespan state to each request, as an ASGI server does; `overrides` replace
    entries of it (a test's sessionmaker, a cache on a fake clock)."""

    def __init__(self, app: ASGIApp, state: Mapping[str, Any]) -> None:
        self.app = app
        self.state = state
        self.overrides: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app({**scope, "state": {**self.state, **self.overrides}}, receive, send)


def in_transaction_of(db_session: AsyncSession) -> dict[str, Any]:
    """State overrides that run a request's database work inside the test's transaction.

    Every session the app opens joins the test's connection through savepoints, so it sees what
    the test wrote and its commits stay inside the transaction the test rolls back. That
    transaction never commits, so PostgreSQL never notifies its changes: the user cache, the
    user counts and the provinces cache, which rely on those notifications, are switched off.
    """
    assert isinstance(db_session.bind, AsyncConnection)
    sessions = async_sessionmaker(
        bind=db_session.bind,
        join_transaction_mode="create_savepoint",
        expire_on_commit=False,
        autoflush=False,
    )
    return {
        "sessionmaker": sessions,
        "read_sessionmaker": sessions,
        "user_cache": None,
        "user_counts": None,
        "provinces_cache": ProvincesCache(listening=lambda: False),
    }


@asynccontextmanager
async def served(app: FastAPI, **overrides: Any) -> AsyncIterator[_WithLifespanState]:
    """Run the app's lifespan; yield its ASGI entry point, with these state overrides."""
    async with app.router.lifespan_context(app) as state:
        asgi = _WithLifespanState(app, state or {})
        asgi.overrides.update(overrides)
        yield asgi


def client_of(asgi: _WithLifespanState) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=asgi), base_url="http://testserver")


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
def app_settings(database_url: str, jwks_server: JWKSServer) -> Settings:
    return make_settings(database_url, cognito_jwks_url=jwks_server.url)


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
    """Insert a user row (no Cognito side) in the test's transaction."""

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
        # A savepoint commit: the row survives a rollback by the request under test, and the
        # test's outer transaction still discards it afterwards.
        await db_session.commit()
        return user

    return create


@pytest.fixture(scope="session")
def app(app_settings: Settings) -> FastAPI:
    return create_app(app_settings)


@pytest.fixture(scope="session")
async def served_app(app: FastAPI) -> AsyncIterator[_WithLifespanState]:
    async with served(app) as asgi:
        yield asgi


@pytest.fixture
async def client(
    served_app: _WithLifespanState, db_session: AsyncSession
) -> AsyncIterator[httpx.AsyncClient]:
    """A client whose requests run inside the test's transaction, rolled back afterwards."""
    served_app.overrides = in_transaction_of(db_session)
    try:
        async with client_of(served_app) as client:
            yield client
    finally:
        served_app.overrides = {}


# ---------------------------------------------------------------------------------------------
# Cognito on moto (user management tests)
#
#   moto_cognito   one moto server + user pool (groups for every role) for the test session
#   cognito        the adapter the shared `app` uses in this test: its own client on that pool
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def moto_cognito() -> Iterator[MotoCognito]:
    with running_moto_cognito() as running:
        yield running


@pytest.fixture
def cognito(app: FastAPI, moto_cognito: MotoCognito) -> Iterator[CognitoUserPool]:
    adapter = moto_cognito.adapter()
    app.dependency_overrides[get_cognito] = lambda: adapter
    try:
        yield adapter
    finally:
        app.dependency_overrides.pop(get_cognito, None)
