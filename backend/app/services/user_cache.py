"""Active users by Cognito sub, in process, evicted the moment their row changes anywhere.

Authenticating a request used to cost a pool checkout with its ping, BEGIN, a SELECT and COMMIT:
five database round trips before the endpoint ran. This cache answers repeat callers from memory
and stays exact because PostgreSQL tells it about every change:

- A trigger on `users` (migration 0002) sends `NOTIFY users_changed, '<cognito_user_id>'` for
  each updated or deleted row (`'*'` for a mass change or TRUNCATE) when the writing transaction
  commits, whichever process or instance wrote it.
- Each app instance (each worker) holds one dedicated asyncpg connection that LISTENs and evicts
  what the notifications name. Only while that connection is up and its LISTEN has succeeded is
  the cache used at all; when it drops, the cache is cleared and bypassed (every request reads
  the row again, as without a cache) until a reconnection, retried with backoff, LISTENs again.
  A ping every `ping_interval` seconds finds a connection that died silently.
- A commit in this process that wrote users evicts them itself, synchronously, before the
  response is sent, so a change made through this instance applies to its next request without
  waiting for the notification. A change made elsewhere applies once its notification arrives:
  PostgreSQL sends it at commit, and it takes well under a millisecond on a healthy network.
- A lookup that raced with a change is never stored: `ticket()` is taken before the row is
  read, and `put` refuses if any change was seen in between.
- Entries also expire after `ttl_seconds`, a bound on staleness should a notification ever be
  lost on a connection that has not yet been noticed as dead.

Only active users are stored; an unknown or inactive sub always goes to the database.

The same connection carries other caches' channels (`subscribe`), so a worker holds one
listening connection however many caches PostgreSQL keeps exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg
from cachetools import TTLCache
from fastapi import Request
from sqlalchemy import event, inspect
from sqlalchemy.orm import ORMExecuteState, Session

from app.core.roles import Role
from app.models.user import User

logger = logging.getLogger(__name__)

CHANNEL: Final = "users_changed"
EVERYONE: Final = "*"
# `Session.info` keys: the cache a session reports its writes to, and the subs it wrote.
SESSION_CACHE_KEY: Final = "one_system.user_cache"
_PENDING_KEY: Final = "one_system.user_cache.pending"

Connect = Callable[[], Awaitable[asyncpg.Connection]]


@dataclass(frozen=True, slots=True)
class AuthenticatedUser:
    """The caller, as its users row read at authentication: an immutable snapshot.

    Immutable, so one cached instance can serve every request of that user without requests
    sharing mutable state, and no ORM object has to be built per request.
    """

    id: uuid.UUID
    cognito_user_id: str
    email: str
    full_name: str
    role: Role
    responsible_province: str | None
    is_active: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, user: User) -> AuthenticatedUser:
        return cls(
            id=user.id,
            cognito_user_id=user.cognito_user_id,
            email=user.email,
            full_name=user.full_name,
            role=user.role,
            responsible_province=user.responsible_province,
            is_active=user.is_active,
            created_at=user.created_at,
            updated_at=user.updated_at,
        )


class UserCache:
    def __init__(
        self,
        connect: Connect,
        *,
        max_entries: int = 10_000,
        ttl_seconds: float = 300.0,
        ping_interval: float = 10.0,
        ping_timeout: float = 2.0,
        min_backoff: float = 0.5,
        max_backoff: float = 30.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connect = connect
        self._entries: TTLCache[str, AuthenticatedUser] = TTLCache(
            maxsize=max_entries, ttl=ttl_seconds, timer=timer
        )
        self.ttl_seconds = ttl_seconds
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._listening = False
        # Bumped by every change seen (and by losing the listener): a lookup that started under
        # an older generation may have read an outdated row and is not stored.
        self._generation = 0
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._subscribers: dict[str, Callable[[], None]] = {}

    # -- what requests use ----------------------------------------------------------------

    @property
    def listening(self) -> bool:
        return self._listening

    @property
    def generation(self) -> int:
        return self._generation

    def get(self, sub: str) -> AuthenticatedUser | None:
        if not self._listening:
            return None
        return self._entries.get(sub)

    def ticket(self) -> int | None:
        """Take before reading a user from the database; hand to `put` afterwards."""
        return self._generation if self._listening else None

    def put(self, ticket: int | None, user: AuthenticatedUser) -> None:
        if ticket is None or ticket != self._generation or not self._listening:
            return
        if user.is_active:
            self._entries[user.cognito_user_id] = user

    def invalidate(self, subs: Iterable[str]) -> None:
        """Forget these users (`EVERYONE` among them: all users)."""
        self._generation += 1
        for sub in subs:
            if sub == EVERYONE:
                self._entries.clear()
                break
            self._entries.pop(sub, None)
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_for_change(self) -> None:
        """Until the next invalidation; for tests and tools, under their own timeout."""
        await self._changed.wait()

    def __len__(self) -> int:
        return len(self._entries)

    def subscribe(self, channel: str, forget: Callable[[], None]) -> None:
        """Also LISTEN to `channel`; `forget` runs on each of its notifications and whenever
        the listener goes down (what was cached under it can no longer be trusted). Call
        before `start`."""
        self._subscribers[channel] = forget

    # -- the listener ---------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._listen_forever(), name="user-cache-listener")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._stop_listening()

    def _stop_listening(self) -> None:
        # Notifications sent while nobody listens are lost, so nothing cached can be trusted.
        self._listening = False
        self.invalidate([EVERYONE])
        for forget in self._subscribers.values():
            forget()

    def _on_notification(
        self, _connection: object, _pid: int, _channel: str, payload: object
    ) -> None:
        self.invalidate([str(payload)])

    async def _listen_forever(self) -> None:
        backoff = self._min_backoff
        while True:
            started = time.monotonic()
            try:
                await self._listen_once()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                logger.warning(
                    "user cache listener down (%s: %s); users are read from the database "
                    "on every request until it reconnects",
                    type(error).__name__,
                    error,
                )
            except Exception:
                logger.exception("user cache listener failed; retrying")
            if time.monotonic() - started > self._max_backoff:
                backoff = self._min_backoff  # it ran for a while: a fresh failure
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
            backoff = min(backoff * 2, self._max_backoff)

    async def _listen_once(self) -> None:
        connection = await self._connect()
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _: lost.set())
        try:
            await connection.add_listener(CHANNEL, self._on_notification)
            for channel, forget in self._subscribers.items():
                await connection.add_listener(channel, _ignoring_arguments(forget))
            # From here on every committed change is notified, so the cache may be trusted;
            # anything cached before was cleared when the last connection went.
            self._listening = True
            logger.info("user cache listening for user changes")
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._ping_interval):
                        await lost.wait()
                if lost.is_set():
                    raise ConnectionError("listener connection closed")
                await connection.fetchval("SELECT 1", timeout=self._ping_timeout)
        finally:
            self._stop_listening()
            connection.terminate()


def _ignoring_arguments(forget: Callable[[], None]) -> Callable[..., None]:
    def on_notification(*_: object) -> None:
        forget()

    return on_notification


async def get_user_cache(request: Request) -> UserCache | None:
    """The app instance's user cache; None where the app runs without one.

    `async` although it awaits nothing: FastAPI would run a plain function in a worker thread.
    """
    cache: UserCache | None = getattr(request.state, "user_cache", None)
    return cache


# ---------------------------------------------------------------------------------------------
# Writes through this process: evicted at commit, without waiting for the notification.


def _pending(session: Session) -> set[str] | None:
    if SESSION_CACHE_KEY not in session.info:
        return None
    pending: set[str] = session.info.setdefault(_PENDING_KEY, set())
    return pending


@event.listens_for(Session, "after_flush")
def _note_flushed_users(session: Session, _: Any) -> None:
    pending = _pending(session)
    if pending is None:
        return
    # New users too: they change the counts of the user list (`UserCountCache`).
    for instance in (*session.new, *session.dirty, *session.deleted):
        if isinstance(instance, User):
            pending.add(instance.cognito_user_id)
            # A changed sub must evict the old one too.
            pending.update(inspect(instance).attrs.cognito_user_id.history.deleted or ())


@event.listens_for(Session, "do_orm_execute")
def _note_bulk_user_writes(state: ORMExecuteState) -> None:
    if not (state.is_insert or state.is_update or state.is_delete):
        return
    mapper = state.bind_mapper
    pending = _pending(state.session)
    if pending is not None and mapper is not None and mapper.class_ is User:
        pending.add(EVERYONE)


@event.listens_for(Session, "after_commit")
def _evict_committed_users(session: Session) -> None:
    pending = session.info.pop(_PENDING_KEY, None)
    cache = session.info.get(SESSION_CACHE_KEY)
    if pending and isinstance(cache, UserCache):
        cache.invalidate(pending)


@event.listens_for(Session, "after_soft_rollback")
def _forget_rolled_back_writes(session: Session, _: Any) -> None:
    session.info.pop(_PENDING_KEY, None)


class UserCountCache:
    """How many users match each filter of the user list, exact while the listener is up.

    Counting 100k rows costs milliseconds on every page of the admin list, while the answer
    only changes when a users row does. An entry remembers the user cache's generation when it
    was counted, and every change PostgreSQL notifies (inserts included) or this instance
    commits moves the generation on, so a stale count is never served; while the listener is
    down nothing is cached at all.
    """

    def __init__(self, users: UserCache, *, max_entries: int = 1024) -> None:
        self._users = users
        self._counts: TTLCache[Hashable, tuple[int, int]] = TTLCache(
            maxsize=max_entries, ttl=users.ttl_seconds
        )

    async def get_or_count(self, key: Hashable, count: Callable[[], Awaitable[int]]) -> int:
        ticket = self._users.ticket()
        entry = self._counts.get(key) if ticket is not None else None
        if entry is not None and entry[0] == ticket:
            return entry[1]
        total = await count()
        if ticket is not None and ticket == self._users.ticket():
            self._counts[key] = (ticket, total)
        return total
