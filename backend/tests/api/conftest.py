"""Fixtures of the API tests: one app for the session (`tests/support/harness.py` starts it) on
a database of its own, a client of it, and users committed before each request.

    app, served_app   the session-wide app, served with its background work
    db_session        the app's own kind of session; the database is restored after each test
    client            a client of `served_app` that commits `db_session` before each request
    make_user         a committed user row (`UserFactory`); `admin_headers` an ADMIN's headers
    cognito           the adapter the app uses in this test: its own client on `moto_cognito`
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, text
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.db import Sessionmaker
from app.core.roles import Role
from app.main import create_app
from app.models.outbox import OutboxEntry
from app.models.user import User
from app.models.worker import WorkerHeartbeat
from app.services.cognito import CognitoUserPool
from app.services.worker_status import TurnRecorder
from devtools.postgres import PsqlAdmin
from tests.support.database import cloned_database
from tests.support.harness import (
    ServedApp,
    UserFactory,
    auth_headers,
    client_of,
    make_settings,
    new_user,
    served,
    using_cognito,
)
from tests.support.jwt_tokens import JWKSServer
from tests.support.moto_cognito import MotoCognito


@pytest.fixture(scope="session")
async def api_database_url(pg: PsqlAdmin, migrated_template: str) -> AsyncIterator[str]:
    """The database of the session-wide app: its own, since its tests commit for real."""
    async with cloned_database(pg, migrated_template, "api") as url:
        yield url


@pytest.fixture(scope="session")
def app_settings(api_database_url: str, jwks_server: JWKSServer) -> Settings:
    return make_settings(api_database_url, cognito_jwks_url=jwks_server.url)


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
        user = new_user(
            role, province=province, is_active=is_active, email=email, full_name=full_name
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
async def served_app(app: FastAPI) -> AsyncIterator[ServedApp]:
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
async def _seed_copy(served_app: ServedApp) -> None:
    """A copy of the seeded reference rows, to put back after each test."""
    async with served_app.state["sessionmaker"]() as session, session.begin():
        await session.execute(text(f"CREATE SCHEMA {_SEED_SCHEMA}"))
        for table in _SEEDED_TABLES:
            await session.execute(
                text(f"CREATE TABLE {_SEED_SCHEMA}.{table} AS TABLE public.{table}")
            )


async def _restore(served_app: ServedApp) -> None:
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
async def db_session(served_app: ServedApp, _seed_copy: None) -> AsyncIterator[AsyncSession]:
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
    served_app: ServedApp, db_session: AsyncSession
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the session-wide app; what the test wrote is committed before each request."""
    async with client_of(served_app, before_each_request=db_session.commit) as client:
        yield client


# ---------------------------------------------------------------------------------------------
# Cognito on moto (user management tests)
#
#   cognito        the adapter the shared `app` uses in this test: its own client on the pool of
#                  `moto_cognito` (tests/conftest.py)
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


@pytest.fixture
def cognito(
    app: FastAPI, served_app: ServedApp, moto_cognito: MotoCognito
) -> Iterator[CognitoUserPool]:
    adapter = moto_cognito.adapter()
    with using_cognito(app, served_app.state, adapter, served_app.background):
        yield adapter
