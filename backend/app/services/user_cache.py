"""Active users by Cognito sub, in process, evicted the moment their row changes anywhere.

Authenticating a request would otherwise cost a pool checkout and a SELECT before the endpoint
runs. This cache answers repeat callers from memory and stays exact because PostgreSQL tells it
about every change:

- A trigger on `users` (migration 0002) sends `NOTIFY users_changed, '<cognito_user_id>'` for
  each inserted, updated or deleted row (`'*'` for a mass change or TRUNCATE) when the writing
  transaction commits, whichever process or instance wrote it.
- The web worker's `NotificationListener` (`app.core.listener`) delivers them; the cache is used
  only while it is listening, which it proves with a heartbeat NOTIFY it must receive back: within a
  few seconds of the last proof (a lost connection, a proxy that drops notifications) every
  lookup goes to the database, and the cache is cleared before it is used again.
- A commit through this web worker's request sessions evicts the users it wrote before the response
  is sent (`session_class_evicting_from`), so a change applies to this worker's very next request
  without waiting for the notification.
- A lookup that raced with a change is never stored: `ticket()` is taken before the row is
  read, and `put` refuses if any change was seen in between.
- Entries also expire within `ttl_seconds`, a bound on staleness should a single notification
  ever be lost on a path that still delivers the heartbeats. Each user's entry lives for a share
  of it between `1 - EXPIRY_SPREAD` and 1, fixed by the sub (`lifetime_share`): users cached
  together (everyone signing in at nine, a fleet's warm-up) do not all expire in one instant
  and come back to the database in one burst that queues every request behind it.

Only active users are stored; an unknown or inactive sub always goes to the database. With the
`USER_CACHE` setting off (no listener) nothing is cached: every request reads its user.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Final

import asyncpg
from cachetools import TLRUCache
from sqlalchemy import event, inspect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import ORMExecuteState, Session

from app.core import metrics
from app.core.db import fetch_with_driver
from app.core.encoding import ReusedBody
from app.core.listener import NotificationListener
from app.core.pagination import TicketedCache, V
from app.core.principal import Principal
from app.core.roles import Role
from app.models.user import User
from app.schemas.user import UserResponse

CHANNEL: Final = "users_changed"
EVERYONE: Final = "*"
_PENDING_KEY: Final = "one_system.users_written"


@dataclass(frozen=True, slots=True)
class AuthenticatedUser(Principal):
    """The caller, as its users row read at authentication: an immutable snapshot.

    The principal every protected route receives, with the rest of the row (a profile is
    answered from it). Immutable, so one cached instance can serve every request of that user
    without requests sharing mutable state, and no ORM object has to be built per request.
    """

    cognito_user_id: str
    email: str
    full_name: str
    is_active: bool
    created_at: datetime
    updated_at: datetime
    sessions_revoked_at: datetime | None
    # The profile as `/users/me` sends it, rendered on first use (`profile_json`).
    _profile_json: bytes | None = field(default=None, init=False, repr=False, compare=False)

    def profile_json(self) -> bytes:
        """The user's own profile (`UserResponse`) as JSON, rendered once per snapshot.

        Every request of a user is answered from the same cached snapshot, so its profile is
        validated and serialised once, not per request (most of a cached `/users/me`'s own
        work). A memo, not state: any request that renders it gets the same bytes.
        """
        rendered = self._profile_json
        if rendered is None:
            rendered = UserResponse.model_validate(self).model_dump_json().encode()
            object.__setattr__(self, "_profile_json", rendered)  # frozen: the memo's one write
        return rendered

    def accepts_session_started_at(self, started_at: int) -> bool:
        """False for a token of a session begun before the user's sessions were revoked."""
        revoked_at = self.sessions_revoked_at
        return revoked_at is None or started_at >= revoked_at.timestamp()


_SNAPSHOT_COLUMNS: Final = tuple(column.name for column in fields(AuthenticatedUser) if column.init)
# The driver's own SQL (`fetch_with_driver`), of the snapshot's columns. One array parameter, so
# one prepared statement serves any number of subs (an index scan each).
_USERS_BY_SUBS: Final = (
    f"SELECT {', '.join(_SNAPSHOT_COLUMNS)} FROM {User.__tablename__}"  # noqa: S608 - our names
    " WHERE cognito_user_id = ANY($1::varchar[])"
)


def _snapshot(row: asyncpg.Record) -> AuthenticatedUser:
    values = dict(row.items())
    # The driver answers the role as the text stored (SQLAlchemy's enum type is not in the way).
    values["role"] = Role(values["role"])
    return AuthenticatedUser(**values)


