"""Async engine, sessions and the one-transaction-per-request dependency."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Annotated, Final

import anyio.to_thread
import asyncpg
import sqlalchemy.engine
import sqlalchemy.exc
import sqlalchemy.pool
from fastapi import Depends
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
from sqlalchemy.util import await_only, greenlet_spawn

from app.core import metrics
from app.core.compensation import run_after_commit, undo_unless_committed
from app.core.config import (
    ConfigError,
    DatabaseAccessSettings,
    DatabaseCredentials,
    DatabaseSettings,
)
from app.core.errors import describe_database_error
from app.core.pool import FairAsyncQueuePool
from app.core.secrets import fetch_database_credentials
from app.core.state import LifespanItem

logger = logging.getLogger(__name__)


# Refused credentials re-read the secret at most this often, so a wrong secret yields 503s
# instead of a loop hammering Secrets Manager and the database.
CREDENTIALS_REFRESH_INTERVAL_SECONDS = 30.0


class DatabaseConnector:
    """Opens asyncpg connections with the current credentials, following secret rotation.

    When the database refuses the password and `reread_credentials` is given (the credentials
    came from Secrets Manager), it is called again (once, for all concurrent connection attempts;
    blocking, so in a worker thread) and the connection is retried with what it returns. Nothing
    else retries here: the pool's callers see the error.
    """

    def __init__(
        self,
        settings: DatabaseSettings,
        credentials: DatabaseCredentials,
        reread_credentials: Callable[[], DatabaseCredentials] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self.credentials = credentials
        self._reread_credentials = reread_credentials
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
            if self._reread_credentials is None:
                raise
            refreshed = await self._refresh(credentials, self._reread_credentials)
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

    async def _refresh(
        self, refused: DatabaseCredentials, reread: Callable[[], DatabaseCredentials]
    ) -> DatabaseCredentials | None:
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
                current = await anyio.to_thread.run_sync(reread)
            except ConfigError as error:
                logger.warning("database secret could not be re-read: %s", error)
                return None
            if current == refused:
                logger.warning("database refused the credentials the secret still holds")
                return None
            logger.info("database credentials refreshed from the secret")
            self.credentials = current
            return current


def create_engine(
    connector: DatabaseConnector,
    settings: DatabaseSettings,
    *,
    pool_size: int | None = None,
    max_overflow: int | None = None,
    name: str = "api",
) -> AsyncEngine:
    """An engine on the connector's connections; the pool as configured unless given.

    `name` labels its pool's metrics (`one_system_db_pool_*`).
    """
    engine = create_async_engine(
        # The URL names the dialect only; connections come from the connector.
        "postgresql+asyncpg://",
        async_creator=connector.connect,
        # Waiting requests are served in arrival order (SQLAlchemy's asyncio queue lets late
        # arrivals overtake them, which makes the tail of a busy pool).
        poolclass=FairAsyncQueuePool,
        pool_size=settings.db_pool_size if pool_size is None else pool_size,
        max_overflow=settings.db_max_overflow if max_overflow is None else max_overflow,
        pool_timeout=settings.db_pool_timeout_seconds,
        # Pinged on checkout by `_ping_on_checkout` instead of `pool_pre_ping`.
        pool_pre_ping=False,
        # Aurora fails over by DNS; recycling bounds how long a pool clings to an old writer.
        pool_recycle=1800,
    )
    event.listen(engine.sync_engine.pool, "checkout", _ping_on_checkout)
    _count_checkouts(engine.sync_engine.pool, name)
    event.listen(engine.sync_engine, "handle_error", _discard_connections_to_a_reader)
    return engine


def _count_checkouts(pool: sqlalchemy.pool.Pool, name: str) -> None:
    """Keep the pool's gauges: connections lent out and open beyond its size.

    Registered after the ping, so a checkout whose ping failed (and that SQLAlchemy retries on
    a fresh connection) is counted once.
    """
    checked_out = metrics.DB_POOL_CHECKED_OUT.labels(name)
    overflow = metrics.DB_POOL_OVERFLOW.labels(name)
    size_of = getattr(pool, "overflow", None)

    def on_checkout(*_: object) -> None:
        checked_out.inc()
        if size_of is not None:
            overflow.set(size_of())

    def on_checkin(*_: object) -> None:
        checked_out.dec()
        if size_of is not None:
            overflow.set(size_of())

    event.listen(pool, "checkout", on_checkout)
    event.listen(pool, "checkin", on_checkin)


# read_only_sql_transaction: after an Aurora failover, connections opened before it (or through
# a DNS answer that still named the old writer) reach an instance that is now a reader.
READ_ONLY_SQLSTATE: Final = "25006"


def _discard_connections_to_a_reader(context: sqlalchemy.engine.ExceptionContext) -> None:
    """Treat a read-only refusal as a lost connection: the pool drops it and all its siblings.

    They were opened against the same (old) writer, so a retry on any of them would fail the
    same way; fresh connections resolve the cluster endpoint again and reach the new writer.
    """
    if getattr(context.original_exception, "sqlstate", None) == READ_ONLY_SQLSTATE:
        context.is_disconnect = True


def _ping_on_checkout(
    _dbapi_connection: object, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
) -> None:
    """Make sure a pooled connection is alive before a request gets it: one round trip.

    SQLAlchemy's own pre-ping for asyncpg wraps its query in BEGIN and ROLLBACK (for pgbouncer's
    transaction mode, which this service does not use): three round trips on every checkout,
    as much as the statement a read then runs. A dead connection (database restart, failover)
    raises DisconnectionError, so the pool discards it and hands out a fresh one. Skipped where
    the caller sends its read again instead (`fetch_with_driver`).
    """
    if _UNPINGED_CHECKOUT.get():
        return
    driver: asyncpg.Connection = record.driver_connection  # type: ignore[assignment]
    try:
        await_only(driver.fetchrow(";"))
    except Exception as error:
        # Closed at once: a graceful close would wait for a server that stopped answering
        # (up to 2 s more) before the pool could hand out a fresh connection.
        driver.terminate()
        raise sqlalchemy.exc.DisconnectionError(describe_database_error(error)) from error


# What the driver raises for a statement or a connection that failed. InternalClientError: a
# statement on a connection the server ended while it was idle can meet the driver still
# consuming that last message.
_CONNECTION_ERRORS: Final = (asyncpg.InterfaceError, asyncpg.InternalClientError, ConnectionError)
_DRIVER_ERRORS: Final = (asyncpg.PostgresError, *_CONNECTION_ERRORS, OSError, TimeoutError)
# Set around a checkout whose caller sends its statement again should the connection be dead.
_UNPINGED_CHECKOUT: Final = contextvars.ContextVar("unpinged_checkout", default=False)


def _connection_was_dead(error: BaseException) -> bool:
    """Whether a statement failed only because its pooled connection had already gone (the
    server restarted or ended it while idle), so it never ran and may be sent again. Not a
    timeout: a server that stopped answering would be waited for twice."""
    if isinstance(error, asyncpg.PostgresError):
        # 08: connection exception; 57P01-57P03: the server was shut down or is restarting.
        return error.sqlstate[:2] == "08" or error.sqlstate in {"57P01", "57P02", "57P03"}
    return isinstance(error, _CONNECTION_ERRORS)


async def fetch_with_driver(engine: AsyncEngine, sql: str, *args: object) -> list[asyncpg.Record]:
    """One autocommit read on a pooled connection, through the driver alone.

    For the statement a cold request cannot do without (its caller's users row): SQLAlchemy's
    session, connection and result layers cost about three times the driver's own CPU for a
    one-row SELECT (docs/performance.md). The pool is the same one, with its timeout and
    gauges, but the checkout skips its ping (a round trip as dear as the statement): a read is
    safe to send twice, so one that finds its connection dead is sent once more on a fresh,
    pinged one. A failure is raised as SQLAlchemy's `DBAPIError` over the driver's error, so it
    is answered as any other read's (by SQLSTATE, or 503 for a lost connection), and the
    connection it happened on is discarded rather than lent out again.
    """
    for unpinged in (True, False):
        checkout = _UNPINGED_CHECKOUT.set(unpinged)
        try:
            connection = await engine.raw_connection()
        except (*_DRIVER_ERRORS, engine.dialect.loaded_dbapi.Error) as error:
            # Opening a connection: the database is not there, or refused it (as the dialect
            # words it, not yet wrapped by SQLAlchemy).
            raise sqlalchemy.exc.OperationalError(sql, args, error) from error
        finally:
            _UNPINGED_CHECKOUT.reset(checkout)
        try:
            driver: asyncpg.Connection = connection.driver_connection  # type: ignore[assignment]
            return await driver.fetch(sql, *args)
        except BaseException as error:
            # Cancelled too: a connection left mid-statement is not lent out again.
            connection.invalidate(error)
            if unpinged and _connection_was_dead(error):
                continue
            if isinstance(error, asyncpg.PostgresError):
                raise sqlalchemy.exc.DBAPIError(sql, args, error) from error
            if isinstance(error, _DRIVER_ERRORS):
                raise sqlalchemy.exc.OperationalError(
                    sql, args, error, connection_invalidated=True
                ) from error
            raise
        finally:
            # In a greenlet: a connection beyond the pool's size is closed on its return, and
            # the dialect awaits that close.
            await greenlet_spawn(connection.close)
    raise AssertionError("unreachable: the pinged attempt returns or raises")


class Sessionmaker(async_sessionmaker[AsyncSession]):
    """Sessions for the request's transaction (`create_sessionmaker`)."""


class ReadSessions(async_sessionmaker[AsyncSession]):
    """Sessions for reads outside it (`create_read_sessionmaker`).

    Two classes for one job each, so that passing one where the other belongs fails type
    checking.
    """


@dataclass(frozen=True, slots=True)
class Database:
    """A process's way to the database: connections that follow the secret, an engine, sessions.

    What the app, the worker and the command-line tools each open once (`open_database`).
    """

    connector: DatabaseConnector
    engine: AsyncEngine
    sessions: Sessionmaker
    read_sessions: ReadSessions

    async def dispose(self) -> None:
        await self.engine.dispose()


async def open_database(
    settings: DatabaseAccessSettings,
    *,
    pool_size: int | None = None,
    max_overflow: int | None = None,
    name: str = "api",
    session_class: type[Session] = Session,
) -> Database:
    """Read the credentials and build the engine and its sessions; connects nothing yet.

    With `DB_SECRET_ID` the credentials come from Secrets Manager (read in a worker thread:
    boto3 blocks) and are read again when the database refuses them (a rotation). Raises
    `ConfigError` when they cannot be read at all.
    """
    credentials = await anyio.to_thread.run_sync(fetch_database_credentials, settings)
    reread = (
        functools.partial(fetch_database_credentials, settings)
        if settings.db_secret_id is not None
        else None
    )
    connector = DatabaseConnector(settings, credentials, reread)
    engine = create_engine(
        connector, settings, pool_size=pool_size, max_overflow=max_overflow, name=name
    )
    return Database(
        connector,
        engine,
        create_sessionmaker(engine, session_class),
        create_read_sessionmaker(engine),
    )


def create_sessionmaker(
    engine: AsyncEngine, session_class: type[Session] = Session
) -> Sessionmaker:
    """Sessions for the request's transaction; `session_class` carries per-app commit hooks."""
    return Sessionmaker(
        engine, expire_on_commit=False, autoflush=False, sync_session_class=session_class
    )


def create_read_sessionmaker(engine: AsyncEngine) -> ReadSessions:
    """Sessions for reads outside the request's transaction, in autocommit mode.

    For lookups that most requests answer from memory (the caller's user row, reference lists)
    and read-only endpoints: a miss costs its statements only, with no BEGIN and COMMIT round
    trips, and a hit costs no session at all. Whatever writes uses the request's transaction.
    """
    return ReadSessions(
        engine.execution_options(isolation_level="AUTOCOMMIT"),
        expire_on_commit=False,
        autoflush=False,
    )


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
        logger.warning("database check failed: %s", describe_database_error(error))
        return False
    return True


HEALTH_ENGINE: Final = LifespanItem[AsyncEngine]("health_engine")
SESSIONMAKER: Final = LifespanItem[Sessionmaker]("sessionmaker")
READ_SESSIONMAKER: Final = LifespanItem[ReadSessions]("read_sessionmaker")

HealthEngineDep = Annotated[AsyncEngine, Depends(HEALTH_ENGINE)]
ReadSessionsDep = Annotated[ReadSessions, Depends(READ_SESSIONMAKER)]


async def get_session(
    sessionmaker: Annotated[Sessionmaker, Depends(SESSIONMAKER)],
) -> AsyncIterator[AsyncSession]:
    """One request, one transaction: commit when the endpoint returns, roll back if it raises.

    The transaction begins with the first statement (SQLAlchemy's autobegin), so a request that
    needs no SQL, such as a cached read by a cached user, costs no connection and no round trip.
    """
    session = sessionmaker()
    try:
        # Changes a service made outside the database (Cognito) are undone if the commit fails.
        async with undo_unless_committed(session):
            try:
                yield session
                if session.in_transaction():
                    await session.commit()
                    run_after_commit(session)
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
