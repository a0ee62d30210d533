"""Databases of the tests: migrated by Alembic, cloned from a template, written to for real.

The fixtures built on these (`pg`, `migrated_template`, `fresh_database_url`, ...) are in
`tests/conftest.py`; a test directory that needs a database of its own for a module or a session
takes one with `cloned_database`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from alembic import command
from alembic.config import Config
from asyncpg.connection import LoggedQuery
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from devtools.postgres import PsqlAdmin

REPO_ROOT = Path(__file__).resolve().parents[3]


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


@asynccontextmanager
async def cloned_database(pg: PsqlAdmin, template: str | None, purpose: str) -> AsyncIterator[str]:
    """URL of a new database on `pg`, a copy of `template` (None: empty), dropped afterwards."""
    name = unique_database_name(purpose)
    await asyncio.to_thread(pg.create_database, name, template)
    try:
        yield pg.url(name)
    finally:
        await asyncio.to_thread(pg.drop_database, name)


async def execute_sql(database_url: str, *statements: str) -> list[Any]:
    """Run statements in one committed transaction; the rows of the last one."""
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            rows: list[Any] = []
            for statement in statements:
                result = await connection.execute(text(statement))
                rows = list(result.all()) if result.returns_rows else []
            return rows
    finally:
        await engine.dispose()


@asynccontextmanager
async def statements_sent(engine: AsyncEngine) -> AsyncIterator[list[LoggedQuery]]:
    """Every statement the engine's pooled connections complete while inside, with its
    arguments, as the driver itself logs them: through SQLAlchemy or straight to the driver."""
    sent: list[LoggedQuery] = []
    watched: set[asyncpg.Connection] = set()

    def watch(_dbapi: object, record: ConnectionPoolEntry, _proxy: object) -> None:
        driver: asyncpg.Connection = record.driver_connection  # type: ignore[assignment]
        if driver not in watched:
            watched.add(driver)
            driver.add_query_logger(sent.append)

    pool = engine.sync_engine.pool
    event.listen(pool, "checkout", watch)
    try:
        yield sent
    finally:
        await asyncio.sleep(0)  # the driver hands each statement to its loggers on the next turn
        event.remove(pool, "checkout", watch)
        for driver in watched:
            driver.remove_query_logger(sent.append)


async def statements_waiting_for_a_lock(dsn: str) -> list[str]:
    """The statements of this database that PostgreSQL has received and holds behind a lock."""
    connection = await asyncpg.connect(dsn)
    try:
        rows = await connection.fetch(
            "SELECT query FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
    finally:
        await connection.close()
    return [row["query"] for row in rows]
