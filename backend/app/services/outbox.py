"""The outbox: steps of any kind, recorded with the change that needs them, carried out later.

An entry is a **step** of a kind (its handler) for a key (a user, an email, a case): `record`
adds it in the caller's transaction, so the change and the promise commit together. The worker
(`OutboxWorker`, in the worker process) hands each key's steps to the kind's handler with three
guarantees and nothing more:

- **At least once.** A step is deleted only in the transaction that finishes its handler's
  success, fenced by the key's lease; a crash, a timeout, a failure or a lost lease before that
  leaves it for a later try. Each step's `id` (the row's) never changes across tries: it is the
  id a consumer deduplicates on.
- **In order per key.** A key has one holder at a time, and its due steps are handed over
  together in the order they were recorded. A step that failed holds its key's later steps
  back until it is tried again (nothing overtakes it). A step recorded for later (`not_before`)
  takes its place when it comes due and is never handed out before, not even by a repair
  (`carry_out_key`).
- **One kind's outage is that kind's.** A handler that raises `ServiceUnavailableError` has its
  steps retried later and its kind paused until then; the batch goes on with the other kinds.

What a step means is its handler's (`Handler`): whether it coalesces a key's steps (the
directory sync carries out "state to reach": one pass per user, whatever the number of steps),
whether it confirms by reading back later, and what it calls an outage.

A turn: **claim** the oldest due key nobody holds (a lease row in `outbox_leases` with a holder
id of this claim and an expiry, taken in one statement: the primary key decides); **handle** its
steps, cut at `turn_seconds` (the lease less `CLAIM_MARGIN_SECONDS`), so a turn is bounded
inside its lease by construction; **finish, fenced by the holder id**: on success the steps
handed out are deleted (with what the handler's `Finish` writes) and the lease given back; on
failure they are put back with capped exponential backoff (or after the handler's own
`retry_after_seconds`). Both happen only while this claim still holds the lease. A claim that
lost it (paused past the lease, cut off from the database) changes nothing: its steps stay for
the next holder, and the handler's `lost_lease` hook runs in that fenced transaction (the
directory schedules a read-back there).

No database connection is held while a handler works outside the database. The worker polls
every `poll_interval` seconds; the web processes only `record`.
"""

from __future__ import annotations

import abc
import asyncio
import enum
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final

from sqlalchemy import delete, func, literal, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased
from sqlalchemy.sql import ColumnElement

from app.core.compensation import undo_unless_committed
from app.core.db import Sessionmaker
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
# What a turn leaves of its lease for the claim itself (the statement that counts the attempt,
# bounded by the statement timeout) and for the finish to start before the lease runs out.
CLAIM_MARGIN_SECONDS: Final = 10.0


class _Outcome(enum.Enum):
    DONE = enum.auto()
    FAILED = enum.auto()  # retried later
    UNAVAILABLE = enum.auto()  # retried later, and the kind paused until then


@dataclass(frozen=True, slots=True)
class Claim:
    """One key's steps, handed to its kind's handler by the holder of the key's lease.

    `entries`: the steps in the order they were recorded; each `entry.id` is stable across
    tries (the dedup id), `entry.payload` what was recorded, `entry.attempts` this try's number.
    """

    kind: str
    key: str
    holder: uuid.UUID
    entries: Sequence[OutboxEntry]

    @property
    def retried(self) -> bool:
        """Whether an earlier try of one of these steps failed or lost its lease (so what it
        sent may still land)."""
        return any(entry.attempts > 1 for entry in self.entries)


Finish = Callable[[AsyncSession], Awaitable[None]]


class Handler(abc.ABC):
    """Carries out one kind's steps, a key at a time (register it in `outbox_handlers`)."""

    @abc.abstractmethod
    async def handle(self, claim: Claim) -> Finish | None:
        """Carry out the claim's steps.

        Raise a `DomainError` to have them retried later (a `ServiceUnavailableError` also
        pauses the kind until then). May return database work that belongs with the deletion
        of the steps: it runs in the finishing transaction, only while the claim still holds the
        lease.
        """

    async def lost_lease(self, session: AsyncSession, claim: Claim) -> None:  # noqa: B027
        """Called in the fenced transaction that found the claim's lease lost: its steps stay
        for the next holder (nothing to do for them), but what this try sent may land after
        that holder's work. A handler that confirms by reading back records its read-back here."""


