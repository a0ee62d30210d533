"""Shared fixtures. Sections: database (below); others add theirs in sections of their own."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from devtools.postgres import EmbeddedPostgres, ExistingPostgres, PsqlAdmin

REPO_ROOT = Path(__file__).resolve().parents[2]


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


def alembic_config(url: str) -> Config:
    """Alembic configured for `url`, leaving the test session's logging alone."""
    config = Config(str(REPO_ROOT / "alembic.ini"))
    # ConfigParser interpolation: a literal % (e.g. in a password) must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["configure_logger"] = False
    return config


async def run_alembic(url: str, operation: str, *args: str) -> None:
    """Run an Alembic command, e.g. `run_alembic(url, "upgrade", "head")`.

    In a worker thread: env.py runs its own event loop with `asyncio.run`, which cannot be
    nested in the test's running loop.
    """
    await asyncio.to_thread(getattr(command, operation), alembic_config(url), *args)


def unique_database_name(purpose: str) -> str:
    # Unique per call, so concurrent runs against one TEST_DATABASE_URL server do not collide.
    return f"test_{purpose}_{uuid.uuid4().hex[:12]}"


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


async def _cloned_database(pg: PsqlAdmin, template: str, purpose: str) -> str:
    name = unique_database_name(purpose)
    await asyncio.to_thread(pg.create_database, name, template)
    return name


@pytest.fixture(scope="session")
async def database_url(pg: PsqlAdmin, migrated_template: str) -> AsyncIterator[str]:
    """URL of the migrated database that `db_session` tests share (each in its own transaction)."""
    name = await _cloned_database(pg, migrated_template, "shared")
    try:
        yield pg.url(name)
    finally:
        await asyncio.to_thread(pg.drop_database, name)


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
    name = await _cloned_database(pg, migrated_template, "fresh")
    try:
        yield pg.url(name)
    finally:
        await asyncio.to_thread(pg.drop_database, name)


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
    name = unique_database_name("empty")
    await asyncio.to_thread(pg.create_database, name)
    try:
        yield pg.url(name)
    finally:
        await asyncio.to_thread(pg.drop_database, name)
