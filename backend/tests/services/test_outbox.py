"""The outbox worker on a real database: steps of any kind, at least once, in order per key;
one holder per key, fenced finishes, failures retried, one kind's outage that kind's."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from app.core.db import create_sessionmaker
from app.core.errors import ServiceUnavailableError
from app.services import outbox
from app.services.cognito import DirectoryMisconfiguredError
from app.services.outbox import Claim, Finish, Handler, OutboxWorker

KIND = "test_kind"


@dataclass
class RecordingHandler(Handler):
    """Carries out nothing; remembers what it was handed, and fails when told to."""

    failure: Exception | None = None
    meanwhile: Callable[[], Awaitable[object]] | None = None
    handled: list[tuple[str, list[int]]] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)

    async def handle(self, claim: Claim) -> Finish | None:
        self.handled.append((claim.key, [entry.id for entry in claim.entries]))
        if self.meanwhile is not None:
            await self.meanwhile()
        if self.failure is not None:
            raise self.failure
        return None

    async def lost_lease(self, session: AsyncSession, claim: Claim) -> None:
        self.lost.append(claim.key)


def worker_on(engine: AsyncEngine, handler: RecordingHandler, **kinds: Handler) -> OutboxWorker:
    return OutboxWorker(create_sessionmaker(engine), {KIND: handler, **kinds})


async def record(
    engine: AsyncEngine,
    key: str,
    count: int = 1,
    *,
    kind: str = KIND,
    not_before: timedelta | None = None,
) -> None:
    async with AsyncSession(engine) as session, session.begin():
        for _ in range(count):
            outbox.record(session, kind, key, {}, not_before=not_before)


async def rows(engine: AsyncEngine, sql: str) -> list[tuple[object, ...]]:
    async with engine.begin() as connection:
        return [tuple(row) for row in await connection.execute(text(sql))]


async def test_a_keys_entries_are_handed_over_together_and_deleted_once_done(
    fresh_engine: AsyncEngine,
) -> None:
    handler = RecordingHandler()
    await record(fresh_engine, "user-1", count=2)
    assert await worker_on(fresh_engine, handler).run_once() == 1
    assert [(key, len(ids)) for key, ids in handler.handled] == [("user-1", 2)]
    assert await rows(fresh_engine, "SELECT count(*) FROM outbox") == [(0,)]
    assert await rows(fresh_engine, "SELECT count(*) FROM outbox_leases") == [(0,)]


async def test_a_key_held_by_one_worker_is_not_taken_by_another(fresh_engine: AsyncEngine) -> None:
    await record(fresh_engine, "user-1")
    async with AsyncSession(fresh_engine) as session, session.begin():
        held = await outbox.take_lease(session, KIND, "user-1", outbox.uuid.uuid4(), 30)
    assert held
    handler = RecordingHandler()
    assert await worker_on(fresh_engine, handler).run_once() == 0
    assert handler.handled == []


async def test_a_worker_that_lost_its_lease_deletes_nothing_records_nothing_and_says_so(
    fresh_engine: AsyncEngine,
) -> None:
    await record(fresh_engine, "user-1")
    # Paused past its lease while it worked: another holder has the key now.
    steal = rows(fresh_engine, "UPDATE outbox_leases SET holder = gen_random_uuid() RETURNING 1")
    handler = RecordingHandler(meanwhile=lambda: steal)
    assert await worker_on(fresh_engine, handler).run_once() == 1
    # Its step stays, as it was, for the holder; no other is recorded; its handler heard of it.
    assert await rows(fresh_engine, "SELECT key, payload::text FROM outbox") == [("user-1", "{}")]
    assert handler.lost == ["user-1"]


async def test_an_unexpected_handler_error_gives_the_key_back_for_a_later_try(
    fresh_engine: AsyncEngine,
) -> None:
    await record(fresh_engine, "user-1")
    handler = RecordingHandler(failure=KeyError("tried"))
    assert await worker_on(fresh_engine, handler).run_once() == 1
    assert await rows(fresh_engine, "SELECT count(*) FROM outbox_leases") == [(0,)]
    assert await rows(
        fresh_engine, "SELECT last_error, next_attempt_at > now(), attempts FROM outbox"
    ) == [("KeyError", True, 1)]


async def test_a_holder_that_lost_its_lease_and_then_failed_leaves_the_step_to_the_holder(
    fresh_engine: AsyncEngine,
) -> None:
    """Neither put back with its backoff nor recorded again: the holder's to carry out."""
    await record(fresh_engine, "user-1")
    steal = rows(fresh_engine, "UPDATE outbox_leases SET holder = gen_random_uuid() RETURNING 1")
    handler = RecordingHandler(meanwhile=lambda: steal, failure=KeyError("late"))
    assert await worker_on(fresh_engine, handler).run_once() == 1
    assert await rows(
        fresh_engine, "SELECT payload::text, next_attempt_at <= now(), last_error FROM outbox"
    ) == [("{}", True, None)]
    assert handler.lost == ["user-1"]