def record(
    session: AsyncSession,
    kind: str,
    key: str,
    payload: Mapping[str, Any] | None = None,
    *,
    not_before: timedelta | None = None,
) -> None:
    """Promise, in the session's transaction, that `kind`'s handler will carry out `payload`
    for `key`; with `not_before`, not before that long from now (the database's clock)."""
    when = {} if not_before is None else {"next_attempt_at": func.now() + not_before}
    session.add(OutboxEntry(kind=kind, key=key, payload=dict(payload or {}), **when))


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


def _waiting() -> ColumnElement[bool]:
    """A step recorded for later whose time has not come (never handed out yet)."""
    return (OutboxEntry.attempts == 0) & (OutboxEntry.next_attempt_at > func.now())


def _held_back() -> ColumnElement[bool]:
    """Whether an earlier try of a step of the entry's key failed and is not due again yet:
    the key's later steps wait for it (in order per key)."""
    failed = aliased(OutboxEntry)
    return (
        select(failed.id)
        .where(
            failed.kind == OutboxEntry.kind,
            failed.key == OutboxEntry.key,
            failed.attempts > 0,
            failed.next_attempt_at > func.now(),
        )
        .exists()
    )


class OutboxWorker:
    """Carries out the steps of every kind in `handlers` ({kind: handler}, built in one place:
    `app.services.outbox_handlers`). `start` runs it in the background; `carry_out_key` carries
    out one key at once without it (reconcile's repair)."""

    def __init__(
        self,
        sessions: Sessionmaker,
        handlers: Mapping[str, Handler],
        *,
        poll_interval: float = 0.5,
        batch_size: int = 20,
        lease_seconds: float = LEASE_SECONDS,
        turn_seconds: float | None = None,
        heartbeat: Callable[[], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self._handlers = dict(handlers)
        self._poll_interval = poll_interval
        self._batch_size = batch_size
        self._lease_seconds = lease_seconds
        self._turn_seconds = turn_seconds or lease_seconds - CLAIM_MARGIN_SECONDS
        if not 0 < self._turn_seconds <= lease_seconds - CLAIM_MARGIN_SECONDS:
            raise ValueError("a turn must end inside its lease, less the claim's margin")
        self._heartbeat = heartbeat
        # Kind -> when (the loop's clock) its outage pause ends.
        self._paused_until: dict[str, float] = {}
        self._task = BackgroundTask(self._run_forever, "outbox")

    def start(self) -> None:
        self._task.start()

    async def aclose(self) -> None:
        await self._task.aclose()

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
        """Carry out up to a batch of due keys, of the kinds not paused; how many were claimed."""
        for done in range(self._batch_size):
            claim = await self._claim()
            if claim is None:
                return done
            await self.carry_out(claim)
        return self._batch_size

    def _active_kinds(self) -> list[str]:
        now = asyncio.get_running_loop().time()
        return [kind for kind in self._handlers if self._paused_until.get(kind, 0.0) <= now]

    async def _claim(self) -> Claim | None:
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
            .where(OutboxEntry.next_attempt_at <= func.now(), free, ~_held_back())
            .where(OutboxEntry.kind.in_(self._active_kinds()))
            .order_by(OutboxEntry.next_attempt_at, OutboxEntry.id)
            .limit(1)
        )
        async with self._sessions() as session, session.begin():
            found = (await session.execute(due)).first()
            if found is None:
                return None
            holder = uuid.uuid4()
            if not await take_lease(session, found.kind, found.key, holder, self._lease_seconds):
                return None  # taken meanwhile by another worker
            return await self._hand_out(session, found.kind, found.key, holder)

    async def _hand_out(
        self, session: AsyncSession, kind: str, key: str, holder: uuid.UUID, *, repair: bool = False
    ) -> Claim:
        """The key's due steps, their tries counted (a `repair` also takes those waiting out a
        backoff; a step recorded for later is never handed out before its time)."""
        due = OutboxEntry.next_attempt_at <= func.now()
        if repair:
            due = ~_waiting()
        entries = (
            await session.scalars(
                update(OutboxEntry)
                .where(OutboxEntry.kind == kind, OutboxEntry.key == key, due)
                .values(attempts=OutboxEntry.attempts + 1)
                .returning(OutboxEntry)
            )
        ).all()
        return Claim(kind, key, holder, sorted(entries, key=lambda entry: entry.id))

    async def carry_out_key(
        self, kind: str, key: str, payload: Mapping[str, Any] | None = None
    ) -> bool:
        """Carry out one key now (a repair): a step with `payload` recorded and handed out at
        once with the key's steps whose time came, in backoff or not; whether it was done
        (False: it failed and its steps wait for the worker, or someone else holds the key)."""
        holder = uuid.uuid4()
        async with self._sessions() as session, session.begin():
            if not await take_lease(session, kind, key, holder, self._lease_seconds):
                return False
            record(session, kind, key, payload)
            await session.flush()
            claim = await self._hand_out(session, kind, key, holder, repair=True)
        return await self.carry_out(claim) is _Outcome.DONE

    async def carry_out(self, claim: Claim) -> _Outcome:
        """Hand the claim to its handler, within the turn's bound, and finish it."""
        try:
            async with asyncio.timeout(self._turn_seconds):
                finish = await self._handlers[claim.kind].handle(claim)
        except DomainError as error:
            delay = await self._retry_later(
                claim, error.code, getattr(error, "retry_after_seconds", None)
            )
            if not isinstance(error, ServiceUnavailableError):
                return _Outcome.FAILED
            # Its kind's outage: the other kinds go on, this one waits until its retry.
            self._paused_until[claim.kind] = asyncio.get_running_loop().time() + delay
            return _Outcome.UNAVAILABLE
        except TimeoutError:
            # Past the turn's bound (a database wait, say): the lease must outlive the turn.
            logger.warning(
                "outbox: %s work cut at its %.0f s bound", claim.kind, self._turn_seconds
            )
            await self._retry_later(claim, "turn_timeout", None)
            return _Outcome.FAILED
        except Exception as error:
            # A bug, or a step it cannot read: said loudly, and retried with backoff rather
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
        """Delete the steps handed out, fenced by the lease; what `finish` registers for after
        the commit (its audit lines) runs once it commits."""
        async with self._sessions() as session, undo_unless_committed(session), session.begin():
            if not await give_back_lease(session, claim.kind, claim.key, claim.holder):
                await self._lost_lease(session, claim)
                return _Outcome.FAILED
            if finish is not None:
                await finish(session)
            await session.execute(
                delete(OutboxEntry).where(OutboxEntry.id.in_([e.id for e in claim.entries]))
            )
        return _Outcome.DONE

    async def _lost_lease(self, session: AsyncSession, claim: Claim) -> None:
        """The steps stay as they are for the holder that has the key now; the handler hears of
        it (what this try sent may land after that holder's work)."""
        logger.warning("outbox: lost the lease of a %s key while working on it", claim.kind)
        await self._handlers[claim.kind].lost_lease(session, claim)

    async def _retry_later(self, claim: Claim, reason: str, delay: float | None) -> float:
        """Put the claim's steps back; after `delay` (a handler that knows when to look again
        says so), else after capped exponential backoff. Returns the delay."""
        if delay is None:
            attempts = max((entry.attempts for entry in claim.entries), default=1)
            backoff = min(2.0**attempts, MAX_BACKOFF_SECONDS)
            delay = backoff * random.uniform(0.5, 1.0)  # noqa: S311 - jitter
        async with self._sessions() as session, session.begin():
            if not await give_back_lease(session, claim.kind, claim.key, claim.holder):
                await self._lost_lease(session, claim)
                return delay
            # Only the steps handed out: one recorded for later keeps its time.
            await session.execute(
                update(OutboxEntry)
                .where(OutboxEntry.id.in_([entry.id for entry in claim.entries]))
                .values(
                    next_attempt_at=func.now() + timedelta(seconds=delay),
                    last_error=literal(reason[:LAST_ERROR_LENGTH]),
                )
            )
        logger.warning("outbox: %s work will be retried in %.1f s (%s)", claim.kind, delay, reason)
        return delay
