"""The outbox worker: a table, a claim, a handler per kind.

`record` adds an entry in the caller's transaction. The worker carries entries out one key at a
time:

1. **Claim** the oldest due key that nobody holds: a lease row (`outbox_leases`) with a holder
   id of this claim and an expiry, taken in one statement, so two processes never hold one key
   (the primary key decides; the loser takes nothing this turn).
2. **Read** the key's entries, then hand them to the kind's handler, which makes the outside
   world match the state they promise. Entries are read before the handler reads that state,
   so a change committed meanwhile leaves an entry this turn does not delete: it is carried out
   again next turn. One key's work is in order across processes because only the holder works.
3. **Finish, fenced by the holder id**: on success the entries read are deleted and the lease
   given back; on failure they are put back with capped exponential backoff. Both happen only
   while this claim still holds the lease. A claim that lost it (its process was paused past the
   lease, or cut off from the database) records the key afresh instead, so whatever it did late
   is put right by whoever works on the key next.

A turn is bounded by construction inside its lease: the handler's work, outside and database
alike, is cut at `turn_seconds` (the lease less `CLAIM_MARGIN_SECONDS`, which covers the claim's
own statement), and the finish is fenced anyway. A call whose outcome is unknown (a timeout)
may still land later, so convergence is **confirmed by reading back**: after any failure of a
key's work (each call is sent once: handler clients make no SDK retries, the outbox is the only
retrier), the key's next success records a confirmation due `settle_seconds` later, longer than
any call can still land; a claim that lost its lease records one too, whatever its outcome.
A confirmation belongs to its key: it is handed out only once due, so no other entry or change
consumes it early, and the handler reads the outside world back and repairs what differs
(recording another). A failure that says the outside world is unavailable ends the batch
early: the other keys would only wait on it too.

No database connection is held while a handler works outside the database. The worker runs in
a process of its own (`app.worker`) and polls every `poll_interval` seconds; the web processes
only record.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Protocol

from sqlalchemy import delete, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement

from app.core.compensation import undo_unless_committed
from app.core.db import ReadSessions, Sessionmaker
from app.core.errors import (
    DATABASE_UNAVAILABLE_ERRORS,
    DomainError,
    ServiceUnavailableError,
    describe_database_error,
)
from app.core.tasks import BackgroundTask
from app.models.outbox import LAST_ERROR_LENGTH, OutboxEntry, OutboxLease

logger = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS: Final = 30.0
# Longer than a handler's bounded outside work (the Cognito deadline, at most 20 s) plus the
# database work around it (statement timeouts of seconds); what a killed worker held waits
# this long.
LEASE_SECONDS: Final = 30.0
# After a failure, how long the key's next success is confirmed by reading back: longer than a
# call can be in flight (connect and read timeouts, 2 + 5 s by default, one attempt).
SETTLE_SECONDS: Final = 10.0
SETTLE_CHECK: Final = "settle_check"
# What a turn leaves of its lease for the claim itself (the statement that counts the attempt,
# bounded by the statement timeout) and for the finish to start before the lease runs out.
CLAIM_MARGIN_SECONDS: Final = 10.0


def settle_seconds_for(connect_timeout: float, read_timeout: float) -> float:
    """When a key whose work failed is read back: after any call it sent can have landed (one
    attempt each, bounded by the connect and read timeouts), with a margin."""
    return max(SETTLE_SECONDS, connect_timeout + read_timeout + 3.0)


class _Outcome(enum.Enum):
    DONE = enum.auto()
    FAILED = enum.auto()  # retried later
    UNAVAILABLE = enum.auto()  # retried later, and the batch ends: the rest would wait too


@dataclass(frozen=True, slots=True)
class Claim:
    kind: str
    key: str
    holder: uuid.UUID
    entries: Sequence[OutboxEntry]

    @property
    def retried(self) -> bool:
        """Whether an earlier attempt at this work failed (so a late landing is possible)."""
        return any(entry.attempts > 1 for entry in self.entries)

    @property
    def confirming(self) -> bool:
        """Whether the claim is only confirmations: read back, repair what differs."""
        return bool(self.entries) and all(is_confirmation(entry) for entry in self.entries)


def is_confirmation(entry: OutboxEntry) -> bool:
    return bool(entry.payload.get(SETTLE_CHECK))


Finish = Callable[[AsyncSession], Awaitable[None]]


class Handler(Protocol):
    """Makes the outside world match what a key's entries promise.

    Raises a `DomainError` to have the entries retried later (a `ServiceUnavailableError` also
    ends the batch). May return database work that belongs with the deletion of the entries: it
    runs in the finishing transaction, only while the claim still holds the lease.
    """

    async def handle(self, claim: Claim) -> Finish | None: ...


def record(
    session: AsyncSession, kind: str, key: str, payload: Mapping[str, Any] | None = None
) -> None:
    """Promise, in the session's transaction, that `kind`'s handler will carry out `payload`."""
    session.add(OutboxEntry(kind=kind, key=key, payload=dict(payload or {})))


async def take_lease(
    session: AsyncSession, kind: str, key: str, holder: uuid.UUID, seconds: float
) -> bool:
    """Take the key's lease for `holder` unless someone else holds it; in the session's
    transaction (a request taking a key for its own work commits it at once)."""
    taken = await session.execute(
        pg_insert(OutboxLease)
        .values(
            kind=kind, key=key, holder=holder, expires_at=func.now() + timedelta(seconds=seconds)
        )
        .on_conflict_do_update(
            index_elements=[OutboxLease.kind, OutboxLease.key],
            set_={"holder": holder, "expires_at": func.now() + timedelta(seconds=seconds)},
            where=(OutboxLease.expires_at <= func.now()) | (OutboxLease.holder == holder),
        )
        .returning(OutboxLease.key)
    )
    return taken.first() is not None


async def give_back_lease(session: AsyncSession, kind: str, key: str, holder: uuid.UUID) -> bool:
    """Give the lease back if `holder` still holds it; whether it did (the fence)."""
    given = await session.execute(
        delete(OutboxLease)
        .where(OutboxLease.kind == kind, OutboxLease.key == key, OutboxLease.holder == holder)
        .returning(OutboxLease.key)
    )
    return given.first() is not None


class OutboxWorker:
    def __init__(
        self,
        sessions: Sessionmaker,
        read_sessions: ReadSessions,
        handlers: Mapping[str, Handler] | None = None,
        *,
        poll_interval: float = 0.5,
        batch_size: int = 20,
        lease_seconds: float = LEASE_SECONDS,
        settle_seconds: float = SETTLE_SECONDS,
        turn_seconds: float | None = None,
        heartbeat: Callable[[], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self.read_sessions = read_sessions
        self._handlers = dict(handlers or {})
        self._poll_interval = poll_interval
        self._batch_size = batch_size
        self._lease_seconds = lease_seconds
        self._settle_seconds = settle_seconds
        self._turn_seconds = turn_seconds or lease_seconds - CLAIM_MARGIN_SECONDS
        if not 0 < self._turn_seconds <= lease_seconds - CLAIM_MARGIN_SECONDS:
            raise ValueError("a turn must end inside its lease, less the claim's margin")
        self._heartbeat = heartbeat
        self._task = BackgroundTask(self._run_forever, "outbox")

    def register(self, kind: str, handler: Handler) -> None:
        self._handlers[kind] = handler

    @property
    def handlers(self) -> Mapping[str, Handler]:
        return self._handlers

    def start(self) -> None:
        self._task.start()

    async def aclose(self) -> None:
        await self._task.aclose()

    async def count(self, *conditions: ColumnElement[bool]) -> int:
        """How many entries meet `conditions`, due or not (for tests and operators)."""
        async with self.read_sessions() as session:
            count = await session.scalar(
                select(func.count()).select_from(OutboxEntry).where(*conditions)
            )
        return int(count or 0)

    async def _run_forever(self) -> None:
        while True:
            try:
                while await self.run_once() == self._batch_size:
                    pass  # a full batch: there may be more
            except Exception as error:
                # The database is down or refused the claim: nothing was claimed, try later.
                logger.warning(
                    "outbox: cannot reach the outbox: %s", describe_database_error(error)
                )
            else:
                if self._heartbeat is not None:
                    self._heartbeat()
            await asyncio.sleep(self._poll_interval)

    async def run_once(self) -> int:
        """Carry out up to a batch of due keys; how many keys were claimed."""
        for done in range(self._batch_size):
            claim = await self._claim()
            if claim is None:
                return done
            if await self.carry_out(claim) is _Outcome.UNAVAILABLE:
                return done + 1
        return self._batch_size

    async def _claim(self) -> Claim | None:
        holder = uuid.uuid4()
        free = ~(
            select(OutboxLease.key)
            .where(
                OutboxLease.kind == OutboxEntry.kind,
                OutboxLease.key == OutboxEntry.key,
                OutboxLease.expires_at > func.now(),
            )
            .exists()
        )
        due = (
            select(OutboxEntry.kind, OutboxEntry.key)
            .where(OutboxEntry.next_attempt_at <= func.now(), free)
            .where(OutboxEntry.kind.in_(self._handlers))
            .order_by(OutboxEntry.next_attempt_at, OutboxEntry.id)
            .limit(1)
        )
        async with self._sessions() as session, session.begin():
            found = (await session.execute(due)).first()
            if found is None:
                return None
            return await self._take(session, found.kind, found.key, holder)

    async def _take(
        self, session: AsyncSession, kind: str, key: str, holder: uuid.UUID, *, repair: bool = False
    ) -> Claim | None:
        """Lease the key and hand out its due entries (a `repair` also takes work not yet due;
        a confirmation is never handed out before it is due)."""
        if not await take_lease(session, kind, key, holder, self._lease_seconds):
            return None
        due = OutboxEntry.next_attempt_at <= func.now()
        if repair:
            due = due | ~OutboxEntry.payload.has_key(SETTLE_CHECK)
        entries = (
            await session.scalars(
                update(OutboxEntry)
                .where(OutboxEntry.kind == kind, OutboxEntry.key == key, due)
                .values(attempts=OutboxEntry.attempts + 1)
                .returning(OutboxEntry)
            )
        ).all()
        return Claim(kind, key, holder, sorted(entries, key=lambda entry: entry.id))

    async def carry_out_key(self, kind: str, key: str) -> bool:
        """Carry out one key's work now, due or not, with or without entries (a repair);
        whether it was done (False: it failed, or someone else holds the key)."""
        async with self._sessions() as session, session.begin():
            claim = await self._take(session, kind, key, uuid.uuid4(), repair=True)
        if claim is None:
            return False
        return await self.carry_out(claim) is _Outcome.DONE

    def record_confirmation(self, session: AsyncSession, kind: str, key: str) -> None:
        """A read-back of the key, due once every call issued until now can have landed."""
        session.add(
            OutboxEntry(
                kind=kind,
                key=key,
                payload={SETTLE_CHECK: True},
                next_attempt_at=func.now() + timedelta(seconds=self._settle_seconds),
            )
        )

    async def carry_out(self, claim: Claim) -> _Outcome:
        """Hand the claim to its handler, within the turn's bound, and finish it."""
        handler = self._handlers[claim.kind]
        try:
            async with asyncio.timeout(self._turn_seconds):
                finish = await handler.handle(claim)
        except DomainError as error:
            await self._retry_later(claim, error.code, getattr(error, "retry_after_seconds", None))
            if isinstance(error, ServiceUnavailableError):
                return _Outcome.UNAVAILABLE
            return _Outcome.FAILED
        except TimeoutError:
            # Past the turn's bound (a database wait, say): the lease must outlive the turn.
            logger.warning(
                "outbox: %s work cut at its %.0f s bound", claim.kind, self._turn_seconds
            )
            await self._retry_later(claim, "turn_timeout", None)
            return _Outcome.FAILED
        except Exception as error:
            # A bug, or an entry it cannot read: said loudly, and retried with backoff rather
            # than holding the key until the lease runs out, again and again.
            logger.exception("outbox: the %s handler failed", claim.kind)
            await self._retry_later(claim, type(error).__name__, None)
            return _Outcome.FAILED
        try:
            return await self._finish(claim, finish)
        except DATABASE_UNAVAILABLE_ERRORS:
            raise  # the loop says the outbox cannot be reached; the lease runs out
        except Exception as error:
            logger.exception("outbox: finishing %s work failed", claim.kind)
            await self._retry_later(claim, type(error).__name__, None)
            return _Outcome.FAILED

    async def _finish(self, claim: Claim, finish: Finish | None) -> _Outcome:
        """Delete the entries handed out, fenced by the lease; what `finish` registers for after
        the commit (its audit lines) runs once it commits."""
        async with self._sessions() as session, undo_unless_committed(session), session.begin():
            if not await give_back_lease(session, claim.kind, claim.key, claim.holder):
                self._lost_lease(session, claim)
                return _Outcome.FAILED
            if finish is not None:
                await finish(session)
            await session.execute(
                delete(OutboxEntry).where(OutboxEntry.id.in_([e.id for e in claim.entries]))
            )
            if claim.retried:
                self.record_confirmation(session, claim.kind, claim.key)
        return _Outcome.DONE

    def _lost_lease(self, session: AsyncSession, claim: Claim) -> None:
        """Whatever this claim did may land after the new holder's work: read the key back once
        it all can have landed."""
        logger.warning(
            "outbox: lost the lease of a %s key while working on it; recorded afresh", claim.kind
        )
        self.record_confirmation(session, claim.kind, claim.key)

    async def _retry_later(self, claim: Claim, reason: str, delay: float | None) -> None:
        """Put the claim's entries back; after `delay` (a handler that knows when to look
        again says so), else after capped exponential backoff."""
        if delay is None:
            attempts = max((entry.attempts for entry in claim.entries), default=1)
            backoff = min(2.0**attempts, MAX_BACKOFF_SECONDS)
            delay = backoff * random.uniform(0.5, 1.0)  # noqa: S311 - jitter
        async with self._sessions() as session, session.begin():
            if not await give_back_lease(session, claim.kind, claim.key, claim.holder):
                # Someone else works on the key now; what this claim sent may still land.
                self._lost_lease(session, claim)
                return
            if not claim.entries:
                # A repair with no entry to put back: what it sent may still land.
                self.record_confirmation(session, claim.kind, claim.key)
            # Only the entries handed out: a confirmation not yet due keeps its time.
            await session.execute(
                update(OutboxEntry)
                .where(OutboxEntry.id.in_([entry.id for entry in claim.entries]))
                .values(
                    next_attempt_at=func.now() + timedelta(seconds=delay),
                    last_error=literal(reason[:LAST_ERROR_LENGTH]),
                )
            )
        logger.warning("outbox: %s work will be retried in %.1f s (%s)", claim.kind, delay, reason)
