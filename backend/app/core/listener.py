"""One LISTEN connection per worker, shared by every in-process cache PostgreSQL keeps exact.

A cache subscribes to a channel with two callbacks: one for each notification's payload, and one
for when notifications may have been missed (sent while nobody listened, or dropped on the way),
so that whatever the cache holds can no longer be trusted. A cache must only trust what it
holds while `listening` is true.

`listening` is proven, not assumed. A connection that answers queries may still never deliver
a notification: behind RDS Proxy, or PgBouncer in transaction mode, the session that ran LISTEN
is not the one notifications reach, and they are dropped. So every `heartbeat_interval` the
listener sends a NOTIFY on a channel of its own through a second connection (another session,
as any writer's change is; a session's own NOTIFY is delivered to itself, so sending it on the
listening connection would pass behind such a proxy) and must receive it back. PostgreSQL
delivers notifications in commit order, so a heartbeat received proves that everything
committed before it was sent has been delivered. `listening` is true only while the last proven
heartbeat was sent at most `max_silence` seconds ago: however the delivery stops (a dead or
frozen connection, a proxy dropping notifications), caches are bypassed within `max_silence`
of the last proof, without waiting for anything to notice. When heartbeats come back, the
subscribers are told to forget what they hold first (it may have missed changes), and caching
resumes.

A heartbeat that does not arrive within its interval makes the listener ping its connection, so
one that died silently is replaced; a connection that answers but delivers nothing is kept, and
the heartbeats go on, so delivery is noticed the moment it comes back. One WARNING is logged
when notifications stop being delivered (not one per heartbeat or reconnection attempt), one
INFO when they are delivered again. Reconnection is retried with capped, jittered backoff; both
connections are opened with the pool's own connector, so they follow the same credentials
(and their rotation) and timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg

from app.core import metrics
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
        heartbeat_interval: float = 1.0,
        max_silence: float = 3.0,
        ping_timeout: float = 2.0,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        self._heartbeat_interval = heartbeat_interval
        self._max_silence = max_silence
        self._ping_timeout = ping_timeout
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._clock = clock
        self._subscriptions: dict[str, _Subscription] = {}
        # A channel no other listener uses, so heartbeats reach only the listener that sent them.
        self.heartbeat_channel = f"listener_heartbeat_{uuid.uuid4().hex}"
        self._next_beat = 0
        self._sent: dict[int, float] = {}  # heartbeat number -> when it was sent, oldest first
        self._proven_at: float | None = None  # when the last heartbeat received was sent
        self._silent_since = clock()  # what `max_silence` counts from while nothing is proven
        self._forgotten = True  # subscribers forgot all since the last proof (none at start)
        self._delivering: bool | None = None  # what was last logged; None: nothing yet
        self._task = BackgroundTask(self._listen_forever, "notification-listener")

    @property
    def listening(self) -> bool:
        """True while a heartbeat sent at most `max_silence` seconds ago has been received."""
        proven_at = self._proven_at
        return proven_at is not None and self._clock() - proven_at <= self._max_silence

    def subscribe(
        self, channel: str, on_notification: Callable[[str], None], on_lost: Callable[[], None]
    ) -> None:
        """LISTEN to `channel` too; call before `start` (a running listener would miss it)."""
        self._subscriptions[channel] = _Subscription(on_notification, on_lost)

    def start(self) -> None:
        self._task.start()

    async def aclose(self) -> None:
        await self._task.aclose()

    # --- proof ---------------------------------------------------------------------------------

    def _on_heartbeat(self, payload: str) -> None:
        try:
            number = int(payload)
        except ValueError:
            return
        sent_at = self._sent.get(number)
        if sent_at is None:
            return  # sent before this connection listened, or not by this listener
        for older in [n for n in self._sent if n <= number]:
            del self._sent[older]
        if not self.listening:
            # Back after a gap: what the caches hold may have missed a dropped notification.
            self._forget()
        self._proven_at = sent_at
        if self.listening:
            self._forgotten = False
            self._report_delivered()

    def _forget(self) -> None:
        """Tell every subscriber to drop what it holds, once per gap in the proof."""
        if self._forgotten:
            return
        self._forgotten = True
        for subscription in self._subscriptions.values():
            subscription.on_lost()

    def _check_silence(self) -> None:
        if self.listening:
            return
        self._forget()
        last = self._proven_at if self._proven_at is not None else self._silent_since
        if self._clock() - last > self._max_silence:
            self._report_not_delivered(
                f"no heartbeat received for {self._max_silence:g} s on a connection that is up"
            )

    def _connection_lost(self) -> None:
        self._proven_at = None
        self._silent_since = self._clock()
        self._sent.clear()
        self._forget()

    def _report_not_delivered(self, reason: str) -> None:
        if self._delivering is False:
            logger.debug("notifications still not delivered (%s)", reason)
            return
        self._delivering = False
        metrics.NOTIFICATIONS_DELIVERED.set(0)
        logger.warning(
            "notifications are not being delivered (%s); in-process caches are bypassed "
            "until they are",
            reason,
        )

    def _report_delivered(self) -> None:
        if self._delivering is True:
            return
        again = self._delivering is False
        self._delivering = True
        metrics.NOTIFICATIONS_DELIVERED.set(1)
        logger.info(
            "notifications delivered again; in-process caches in use"
            if again
            else "notifications delivered; in-process caches in use",
            extra={"channels": len(self._subscriptions)},
        )

    # --- connections ---------------------------------------------------------------------------

    async def _listen_forever(self) -> None:
        backoff = self._min_backoff
        while True:
            started = time.monotonic()
            try:
                await self._listen_once()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                self._report_not_delivered(
                    f"listener connection down: {type(error).__name__}: {error}"
                )
            except Exception:
                logger.exception("notification listener failed; retrying")
                self._report_not_delivered("listener failed")
            if time.monotonic() - started > self._max_backoff:
                backoff = self._min_backoff  # it ran for a while: a fresh failure
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
            backoff = min(backoff * 2, self._max_backoff)

    async def _listen_once(self) -> None:
        self._silent_since = self._clock()
        connection = await self._connect()
        closed = asyncio.Event()
        connection.add_termination_listener(lambda _: closed.set())
        sender: asyncpg.Connection | None = None
        try:
            # The heartbeat's sender: another session, as every writer whose change we must
            # hear of is.
            sender = await self._connect()
            sender.add_termination_listener(lambda _: closed.set())
            for channel, subscription in self._subscriptions.items():
                await connection.add_listener(channel, _payload_to(subscription.on_notification))
            await connection.add_listener(self.heartbeat_channel, _payload_to(self._on_heartbeat))
            # Only heartbeats sent from here on can be received on this connection.
            self._silent_since = self._clock()
            while True:
                number = await self._send_heartbeat(sender)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._heartbeat_interval):
                        await closed.wait()
                if closed.is_set():
                    raise ConnectionError("listener connection closed")
                if number in self._sent:
                    # Not back within its interval: is the connection alive at all? One that
                    # answers but delivers nothing is kept, so delivery is seen when it resumes.
                    self._check_silence()
                    await connection.execute("SELECT 1", timeout=self._ping_timeout)
        finally:
            self._connection_lost()
            connection.terminate()
            if sender is not None:
                sender.terminate()

    async def _send_heartbeat(self, sender: asyncpg.Connection) -> int:
        now = self._clock()
        # Heartbeats older than the silence bound can no longer prove anything.
        for number in [n for n, sent_at in self._sent.items() if now - sent_at > self._max_silence]:
            del self._sent[number]
        self._next_beat += 1
        number = self._next_beat
        self._sent[number] = now
        # The simple query protocol (no prepared statement), which every proxy passes; the
        # channel is this listener's own hex name and the payload a number: nothing to escape.
        await sender.execute(
            f"NOTIFY {self.heartbeat_channel}, '{number}'", timeout=self._ping_timeout
        )
        return number


def _payload_to(on_notification: Callable[[str], None]) -> Callable[..., None]:
    def deliver(_connection: object, _pid: int, _channel: str, payload: object) -> None:
        on_notification(str(payload))

    return deliver
