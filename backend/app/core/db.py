"""Async engine, sessions and the one-transaction-per-request dependency."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy import text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.core.compensation import undo_unless_committed
from app.core.config import DatabaseCredentials, DatabaseSettings

logger = logging.getLogger(__name__)


def create_engine(settings: DatabaseSettings, credentials: DatabaseCredentials) -> AsyncEngine:
    statement_timeout_ms = int(settings.db_statement_timeout_seconds * 1000)
    return create_async_engine(
        credentials.url(),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        pool_pre_ping=True,
        # Aurora fails over by DNS; recycling bounds how long a pool clings to an old writer.
        pool_recycle=1800,
        connect_args={
            "timeout": settings.db_connect_timeout_seconds,
            "command_timeout": settings.db_statement_timeout_seconds + 1,
            "server_settings": {
                "application_name": "one-system-api",
                "statement_timeout": str(statement_timeout_ms),
                "idle_in_transaction_session_timeout": "30000",
            },
        },
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


async def database_is_reachable(engine: AsyncEngine, within_seconds: float) -> bool:
    """`SELECT 1` within `within_seconds`; never raises."""
    try:
        async with asyncio.timeout(within_seconds), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception as error:  # any failure means "not reachable" to the health probe
        logger.warning("database check failed: %s", type(error).__name__)
        return False
    return True


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One request, one transaction: commit when the endpoint returns, roll back if it raises."""
    sessionmaker: async_sessionmaker[AsyncSession] = request.state.sessionmaker
    # Changes a service made outside the database (Cognito) are undone if the commit fails.
    async with sessionmaker() as session, undo_unless_committed(session), session.begin():
        yield session


# scope="function": the commit happens before the response is sent, so a failed commit is
# reported to the client instead of being lost after a 2xx.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
