"""`fetch_with_driver`: a read straight through asyncpg on the app's pool, on real PostgreSQL.

Its checkout skips the pool's ping, so a connection the server ended while it sat in the pool
must cost a second attempt, not an error; and what does fail must reach the error handlers as
SQLAlchemy's errors, as any other read's would.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
import sqlalchemy.exc
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from app.core.db import DatabaseConnector, create_engine, fetch_with_driver
from app.core.errors import DATABASE_UNAVAILABLE_ERRORS
from app.core.secrets import fetch_database_credentials
from tests.support.database import statements_sent
from tests.support.harness import make_settings

BACKEND_PID = "SELECT pg_backend_pid() AS pid"


def app_engine(database_url: str, **settings_given: Any) -> AsyncEngine:
    """An engine as the lifespan builds it (app/main.py): create_engine on a connector."""
    settings = make_settings(database_url, **settings_given)
    return create_engine(
        DatabaseConnector(settings, fetch_database_credentials(settings)), settings
    )


@pytest.fixture
async def engine(fresh_database_url: str) -> AsyncIterator[AsyncEngine]:
    """The app's engine with one connection, so every read reuses it."""
    engine = app_engine(fresh_database_url, db_pool_size=1, db_max_overflow=0)
    try:
        yield engine
    finally:
        await engine.dispose()


async def end_backend(dsn: str, pid: int) -> None:
    """End a session from the server's side, as a restart or an operator would."""
    admin = await asyncpg.connect(dsn)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


def checked_out(engine: AsyncEngine) -> int:
    pool = engine.sync_engine.pool
    assert isinstance(pool, QueuePool)
    return pool.checkedout()


def asyncpg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def test_a_pooled_connection_is_reused_without_a_ping(engine: AsyncEngine) -> None:
    first = await fetch_with_driver(engine, BACKEND_PID)
    async with statements_sent(engine) as sent:
        again = await fetch_with_driver(engine, BACKEND_PID)
    assert again[0]["pid"] == first[0]["pid"]
    assert [statement.query for statement in sent] == [BACKEND_PID]


async def test_a_connection_the_server_ended_is_read_again_on_a_fresh_one(
    engine: AsyncEngine, fresh_database_url: str
) -> None:
    ended = (await fetch_with_driver(engine, BACKEND_PID))[0]["pid"]
    await end_backend(asyncpg_dsn(fresh_database_url), ended)

    rows = await fetch_with_driver(engine, BACKEND_PID)
    assert rows[0]["pid"] != ended
    assert checked_out(engine) == 0  # both connections went back


async def test_a_failed_statement_is_sqlalchemys_error_and_not_sent_twice(
    engine: AsyncEngine,
) -> None:
    async with statements_sent(engine) as sent:
        with pytest.raises(sqlalchemy.exc.DBAPIError) as raised:
            await fetch_with_driver(engine, "SELECT 1 / $1::int", 0)
    assert raised.value.orig.sqlstate == "22012"  # type: ignore[union-attr]  # division_by_zero
    assert not isinstance(raised.value, DATABASE_UNAVAILABLE_ERRORS)  # a bug: a 500
    assert len(sent) == 1
    assert checked_out(engine) == 0


async def test_a_database_that_refuses_connections_is_unavailable(
    fresh_database_url: str,
) -> None:
    engine = app_engine(fresh_database_url, db_password="wrong", db_user="nobody")
    try:
        with pytest.raises(DATABASE_UNAVAILABLE_ERRORS):
            await fetch_with_driver(engine, BACKEND_PID)
    finally:
        await engine.dispose()


async def test_a_connection_beyond_the_pools_size_is_closed_when_it_comes_back(
    fresh_database_url: str,
) -> None:
    engine = app_engine(fresh_database_url, db_pool_size=1, db_max_overflow=1)
    try:
        # Two reads at once: the second opens a connection beyond the pool's size.
        await asyncio.gather(*(fetch_with_driver(engine, "SELECT pg_sleep(0.2)") for _ in "ab"))
        assert checked_out(engine) == 0
        sessions = await fetch_with_driver(
            engine,
            "SELECT count(*) AS open FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'one-system-api'",
        )
        assert sessions[0]["open"] == 1  # the pooled one: the other was closed on its return
    finally:
        await engine.dispose()