# The share of the TTL over which a cohort of users cached in one instant expires.
EXPIRY_SPREAD: Final = 0.2


def lifetime_share(sub: str) -> float:
    """How much of the TTL this user's entry lives: from `1 - EXPIRY_SPREAD` to 1, by the sub
    (a hash, so stable across processes and spread evenly over users)."""
    return 1.0 - EXPIRY_SPREAD * (zlib.crc32(sub.encode()) / 0xFFFFFFFF)


# Reads of missed users at once; the misses that arrive meanwhile make the next batch.
READS_IN_FLIGHT: Final = 2

_LOOKUP_HIT: Final = ("hit",)
_LOOKUP_MISSED: Final = ("miss",)
_LOOKUP_BYPASSED: Final = ("bypassed",)


class UserCache:
    def __init__(
        self,
        listener: NotificationListener | None,
        *,
        max_entries: int = 10_000,
        ttl_seconds: float = 300.0,
        timer: Callable[[], float] = time.monotonic,
        counted: bool = True,
    ) -> None:
        self._listener = listener
        self._counted = counted
        self._entries: TLRUCache[str, AuthenticatedUser] = TLRUCache(
            maxsize=max_entries,
            ttu=lambda sub, _, now: now + ttl_seconds * lifetime_share(sub),
            timer=timer,
        )
        self.ttl_seconds = ttl_seconds
        # Bumped by every change seen (and by losing the listener): a lookup that started under
        # an older generation may have read an outdated row and is not stored.
        self._generation = 0
        self._changed = asyncio.Event()
        if listener is not None:
            listener.subscribe(CHANNEL, self._on_notification, self._on_listener_lost)

    @property
    def trusted(self) -> bool:
        """Whether what is cached may be served: only while delivery is proven (`listening`)."""
        return self._listener is not None and self._listener.listening

    @property
    def generation(self) -> int:
        return self._generation

    def get(self, sub: str) -> AuthenticatedUser | None:
        if not self.trusted:
            if self._counted:
                metrics.PER_REQUEST.user_lookups.add(_LOOKUP_BYPASSED)
            return None
        user = self._entries.get(sub)
        if self._counted:
            metrics.PER_REQUEST.user_lookups.add(_LOOKUP_MISSED if user is None else _LOOKUP_HIT)
        return user

    def ticket(self) -> int | None:
        """Take before reading a user from the database; hand to `put` afterwards."""
        return self._generation if self.trusted else None

    def put(self, ticket: int | None, user: AuthenticatedUser) -> None:
        if ticket is None or ticket != self._generation or not self.trusted:
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

    def _on_notification(self, payload: str) -> None:
        self.invalidate([payload])

    def _on_listener_lost(self) -> None:
        # Called when delivery stops being proven and again, if need be, before it is trusted
        # anew: whatever is held may have missed a change.
        self.invalidate([EVERYONE])


