"""Alembic environment: async engine, metadata of the ORM models, URL from the app's settings."""

import asyncio
import os
import re
from logging.config import fileConfig

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from app.models import Base

config = context.config

# Callers that embed Alembic (the test suite) keep their own logging set-up by setting
# `configure_logger` to False; the command line gets the ini file's loggers.
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata

# A migration that waits for a lock gives up after lock_timeout instead of queueing every later
# request on that table behind it (PostgreSQL: "Abort any statement that waits longer than the
# specified amount of time while attempting to acquire a lock", docs, runtime-config-client);
# statement_timeout bounds a statement that runs too long. The deploy script passes its own
# values; both are set for the session, so they hold across an autocommit block as well.
TIMEOUTS = {
    "lock_timeout": os.environ.get("MIGRATION_LOCK_TIMEOUT", "5s"),
    "statement_timeout": os.environ.get("MIGRATION_STATEMENT_TIMEOUT", "10min"),
}


def set_timeouts() -> None:
    """SET both timeouts first, in the connection or in the offline script (what squawk reads)."""
    for name, value in TIMEOUTS.items():
        if not re.fullmatch(r"\d+(ms|s|min|h)?", value):
            raise ValueError(f"{name} must be a PostgreSQL duration such as 5s, not {value!r}")
        context.execute(f"SET {name} = '{value}'")


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    # Imported here so that Alembic only needs the app's settings when no URL was given.
    from app.core.secrets import load_database_url

    return load_database_url()


def run_migrations_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=target_metadata,
        compare_type=True,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        set_timeouts()
        context.run_migrations()


def do_run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        set_timeouts()
        context.run_migrations()


async def run_async_migrations() -> None:
    # NullPool: a migration run is one connection, closed when it ends.
    engine = create_async_engine(database_url(), poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_async_migrations())
