"""The directory's handler schedules its own read-backs (the outbox knows nothing of them): after
a pass that follows a failure, and after a try that lost its lease; each due once every call
sent can have landed, and no other step or repair hands it out before."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core.db import create_read_sessionmaker, create_sessionmaker
from app.core.roles import Role
from app.models.user import User
from app.services import directory_sync
from app.services.cognito import CognitoUserPool
from app.services.directory_sync import DirectorySync, record_directory_pass
from app.services.outbox import Claim, OutboxWorker
from app.services.outbox_handlers import outbox_handlers
from tests.support.harness import make_settings
from tests.support.moto_cognito import (
    MotoCognito,
    cognito_client,
    running_moto_cognito,
    unreachable_endpoint,
)


@pytest.fixture(scope="module")
def pool() -> Iterator[MotoCognito]:
    with running_moto_cognito("plain") as moto:
        yield moto


def worker_on(engine: AsyncEngine, cognito: CognitoUserPool) -> OutboxWorker:
    settings = make_settings(engine.url.render_as_string(hide_password=False))
    handlers = outbox_handlers(settings, create_read_sessionmaker(engine), cognito)
    return OutboxWorker(create_sessionmaker(engine), handlers)


async def deactivated(engine: AsyncEngine, pool: MotoCognito) -> uuid.UUID:
    """A user deactivated in the table, still enabled in Cognito; its directory step recorded."""
    email = f"read-back-{uuid.uuid4().hex[:12]}@example.gov"
    sub = pool.create_user(email, role=Role.DISPATCHER, confirmed=True)
    async with AsyncSession(engine) as session, session.begin():
        user = User(
            cognito_user_id=sub,
            email=email,
            full_name="Read Back",
            role=Role.DISPATCHER,
            is_active=False,
        )
        session.add(user)
        await session.flush()
        user_id = user.id
        record_directory_pass(session, user_id, sign_out=True)
    return user_id


async def outbox_rows(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    """(payload, seconds until due) of every step."""
    async with engine.begin() as connection:
        rows = await connection.execute(
            text(
                "SELECT payload::text, extract(epoch FROM next_attempt_at - now()) FROM outbox "
                "ORDER BY id"
            )
        )
        return [(payload, float(due)) for payload, due in rows]


async def test_a_pass_after_a_failure_schedules_a_read_back_once_every_call_can_have_landed(
    fresh_engine: AsyncEngine, pool: MotoCognito
) -> None:
    await deactivated(fresh_engine, pool)
    down = CognitoUserPool(cognito_client(unreachable_endpoint()), "ap-southeast-1_unused")
    assert await worker_on(fresh_engine, down).run_once() == 1
    async with fresh_engine.begin() as connection:
        await connection.execute(text("UPDATE outbox SET next_attempt_at = now()"))
    worker = worker_on(fresh_engine, pool.adapter())
    assert await worker.run_once() == 1
    [(payload, due_in)] = await outbox_rows(fresh_engine)
    settle = directory_sync.settle_seconds_for(make_settings("postgresql+asyncpg://u@h/d"))
    assert payload == '{"settle_check": true}'
    assert settle - 2 < due_in <= settle
    assert await worker.run_once() == 0  # not before it is due


async def test_a_try_that_lost_its_lease_schedules_a_read_back_of_the_user(
    fresh_engine: AsyncEngine, pool: MotoCognito
) -> None:
    user_id = await deactivated(fresh_engine, pool)
    handler = DirectorySync(create_read_sessionmaker(fresh_engine), pool.adapter())
    async with AsyncSession(fresh_engine) as session, session.begin():
        await handler.lost_lease(
            session, Claim(directory_sync.KIND, str(user_id), uuid.uuid4(), [])
        )
    steps = await outbox_rows(fresh_engine)
    assert [payload for payload, _ in steps] == ['{"sign_out": true}', '{"settle_check": true}']
    assert steps[1][1] > directory_sync.SETTLE_SECONDS - 2