class ActiveUsers:
    """Who a token's sub is: the user lookup the authentication dependency is given.

    A token issued before the user's sessions were revoked (a deactivation) is refused even
    once the user is active again: they sign in anew.

    From the cache when it can vouch for the entry, else from the database: one autocommit
    SELECT through the driver (`fetch_with_driver`: no session, no BEGIN/COMMIT, no ORM
    object). Misses that arrive together are read together: the first schedules a read for the
    next turn of the event loop, and every miss until then joins it, so one checkout and one
    indexed `= ANY(...)` SELECT serve them all. At most `READS_IN_FLIGHT` reads run at once;
    while they do, the misses that arrive make one batch that goes out when one ends, so the
    busier the worker, the larger its batches. Under load, a read's cost (a checkout and a
    round trip) is shared by the batch (docs/performance.md); alone, a miss waits one turn of
    the loop. A miss never joins a read already sent, so it always sees what was committed
    before it arrived. A failed read fails every request of its
    batch with the same error, which each maps as it would its own.
    """

    def __init__(self, cache: UserCache, engine: AsyncEngine) -> None:
        self._cache = cache
        self._engine = engine
        self._next_read: dict[str, list[asyncio.Future[AuthenticatedUser | None]]] | None = None
        self._send_scheduled = False
        self._reads: set[asyncio.Task[None]] = set()

    async def active_user(
        self, cognito_sub: str, session_started_at: int
    ) -> AuthenticatedUser | None:
        user = await self._active_user(cognito_sub)
        if user is None or not user.accepts_session_started_at(session_started_at):
            return None
        return user

    async def _active_user(self, cognito_sub: str) -> AuthenticatedUser | None:
        cached = self._cache.get(cognito_sub)
        if cached is not None:
            return cached
        if self._next_read is None:
            self._next_read = {}
            self._schedule_send()
        answer: asyncio.Future[AuthenticatedUser | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._next_read.setdefault(cognito_sub, []).append(answer)
        return await answer

    def _schedule_send(self) -> None:
        # The next batch goes out on the next turn of the loop, or when a read in flight ends.
        if self._next_read is None or self._send_scheduled:
            return
        if len(self._reads) < READS_IN_FLIGHT:
            self._send_scheduled = True
            # In a context of its own: the read belongs to no single request.
            asyncio.get_running_loop().call_soon(self._send_read, context=contextvars.Context())

    def _send_read(self) -> None:
        self._send_scheduled = False
        waiting, self._next_read = self._next_read or {}, None
        read = asyncio.create_task(self._read(waiting))
        self._reads.add(read)
        read.add_done_callback(self._read_done)

    def _read_done(self, read: asyncio.Task[None]) -> None:
        self._reads.discard(read)
        self._schedule_send()

    async def _read(
        self, waiting: dict[str, list[asyncio.Future[AuthenticatedUser | None]]]
    ) -> None:
        ticket = self._cache.ticket()
        try:
            rows = await fetch_with_driver(self._engine, _USERS_BY_SUBS, list(waiting))
        except BaseException as error:
            for answers in waiting.values():
                for answer in answers:
                    if not answer.done():
                        answer.set_exception(error)
            if not isinstance(error, Exception):
                raise
            return
        found = {row["cognito_user_id"]: row for row in rows}
        for sub, answers in waiting.items():
            row = found.get(sub)
            user = None
            if row is not None and row["is_active"]:
                user = _snapshot(row)
                self._cache.put(ticket, user)
            for answer in answers:
                if not answer.done():
                    answer.set_result(user)


# ---------------------------------------------------------------------------------------------
# Writes through this worker: evicted at commit, without waiting for the notification.


def session_class_evicting_from(cache: UserCache) -> type[Session]:
    """A Session class whose commits evict the users they wrote from `cache`.

    A class of its own per app, so the hooks apply to the request sessions of that app only:
    nothing is registered on SQLAlchemy's global `Session` (tools, tests and other apps in the
    same process are left alone).
    """

    class EvictingSession(Session):
        pass

    def pending(session: Session) -> set[str]:
        written: set[str] = session.info.setdefault(_PENDING_KEY, set())
        return written

    @event.listens_for(EvictingSession, "after_flush")
    def note_flushed_users(session: Session, _: Any) -> None:
        # New users too: they change the counts of the user list (`UserCountCache`).
        for instance in (*session.new, *session.dirty, *session.deleted):
            if isinstance(instance, User):
                pending(session).add(instance.cognito_user_id)
                # A changed sub must evict the old one too.
                pending(session).update(
                    inspect(instance).attrs.cognito_user_id.history.deleted or ()
                )

    @event.listens_for(EvictingSession, "do_orm_execute")
    def note_bulk_user_writes(state: ORMExecuteState) -> None:
        if not (state.is_insert or state.is_update or state.is_delete):
            return
        mapper = state.bind_mapper
        if mapper is not None and mapper.class_ is User:
            pending(state.session).add(EVERYONE)

    @event.listens_for(EvictingSession, "after_commit")
    def evict_committed_users(session: Session) -> None:
        written = session.info.pop(_PENDING_KEY, None)
        if written:
            cache.invalidate(written)

    @event.listens_for(EvictingSession, "after_soft_rollback")
    def forget_rolled_back_writes(session: Session, _: Any) -> None:
        session.info.pop(_PENDING_KEY, None)

    return EvictingSession


class UserListCache(TicketedCache[V]):
    """What the user list reads (how many users match each filter, whole pages), exact while
    the listener is up.

    Counting every user costs milliseconds on each page of the admin list, and a page costs
    about a millisecond of SQL and Python, while the answer only changes when a users row does.
    The user cache's generation is the ticket: every change PostgreSQL notifies (inserts
    included) or this worker commits moves it on, so a stale count or page is never served;
    while the listener is down nothing is cached at all.
    """

    def __init__(self, users: UserCache, *, max_entries: int = 1024) -> None:
        super().__init__(users, ttl_seconds=users.ttl_seconds, max_entries=max_entries)


UserCountCache = UserListCache[int]
# A page's answer, as sent: about 13 KB for 50 users (about 3 KB gzipped).
UserPageCache = UserListCache[ReusedBody]
PAGES_CACHED: Final = 128
