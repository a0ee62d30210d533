"""A migration waiting on a lock gives up after lock_timeout instead of queueing behind it."""

import asyncio

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.support.database import run_alembic


async def test_a_migration_behind_a_lock_fails_fast_instead_of_waiting(
    empty_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    await run_alembic(empty_database_url, "upgrade", "0005")
    monkeypatch.setenv("MIGRATION_LOCK_TIMEOUT", "300ms")
    holder = create_async_engine(empty_database_url, poolclass=NullPool)
    try:
        async with holder.connect() as connection, connection.begin():
            # A long read of the table 0006 replaces: its DROP TABLE must wait for this lock.
            await connection.execute(sa.text("LOCK TABLE directory_outbox IN ACCESS SHARE MODE"))
            with pytest.raises(Exception, match="lock timeout"):
                # The guard only ends a migration that would otherwise wait for ever.
                await asyncio.wait_for(run_alembic(empty_database_url, "upgrade", "0006"), 20)
    finally:
        await holder.dispose()
    # Nothing of 0006 stayed behind: it ran in one transaction, rolled back.
    await run_alembic(empty_database_url, "upgrade", "0006")


def test_a_timeout_that_is_not_a_duration_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from alembic import command

    from tests.support.database import alembic_config

    monkeypatch.setenv("MIGRATION_STATEMENT_TIMEOUT", "1s'; DROP TABLE users; --")
    with pytest.raises(ValueError, match="statement_timeout must be a PostgreSQL duration"):
        command.upgrade(alembic_config("postgresql+asyncpg://u@127.0.0.1/x"), "0001", sql=True)
