"""Fixtures every test directory may take: the database (below) and the app's dependencies.

What they build comes from `tests/support/` (`database.py`, `harness.py`), which tests import
like any module; a conftest is never imported.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from devtools.postgres import EmbeddedPostgres, ExistingPostgres, PsqlAdmin
from tests.support.database import cloned_database, run_alembic, unique_database_name
from tests.support.jwt_tokens import SIGNING_KEY_ID, JWKSServer, shared_rsa_key
from tests.support.moto_cognito import MotoCognito, running_moto_cognito


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `long` first, the rest in their usual order.

    Under `make test`'s parallel workers the longest tests then start at once, beside the short
    ones, instead of one of them holding the run open at the end.
    """
    items.sort(key=lambda item: item.get_closest_marker("long") is None)


# ---------------------------------------------------------------------------------------------
# Database
#
# One PostgreSQL server per test session: embedded by default, or the server named by
# TEST_DATABASE_URL (any database on it; the user needs CREATEDB). The migrations build a
# template database once; test databases are cloned from it, which is much faster than
# migrating each one.
#
#   db_session           most tests: a session in a transaction rolled back after the test
#   fresh_database_url   tests needing real commits seen by other connections or processes
#   fresh_engine         an engine on such a database
#   empty_database_url   migration tests
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg() -> Iterator[PsqlAdmin]:
    """The PostgreSQL server of this test session; `url(db)`, `create_database`, ..."""
    external_url = os.environ.get("TEST_DATABASE_URL")
    if external_url:
        yield ExistingPostgres(external_url)
        return
    data_dir = Path(tempfile.mkdtemp(prefix="onesys-test-pg-"))
    server = EmbeddedPostgres(data_dir, durable=False)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
async def migrated_template(pg: PsqlAdmin) -> AsyncIterator[str]:
    """Name of a database migrated to head; only ever cloned, never connected to by tests."""
    name = unique_database_name("template")
    await asyncio.to_thread(pg.create_database, name)
    try:
        await run_alembic(pg.url(name), "upgrade", "head")
        yield name
    finally:
        await asyncio.to_thread(pg.drop_database, name)


@pytest.fixture(scope="session")
async def database_url(pg: PsqlAdmin, migrated_template: str) -> AsyncIterator[str]:
    """URL of the migrated database that `db_session` tests share (each in its own transaction)."""
    async with cloned_database(pg, migrated_template, "shared") as url:
        yield url


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def db_session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session whose work is rolled back after the test.

    The outer transaction belongs to the fixture; the code under test gets savepoints, so it
    may commit and roll back as in production without anything reaching the shared database.
    """
    async with engine.connect() as connection:
        transaction = await connection.begin()
        session = AsyncSession(
            bind=connection,
            join_transaction_mode="create_savepoint",
            expire_on_commit=False,
        )
        try:
            yield session
        finally:
            await session.close()
            await transaction.rollback()


@pytest.fixture
async def fresh_database_url(pg: PsqlAdmin, migrated_template: str) -> AsyncIterator[str]:
    """URL of a migrated database of this test's own, dropped afterwards."""
    async with cloned_database(pg, migrated_template, "fresh") as url:
        yield url


@pytest.fixture
async def fresh_engine(fresh_database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a migrated database of this test's own (`fresh_database_url`)."""
    engine = create_async_engine(fresh_database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def empty_database_url(pg: PsqlAdmin) -> AsyncIterator[str]:
    """URL of an empty database (no tables) of this test's own, dropped afterwards."""
    async with cloned_database(pg, None, "empty") as url:
        yield url


# ---------------------------------------------------------------------------------------------
# The app's dependencies (`tests/support/harness.py` starts the app on them)
#
#   jwks_server    the user pool's JWKS over real HTTP on loopback (the key `SIGNING_KEY_ID`)
#   moto_cognito   one moto server and user pool (groups for every role) for the test session
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def jwks_server() -> Iterator[JWKSServer]:
    """The user pool's JWKS, served over real HTTP on loopback."""
    with JWKSServer(shared_rsa_key(SIGNING_KEY_ID)) as server:
        yield server


@pytest.fixture(scope="session")
def moto_cognito() -> Iterator[MotoCognito]:
    with running_moto_cognito() as running:
        yield running
