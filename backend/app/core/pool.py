"""A connection pool that serves waiting requests first come, first served.

SQLAlchemy's `AsyncAdaptedQueuePool` keeps idle connections in an `asyncio.Queue`. That queue
is not fair under contention: a returned connection wakes the oldest waiter, but any request
that arrives before the waiter runs takes the connection first, and the woken waiter then
queues again at the back. With more requests than connections, some wait many times their
share (seconds at 64 connections on a pool of 7) while the median waits nothing: the pool
itself makes the tail.

Here a returned connection is handed straight to the oldest waiter, and a request only takes
an idle connection when nobody is waiting, so the wait is the queue's length and no more.
Everything else (overflow, timeouts and their `sqlalchemy.exc.TimeoutError`, recycling, the
checkout ping) is SQLAlchemy's own.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TypeVar

from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util import await_only
from sqlalchemy.util.queue import AsyncAdaptedQueue, Empty

from app.core import metrics
from app.core.compat import set_queue_class

T = TypeVar("T")


class FairAsyncQueue(AsyncAdaptedQueue[T]):
    """`AsyncAdaptedQueue` with a first-in, first-out line of waiters and direct hand-over."""

    def __init__(self, maxsize: int = 0, use_lifo: bool = False) -> None:
        super().__init__(maxsize, use_lifo)
        self._waiters: deque[asyncio.Future[T]] = deque()

    def put_nowait(self, item: T) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a waiter that timed out or was cancelled has left
                waiter.set_result(item)
                return
        super().put_nowait(item)

    def get(self, block: bool = True, timeout: float | None = None) -> T:
        # An idle connection exists only while nobody waits (returns go to the waiters).
        try:
            return self.get_nowait()
        except Empty:
            if not block:
                raise
        waiter: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            result: T = await_only(self._wait(waiter, timeout))
            return result
        except BaseException:
            # Timed out or cancelled: leave the line, and a connection handed over just as
            # the wait ended goes on to the next in line instead of being lost.
            if not waiter.done():
                waiter.cancel()
            elif not waiter.cancelled():
                self.put_nowait(waiter.result())
            raise

    @staticmethod
    async def _wait(waiter: asyncio.Future[T], seconds: float | None) -> T:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(seconds):
                return await waiter
        except TimeoutError:
            metrics.DB_POOL_TIMEOUTS.inc()
            raise Empty() from None
        finally:
            metrics.DB_POOL_WAITS.inc()
            metrics.DB_POOL_WAIT_SECONDS.inc(time.perf_counter() - started)


class FairAsyncQueuePool(AsyncAdaptedQueuePool):
    """`AsyncAdaptedQueuePool` whose waiting requests are served in arrival order."""


set_queue_class(FairAsyncQueuePool, FairAsyncQueue)
