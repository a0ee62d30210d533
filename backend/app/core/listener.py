"""One LISTEN connection per worker, shared by every in-process cache PostgreSQL keeps exact.

A cache subscribes to a channel with two callbacks: one for each notification's payload, and one
for when the listener goes down (notifications sent while nobody listens are lost, so whatever
the cache holds can no longer be trusted). A cache must only trust what it holds while
`listening` is true: from the moment LISTEN succeeded until the connection is found lost.

The connection is watched two ways: asyncpg reports a closed socket at once, and a ping every
`ping_interval` seconds (answered within `ping_timeout`) finds one that died silently, so a
dead listener is noticed within `ping_interval + ping_timeout` seconds. Reconnection is retried
with capped, jittered backoff. The connection is opened with the pool's own connector, so it
follows the same credentials (and their rotation) and timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from app.core.tasks import BackgroundTask

logger = logging.getLogger(__name__)

Connect = Callable[[], Awaitable[asyncpg.Connection]]


@dataclass(frozen=True, slots=True)
class _Subscription:
    on_notification: Callable[[str], None]
    on_lost: Callable[[], None]


class NotificationListener:
    def __init__(
        self,
        connect: Connect,
        *,
        ping_interval: float = 2.0,
        ping_timeout: float = 2.0,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self._connect = connect
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._subscriptions: dict[str, _Subscription] = {}
        self._listening = False
        self._task = BackgroundTask(self._listen_forever, "notification-listener")

    @property
    def listening(self) -> bool:
        """True while every committed notification of the subscribed channels is delivered."""
        return self._listening

    def subscribe(
        self, channel: str, on_notification: Callable[[str], None], on_lost: Callable[[], None]
    ) -> None:
        """LISTEN to `channel` too; call before `start` (a running listener would miss it)."""
        self._subscriptions[channel] = _Subscription(on_notification, on_lost)

    def start(self) -> None:
        self._task.start()

    async def aclose(self) -> None:
        await self._task.aclose()

    def _lost(self) -> None:
        self._listening = False
        for subscription in self._subscriptions.values():
            subscription.on_lost()

    async def _listen_forever(self) -> None:
        backoff = self._min_backoff
        while True:
            started = time.monotonic()
            try:
                await self._listen_once()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                logger.warning(
                    "notification listener down (%s: %s); in-process caches are bypassed "
                    "until it reconnects",
                    type(error).__name__,
                    error,
                )
            except Exception:
                logger.exception("notification listener failed; retrying")
            if time.monotonic() - started > self._max_backoff:
                backoff = self._min_backoff  # it ran for a while: a fresh failure
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
            backoff = min(backoff * 2, self._max_backoff)

    async def _listen_once(self) -> None:
        connection = await self._connect()
        closed = asyncio.Event()
        connection.add_termination_listener(lambda _: closed.set())
        try:
            for channel, subscription in self._subscriptions.items():
                await connection.add_listener(channel, _payload_to(subscription.on_notification))
            # From here on every committed change is delivered, so caches may trust what they
            # load; what they held before was dropped when the last connection was lost.
            self._listening = True
            logger.info(
                "notification listener listening", extra={"channels": len(self._subscriptions)}
            )
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._ping_interval):
                        await closed.wait()
                if closed.is_set():
                    raise ConnectionError("listener connection closed")
                await connection.fetchval("SELECT 1", timeout=self._ping_timeout)
        finally:
            self._lost()
            connection.terminate()


def _payload_to(on_notification: Callable[[str], None]) -> Callable[..., None]:
    def deliver(_connection: object, _pid: int, _channel: str, payload: object) -> None:
        on_notification(str(payload))

    return deliver
