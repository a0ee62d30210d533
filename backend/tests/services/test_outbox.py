"""The outbox worker on a real database: one holder per key, fenced finishes, failures retried."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from app.core.db import create_read_sessionmaker, create_sessionmaker
from app.services import outbox
from app.services.cognito import DirectoryMisconfiguredError
from app.services.outbox import Claim, Finish, OutboxWorker

KIND = "test_kind"


@dataclass
class RecordingHandler:
    """Carries out nothing; remembers what it was handed, and fails when told to."""

    failure: Exception | None = None
    meanwhile: Callable[[], Awaitable[object]] | None = None
    handled: list[tuple[str, list[int]]] = field(default_factory=list)

    async def handle(self, claim: Claim) -> Finish | None:
        self.handled.append((claim.key, [entry.id for entry in claim.entries]))
        if self.meanwhile is not None:
            await self.meanwhile()
        if self.failure is not None:
            raise self.failure
        return None


def worker_on(engine: AsyncEngine, handler: RecordingHandler) -> OutboxWorker:
    worker = OutboxWorker(create_sessionmaker(engine), create_read_sessionmaker(engine))
    worker.register(KIND, handler)
    return worker


async def record(engine: AsyncEngine, key: str, count: int = 1) -> None:
    async with AsyncSession(engine) as session, session.begin():
        for _ in range(count):
            outbox.record(session, KIND, key, {})


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


async def test_a_worker_that_lost_its_lease_deletes_nothing_and_records_the_key_afresh(
    fresh_engine: AsyncEngine,
) -> None:
    await record(fresh_engine, "user-1")
    # Paused past its lease while it worked: another holder has the key now.
    steal = rows(fresh_engine, "UPDATE outbox_leases SET holder = gen_random_uuid() RETURNING 1")
    handler = RecordingHandler(meanwhile=lambda: steal)
    assert await worker_on(fresh_engine, handler).run_once() == 1
    remaining = await rows(fresh_engine, "SELECT key FROM outbox ORDER BY id")
    # Its entry stays for the holder, and one more is recorded for what it did late.
    assert remaining == [("user-1",), ("user-1",)]


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


async def test_a_holder_that_lost_its_lease_and_then_failed_records_the_key_again(
    fresh_engine: AsyncEngine,
) -> None:
    """Its abandoned call can still land after the new holder's work: the key is read back
    once it can have landed, whatever this holder's outcome."""
    await record(fresh_engine, "user-1")
    steal = rows(fresh_engine, "UPDATE outbox_leases SET holder = gen_random_uuid() RETURNING 1")
    handler = RecordingHandler(meanwhile=lambda: steal, failure=KeyError("late"))
    assert await worker_on(fresh_engine, handler).run_once() == 1
    remaining = await rows(
        fresh_engine,
        "SELECT payload ? 'settle_check', next_attempt_at > now() FROM outbox ORDER BY id",
    )
    # Its entry stays for the holder, and a read-back of the key is due later.
    assert remaining == [(False, False), (True, True)]


async def test_a_confirmation_not_yet_due_is_handed_out_with_no_other_entry(
    fresh_engine: AsyncEngine,
) -> None:
    """A change of the key one second after a recovery must not use up the read-back due ten
    seconds later."""
    await rows(
        fresh_engine,
        f"INSERT INTO outbox (kind, key, payload, next_attempt_at) VALUES "
        f"('{KIND}', 'user-1', '{{\"settle_check\": true}}', now() + interval '10 seconds') "
        "RETURNING 1",
    )
    await record(fresh_engine, "user-1")
    handler = RecordingHandler()
    assert await worker_on(fresh_engine, handler).run_once() == 1
    [(key, ids)] = handler.handled
    assert (key, len(ids)) == ("user-1", 1)
    assert await rows(fresh_engine, "SELECT payload ? 'settle_check' FROM outbox") == [(True,)]


async def test_a_turn_past_its_bound_gives_the_key_back_before_the_lease_runs_out(
    fresh_engine: AsyncEngine,
) -> None:
    """The lease outlives the longest turn by construction: a handler stuck (on a database
    wait, say) is cut at the turn's bound, and the key is retried."""
    await record(fresh_engine, "user-1")
    handler = RecordingHandler(meanwhile=lambda: asyncio.sleep(30))
    worker = OutboxWorker(
        create_sessionmaker(fresh_engine),
        create_read_sessionmaker(fresh_engine),
        lease_seconds=outbox.CLAIM_MARGIN_SECONDS + 0.5,
    )
    worker.register(KIND, handler)
    assert await worker.run_once() == 1
    assert await rows(fresh_engine, "SELECT count(*) FROM outbox_leases") == [(0,)]
    assert await rows(fresh_engine, "SELECT last_error FROM outbox") == [("turn_timeout",)]


def test_a_turn_that_could_outlast_its_lease_is_refused() -> None:
    with pytest.raises(ValueError, match="inside its lease"):
        OutboxWorker(
            create_sessionmaker(create_async_engine("postgresql+asyncpg://u@h/d")),
            create_read_sessionmaker(create_async_engine("postgresql+asyncpg://u@h/d")),
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