async def test_a_step_recorded_for_later_is_handed_out_neither_early_nor_by_a_repair(
    fresh_engine: AsyncEngine,
) -> None:
    """A change of the key one second after a recovery must not use up the read-back due ten
    seconds later; nor may reconcile's repair of the key."""
    await record(fresh_engine, "user-1", not_before=timedelta(seconds=10))
    await record(fresh_engine, "user-1")
    handler = RecordingHandler()
    worker = worker_on(fresh_engine, handler)
    assert await worker.run_once() == 1
    assert await worker.carry_out_key(KIND, "user-1", {"repair": True})
    [(_, first), (_, repaired)] = handler.handled
    assert (len(first), len(repaired)) == (1, 1)
    [(later,)] = await rows(fresh_engine, "SELECT id FROM outbox")
    assert later not in first + repaired


async def test_a_turn_past_its_bound_gives_the_key_back_before_the_lease_runs_out(
    fresh_engine: AsyncEngine,
) -> None:
    """The lease outlives the longest turn by construction: a handler stuck (on a database
    wait, say) is cut at the turn's bound, and the key is retried."""
    await record(fresh_engine, "user-1")
    handler = RecordingHandler(meanwhile=lambda: asyncio.sleep(30))
    worker = OutboxWorker(
        create_sessionmaker(fresh_engine),
        {KIND: handler},
        lease_seconds=outbox.CLAIM_MARGIN_SECONDS + 0.5,
    )
    assert await worker.run_once() == 1
    assert await rows(fresh_engine, "SELECT count(*) FROM outbox_leases") == [(0,)]
    assert await rows(fresh_engine, "SELECT last_error FROM outbox") == [("turn_timeout",)]


def test_a_turn_that_could_outlast_its_lease_is_refused() -> None:
    with pytest.raises(ValueError, match="inside its lease"):
        OutboxWorker(
            create_sessionmaker(create_async_engine("postgresql+asyncpg://u@h/d")),
            {},
            lease_seconds=30,
            turn_seconds=25,
        )


async def test_a_misconfigured_directory_is_tried_again_when_it_said_not_at_the_backoff_cap(
    fresh_engine: AsyncEngine,
) -> None:
    """An operator has to act first: the 60 s it asks for, not the 30 s backoff cap."""
    await record(fresh_engine, "user-1")
    handler = RecordingHandler(failure=DirectoryMisconfiguredError())
    assert await worker_on(fresh_engine, handler).run_once() == 1
    assert await rows(
        fresh_engine, "SELECT next_attempt_at > now() + interval '55 seconds' FROM outbox"
    ) == [(True,)]


async def test_a_step_keeps_its_id_across_tries_and_is_deleted_once_done(
    fresh_engine: AsyncEngine,
) -> None:
    """The id a consumer deduplicates on (delivery is at least once) never changes."""
    await record(fresh_engine, "case-1")
    handler = RecordingHandler(failure=KeyError("first try"))
    worker = worker_on(fresh_engine, handler)
    assert await worker.run_once() == 1
    await rows(fresh_engine, "UPDATE outbox SET next_attempt_at = now() RETURNING 1")
    handler.failure = None
    assert await worker.run_once() == 1
    [(_, first), (_, second)] = handler.handled
    assert first == second
    assert await rows(fresh_engine, "SELECT count(*) FROM outbox") == [(0,)]


async def test_a_failed_step_holds_its_keys_later_steps_back(fresh_engine: AsyncEngine) -> None:
    """In order per key: a step recorded after one that failed is not handed out before it."""
    await record(fresh_engine, "case-1")
    handler = RecordingHandler(failure=KeyError("down"))
    worker = worker_on(fresh_engine, handler)
    assert await worker.run_once() == 1
    await record(fresh_engine, "case-1")
    assert await worker.run_once() == 0
    await rows(fresh_engine, "UPDATE outbox SET next_attempt_at = now() RETURNING 1")
    handler.failure = None
    assert await worker.run_once() == 1
    [(_, failed), (_, both)] = handler.handled
    assert (len(both), both[0], both) == (2, failed[0], sorted(both))


async def test_an_outage_of_one_kind_pauses_that_kind_and_the_batch_goes_on(
    fresh_engine: AsyncEngine,
) -> None:
    """The older keys of a kind that is down neither end the batch nor get tried one by one."""
    await record(fresh_engine, "user-1", kind="down")
    await record(fresh_engine, "user-2", kind="down")
    await record(fresh_engine, "case-1")
    down = RecordingHandler(failure=ServiceUnavailableError("Cognito is down"))
    handler = RecordingHandler()
    assert await worker_on(fresh_engine, handler, down=down).run_once() == 2
    assert [key for key, _ in down.handled] == ["user-1"]
    assert [key for key, _ in handler.handled] == ["case-1"]
