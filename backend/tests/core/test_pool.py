"""The pool serves waiting requests in arrival order; its timeouts stay SQLAlchemy's own.

The fair queue reaches SQLAlchemy's pool through a private class attribute (`_queue_class`), so
the engine the app builds is checked too: a release that renamed the attribute would leave the
pool on SQLAlchemy's own queue, and only a look at the live pool would show it.
"""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy.exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.util import greenlet_spawn
from sqlalchemy.util.queue import Empty, QueueCommon

from app.core.db import DatabaseConnector, create_engine
from app.core.pool import FairAsyncQueue, FairAsyncQueuePool
from app.core.secrets import fetch_database_credentials
from tests.support.harness import make_settings


async def waiting(queue: FairAsyncQueue[str], patience: float = 5) -> asyncio.Task[str]:
    task = asyncio.create_task(greenlet_spawn(queue.get, True, patience))
    await asyncio.sleep(0.01)  # it has joined the line
    return task


async def test_a_returned_item_goes_to_the_oldest_waiter_not_to_a_newcomer() -> None:
    queue: FairAsyncQueue[str] = FairAsyncQueue(maxsize=2)
    first, second = await waiting(queue), await waiting(queue)

    queue.put_nowait("one")
    # Someone arriving now finds nothing idle: "one" is already the first waiter's.
    with pytest.raises(Empty):
        queue.get(block=False)
    queue.put_nowait("two")
    assert [await first, await second] == ["one", "two"]

    # Nobody waits: a returned item stays idle for the next caller.
    queue.put_nowait("three")
    assert queue.get(block=False) == "three"


async def test_a_waiter_that_gave_up_leaves_the_line() -> None:
    queue: FairAsyncQueue[str] = FairAsyncQueue(maxsize=2)
    impatient = await waiting(queue, patience=0.05)
    cancelled = await waiting(queue)
    patient = await waiting(queue)
    with pytest.raises(Empty):
        await impatient
    cancelled.cancel()
    await asyncio.sleep(0)

    queue.put_nowait("one")
    assert await patient == "one"
    assert queue.empty()


async def test_an_exhausted_pool_still_times_out_with_sqlalchemys_error(
    fresh_database_url: str,
) -> None:
    engine = create_async_engine(
        fresh_database_url,
        poolclass=FairAsyncQueuePool,
        pool_size=1,
        max_overflow=0,
        pool_timeout=0.2,
    )
    try:
        async with engine.connect() as held:
            await held.execute(text("SELECT 1"))
            with pytest.raises(sqlalchemy.exc.TimeoutError):
                await engine.connect()
        # Returned, the connection serves the next request.
        async with engine.connect() as connection:
            assert (await connection.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()


async def test_the_engine_the_app_builds_holds_its_connections_in_the_fair_queue(
    fresh_database_url: str,
) -> None:
    settings = make_settings(fresh_database_url, db_pool_size=2, db_max_overflow=0)
    # As the lifespan builds it (app/main.py): create_engine on a connector.
    engine = create_engine(
        DatabaseConnector(settings, fetch_database_credentials(settings)), settings
    )
    try:

        async def select_one() -> int:
            async with engine.connect() as connection:
                return int((await connection.execute(text("SELECT 1"))).scalar_one())

        # More checkouts than connections: some wait, and every connection goes back.
        assert await asyncio.gather(*(select_one() for _ in range(6))) == [1] * 6
        pool = engine.sync_engine.pool
        # Whatever SQLAlchemy calls the attribute: the queue objects the live pool holds.
        queues = [value for value in vars(pool).values() if isinstance(value, QueueCommon)]
        assert [type(queue) for queue in queues] == [FairAsyncQueue]
        # And it is the queue in use: both connections came back into it.
        assert queues[0].qsize() == pool.checkedin() == 2
    finally:
        await engine.dispose()
