"""Async engine, sessions and the one-transaction-per-request dependency."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Final

import anyio.to_thread
import asyncpg
import sqlalchemy.exc
from fastapi import Depends, Request
from sqlalchemy import Select, event, text
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.util import await_only

from app.core.compensation import undo_unless_committed
from app.core.config import (
    ConfigError,
    DatabaseCredentials,
    DatabaseSettings,
    fetch_database_credentials,
)

logger = logging.getLogger(__name__)


# Refused credentials re-read the secret at most this often, so a wrong secret yields 503s
# instead of a loop hammering Secrets Manager and the database.
CREDENTIALS_REFRESH_INTERVAL_SECONDS = 30.0


class DatabaseConnector:
    """Opens asyncpg connections with the current credentials, following secret rotation.

    When the database refuses the password and the credentials came from Secrets Manager, the
    secret is read again (once, for all concurrent connection attempts) and the connection is
    retried with what it holds now. Nothing else retries here: the pool's callers see the error.
    """

    def __init__(
        self,
        settings: DatabaseSettings,
        credentials: DatabaseCredentials,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self.credentials = credentials
        self._clock = clock
        self._lock = asyncio.Lock()
        self._refreshed_at: float | None = None
        self._server_settings = {
            "application_name": "one-system-api",
            "statement_timeout": str(int(settings.db_statement_timeout_seconds * 1000)),
            "idle_in_transaction_session_timeout": "30000",
        }

    async def connect(self) -> asyncpg.Connection:
        credentials = self.credentials
        try:
            return await self._connect_with(credentials)
        except asyncpg.InvalidAuthorizationSpecificationError:
            if self._settings.db_secret_id is None:
                raise
            refreshed = await self._refresh(credentials)
            if refreshed is None:
                raise
            return await self._connect_with(refreshed)

    async def _connect_with(self, credentials: DatabaseCredentials) -> asyncpg.Connection:
        return await asyncpg.connect(
            host=credentials.host,
            port=credentials.port,
            user=credentials.user,
            password=credentials.password.get_secret_value(),
            database=credentials.name,
            timeout=self._settings.db_connect_timeout_seconds,
            command_timeout=self._settings.db_statement_timeout_seconds + 1,
            server_settings=self._server_settings,
        )

    async def _refresh(self, refused: DatabaseCredentials) -> DatabaseCredentials | None:
        """New credentials from the secret, or None when there is nothing new to try."""
        async with self._lock:
            if self.credentials != refused:
                return self.credentials  # another connection attempt already refreshed
            now = self._clock()
            if (
                self._refreshed_at is not None
                and now - self._refreshed_at < CREDENTIALS_REFRESH_INTERVAL_SECONDS
            ):
                return None
            self._refreshed_at = now
            try:
                current = await anyio.to_thread.run_sync(fetch_database_credentials, self._settings)
            except ConfigError as error:
                logger.warning("database secret could not be re-read: %s", error)
                return None
            if current == refused:
                logger.warning("database refused the credentials the secret still holds")
                return None
            logger.info("database credentials refreshed from the secret")
            self.credentials = current
            return current


def create_engine(settings: DatabaseSettings, credentials: DatabaseCredentials) -> AsyncEngine:
    connector = DatabaseConnector(settings, credentials)
    engine = create_async_engine(
        # The URL names the dialect only; connections come from the connector.
        "postgresql+asyncpg://",
        async_creator=connector.connect,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        # Pinged on checkout by `_ping_on_checkout` instead of `pool_pre_ping`.
        pool_pre_ping=False,
        # Aurora fails over by DNS; recycling bounds how long a pool clings to an old writer.
        pool_recycle=1800,
    )
    event.listen(engine.sync_engine.pool, "checkout", _ping_on_checkout)
    return engine


def _ping_on_checkout(
    _dbapi_connection: object, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
) -> None:
    """Make sure a pooled connection is alive before a request gets it: one round trip.

    SQLAlchemy's own pre-ping for asyncpg wraps its query in BEGIN and ROLLBACK (for pgbouncer's
    transaction mode, which this service does not use): three round trips on every checkout,
    as much as the statement a read then runs. A dead connection (database restart, failover)
    raises DisconnectionError, so the pool discards it and hands out a fresh one.
    """
    try:
        await_only(record.driver_connection.fetchrow(";"))  # type: ignore[union-attr]
    except Exception as error:
        raise sqlalchemy.exc.DisconnectionError(type(error).__name__) from error


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


ReadSessions = async_sessionmaker[AsyncSession]


def create_read_sessionmaker(engine: AsyncEngine) -> ReadSessions:
    """Sessions for reads outside the request's transaction, in autocommit mode.

    For lookups that most requests answer from memory (the caller's user row, reference lists)
    and read-only endpoints: a miss costs its statements only, with no BEGIN and COMMIT round
    trips, and a hit costs no session at all. Whatever writes uses the request's transaction.
    """
    return async_sessionmaker(
        engine.execution_options(isolation_level="AUTOCOMMIT"),
        expire_on_commit=False,
        autoflush=False,
    )


def read_sessions(request: Request) -> ReadSessions:
    sessions: ReadSessions = request.state.read_sessionmaker
    return sessions


_ASYNCPG: Final = PGDialect_asyncpg()  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class DriverQuery:
    """A Core SELECT compiled once, run on the asyncpg connection beneath a SQLAlchemy one.

    For the hottest reads only: SQLAlchemy's execution and result layers cost ~0.4 ms per
    statement on our hardware, more than an indexed query itself (measured on the user list:
    1.04 → 0.63 ms in process). The statement is still written in SQLAlchemy and runs on the
    caller's connection (and so in its transaction, if any); what is skipped is SQLAlchemy's type
    processing: bind values must already be what asyncpg takes (`str` for an enum column), and
    rows come back as asyncpg records.
    """

    sql: str
    parameter_names: tuple[str, ...]

    @classmethod
    def of(cls, statement: Select[Any]) -> DriverQuery:
        """Compile `statement`, whose values are all named `bindparam`s."""
        compiled = statement.compile(dialect=_ASYNCPG)
        return cls(str(compiled), tuple(compiled.positiontup or ()))

    async def fetch(self, connection: AsyncConnection, **values: object) -> list[asyncpg.Record]:
        raw = await connection.get_raw_connection()
        driver: asyncpg.Connection = raw.driver_connection  # type: ignore[assignment]
        return await driver.fetch(self.sql, *(values[name] for name in self.parameter_names))


_abandoned_checks: set[asyncio.Future[None]] = set()


def _forget_check(check: asyncio.Future[None]) -> None:
    _abandoned_checks.discard(check)
    if not check.cancelled():
        check.exception()  # retrieved: its failure was already reported as "not reachable"


async def database_is_reachable(engine: AsyncEngine, within_seconds: float) -> bool:
    """`SELECT 1` within `within_seconds`; never raises, never waits longer."""

    async def select_one() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    check = asyncio.ensure_future(select_one())
    try:
        # Shielded and left behind on timeout: SQLAlchemy closes a connection that stopped
        # answering gracefully, itself shielded from cancellation, for up to 2 s more.
        await asyncio.wait_for(asyncio.shield(check), within_seconds)
    except BaseException as error:
        check.cancel()
        _abandoned_checks.add(check)
        check.add_done_callback(_forget_check)
        if not isinstance(error, Exception):
            raise
        # Any failure means "not reachable" to the health probe.
        logger.warning("database check failed: %s", type(error).__name__)
        return False
    return True


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One request, one transaction: commit when the endpoint returns, roll back if it raises.

    The transaction begins with the first statement (SQLAlchemy's autobegin), so a request that
    needs no SQL, such as a cached read by a cached user, costs no connection and no round trip.
    """
    sessionmaker: async_sessionmaker[AsyncSession] = request.state.sessionmaker
    session = sessionmaker()
    try:
        # Changes a service made outside the database (Cognito) are undone if the commit fails.
        async with undo_unless_committed(session):
            try:
                yield session
                if session.in_transaction():
                    await session.commit()
            except BaseException:
                if session.in_transaction():
                    await session.rollback()
                raise
    finally:
        if session.in_transaction():
            await session.close()


# scope="function": the commit happens before the response is sent, so a failed commit is
# reported to the client instead of being lost after a 2xx.
SessionDep = Annotated[AsyncSession, Depends(get_session, scope="function")]
