"""The worker that settles the intents creates left behind, on a real database and emulator.

It adopts only the Cognito user the intent made, with a new temporary password, and writes the
audit line of every create it finishes: adopted (`success`) or dropped (`dropped:<reason>`).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core.db import create_read_sessionmaker, create_sessionmaker
from app.core.roles import Role
from app.models.user import User
from app.schemas.user import UserCreate
from app.services import outbox
from app.services.adoption import CREATION_KIND
from app.services.outbox import OutboxWorker
from app.services.outbox_handlers import outbox_handlers
from tests.support.harness import make_settings
from tests.support.moto_cognito import MotoCognito, running_moto_cognito

KNOWN = "Known-To-Someone-1!"


@pytest.fixture(scope="module")
def pool() -> Iterator[MotoCognito]:
    with running_moto_cognito("plain") as moto:
        yield moto


def new_email() -> str:
    return f"settled-{uuid.uuid4().hex[:12]}@example.gov"


def worker_on(engine: AsyncEngine, pool: MotoCognito) -> OutboxWorker:
    """The worker process's outbox worker, every handler on `pool`, turned by hand."""
    settings = make_settings(str(engine.url.render_as_string(hide_password=False)))
    handlers = outbox_handlers(settings, create_read_sessionmaker(engine), pool.adapter())
    return OutboxWorker(create_sessionmaker(engine), handlers)


async def record_intent(engine: AsyncEngine, email: str, *, ago: timedelta) -> None:
    """An intent as a create that ended without an answer leaves it, begun `ago`."""
    async with AsyncSession(engine) as session, session.begin():
        now = await session.scalar(select(func.now()))
        assert now is not None
        data = UserCreate(email=email, full_name="Settled", role=Role.EXECUTIVE)
        began = (now - ago).isoformat()
        payload = {**data.model_dump(mode="json"), "began": began, "tried": began}
        outbox.record(session, CREATION_KIND, email, payload)


async def rows_with_email(engine: AsyncEngine, email: str) -> list[User]:
    async with AsyncSession(engine) as session:
        return list((await session.scalars(select(User).where(User.email == email))).all())


async def rows(engine: AsyncEngine, sql: str) -> list[tuple[object, ...]]:
    async with engine.begin() as connection:
        return [tuple(row) for row in await connection.execute(text(sql))]


async def intents(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        found = await connection.scalar(
            text(f"SELECT count(*) FROM outbox WHERE kind = '{CREATION_KIND}'")
        )
    return int(found or 0)


def audit_lines(caplog: pytest.LogCaptureFixture) -> list[Any]:
    return [record for record in caplog.records if record.name == "app.audit"]


async def test_an_intent_whose_user_someone_else_made_is_dropped_and_audited(
    fresh_engine: AsyncEngine, pool: MotoCognito, caplog: pytest.LogCaptureFixture
) -> None:
    """A user made in the console an hour before the create: not the intent's, whatever its
    age; it keeps its password and gets no row."""
    email = new_email()
    sub = pool.create_user(email, role=Role.ADMIN, password=KNOWN)
    pool.make_older(email, timedelta(hours=1))
    await record_intent(fresh_engine, email, ago=timedelta(minutes=5))
    with caplog.at_level(logging.INFO, logger="app.audit"):
        assert await worker_on(fresh_engine, pool).run_once() == 1
    assert await rows_with_email(fresh_engine, email) == []
    assert await intents(fresh_engine) == 0
    assert pool.signs_in(email, KNOWN)
    assert pool.find(email)["attributes"]["sub"] == sub  # type: ignore[index]
    [line] = audit_lines(caplog)
    assert (line.action, line.outcome) == ("user.create", "dropped:cognito_user_exists")  # type: ignore[attr-defined]


async def test_an_intent_whose_call_may_still_land_is_kept_beside_someone_elses_user(
    fresh_engine: AsyncEngine, pool: MotoCognito
) -> None:
    """Found by `make chaos`: the worker dropped the intent on meeting a console-made user;
    that user was removed, the intent's late AdminCreateUser then landed, and its user was an
    orphan. Until its give-up the intent stays, and adopts the user its call makes."""
    email = new_email()
    pool.create_user(email, password=KNOWN)
    pool.make_older(email, timedelta(hours=1))
    await record_intent(fresh_engine, email, ago=timedelta(seconds=1))
    worker = worker_on(fresh_engine, pool)
    assert await worker.run_once() == 1
    assert await intents(fresh_engine) == 1
    # The console user goes; the intent's own call lands.
    pool.client.admin_delete_user(UserPoolId=pool.user_pool_id, Username=email)
    sub = pool.create_user(email)
    await rows(fresh_engine, "UPDATE outbox SET next_attempt_at = now() RETURNING 1")
    assert await worker.run_once() >= 1
    [row] = await rows_with_email(fresh_engine, email)
    assert row.cognito_user_id == sub


async def test_the_user_an_intent_made_is_adopted_with_a_new_password_and_audited(
    fresh_engine: AsyncEngine, pool: MotoCognito, caplog: pytest.LogCaptureFixture
) -> None:
    email = new_email()
    await record_intent(fresh_engine, email, ago=timedelta(seconds=2))
    # The intent's call landed; someone set a temporary password they know meanwhile.
    pool.create_user(email, password=KNOWN)
    with caplog.at_level(logging.INFO, logger="app.audit"):
        worker = worker_on(fresh_engine, pool)
        assert await worker.run_once() >= 1
        await worker.run_once()  # the directory pass the adoption recorded
    [row] = await rows_with_email(fresh_engine, email)
    assert row.role is Role.EXECUTIVE
    assert not pool.signs_in(email, KNOWN)
    assert pool.groups_of(email) == {"EXECUTIVE"}
    [line] = audit_lines(caplog)
    assert (line.action, line.outcome, line.target_id) == ("user.create", "success", str(row.id))  # type: ignore[attr-defined]


async def test_an_intent_under_which_nothing_appeared_is_dropped_and_audited_at_its_give_up(
    fresh_engine: AsyncEngine, pool: MotoCognito, caplog: pytest.LogCaptureFixture
) -> None:
    email = new_email()
    await record_intent(fresh_engine, email, ago=timedelta(minutes=5))
    with caplog.at_level(logging.INFO, logger="app.audit"):
        assert await worker_on(fresh_engine, pool).run_once() == 1
    assert await intents(fresh_engine) == 0
    [line] = audit_lines(caplog)
    assert (line.action, line.outcome) == ("user.create", "dropped:no_cognito_user")  # type: ignore[attr-defined]


async def test_an_intent_that_cannot_be_read_is_dropped_once_not_retried_forever(
    fresh_engine: AsyncEngine, pool: MotoCognito, caplog: pytest.LogCaptureFixture
) -> None:
    """Retried, it logged an ERROR each time and kept its email from orphan removal."""
    email = new_email()
    async with AsyncSession(fresh_engine) as session, session.begin():
        outbox.record(session, CREATION_KIND, email, {"email": email, "began": "not a time"})
    with caplog.at_level(logging.INFO):
        assert await worker_on(fresh_engine, pool).run_once() == 1
    assert await intents(fresh_engine) == 0
    [line] = audit_lines(caplog)
    assert line.outcome == "dropped:unreadable_intent"  # type: ignore[attr-defined]
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert [record.getMessage() for record in errors] == [
        "create intent dropped: it cannot be read"
    ]
