"""A second outbox kind beside the Cognito ones: the worker process's handlers
(`outbox_handlers`) and a test-only publisher, as the README's recipe writes one (an SQS
notification per step, deduplicated by the step's id), on one worker and a real database.

Its steps are delivered once each, in order per key, each with its stable id; a Cognito outage
does not hold them up; a try that lost its lease sends no empty or extra message.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.core.db import create_read_sessionmaker, create_sessionmaker
from app.core.roles import Role
from app.models.outbox import OutboxEntry
from app.models.user import User
from app.services import outbox
from app.services.cognito import CognitoUserPool
from app.services.directory_sync import pending_work, record_directory_pass
from app.services.outbox import Claim, Finish, Handler, OutboxWorker
from app.services.outbox_handlers import outbox_handlers
from tests.support.harness import make_settings
from tests.support.moto_cognito import (
    MotoCognito,
    cognito_client,
    running_moto_cognito,
    unreachable_endpoint,
)

CASE_EVENT = "case_event"


@dataclass
class CaseEventPublisher(Handler):
    """Publishes each step of a case as one message, its dedup id the step's id."""

    sent: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    meanwhile: Callable[[], Awaitable[object]] | None = None

    async def handle(self, claim: Claim) -> Finish | None:
        for entry in claim.entries:  # in order, at least once
            self.sent.append((claim.key, entry.id, entry.payload))
        if self.meanwhile is not None:
            await self.meanwhile()
        return None


@pytest.fixture(scope="module")
def pool() -> Iterator[MotoCognito]:
    with running_moto_cognito("plain") as moto:
        yield moto


def worker_on(
    engine: AsyncEngine, cognito: CognitoUserPool, publisher: CaseEventPublisher
) -> OutboxWorker:
    """The worker process's handlers, and the publisher registered beside them."""
    settings = make_settings(engine.url.render_as_string(hide_password=False))
    handlers = outbox_handlers(settings, create_read_sessionmaker(engine), cognito)
    return OutboxWorker(create_sessionmaker(engine), {**handlers, CASE_EVENT: publisher})


async def deactivated_users(engine: AsyncEngine, emails: list[str]) -> None:
    """Rows deactivated (the oldest steps of the outbox): Cognito must follow each."""
    async with AsyncSession(engine) as session, session.begin():
        for email in emails:
            user = User(
                cognito_user_id=str(uuid.uuid4()),
                email=email,
                full_name="Deactivated",
                role=Role.DISPATCHER,
                is_active=False,
            )
            session.add(user)
            await session.flush()
            record_directory_pass(session, user.id, sign_out=True)


async def case_events(engine: AsyncEngine, events: list[tuple[str, str]]) -> None:
    """One step per (case, event), each in its own transaction, as each change commits."""
    for case, event in events:
        async with AsyncSession(engine) as session, session.begin():
            outbox.record(session, CASE_EVENT, case, {"event": event})


async def count(engine: AsyncEngine, *conditions: Any) -> int:
    async with AsyncSession(engine) as session:
        found = await session.scalar(
            select(func.count()).select_from(OutboxEntry).where(*conditions)
        )
    return int(found or 0)


EVENTS = [("case-1", "created"), ("case-2", "created"), ("case-1", "assigned")]


IN_ORDER = {"case-1": ["created", "assigned"], "case-2": ["created"]}


def delivered(publisher: CaseEventPublisher) -> dict[str, list[str]]:
    """Each case's events in the order they were sent."""
    by_case: dict[str, list[str]] = {}
    for case, _, payload in publisher.sent:
        by_case.setdefault(case, []).append(payload["event"])
    return by_case


async def test_a_second_kind_is_delivered_once_each_in_order_beside_the_directory(
    fresh_engine: AsyncEngine, pool: MotoCognito
) -> None:
    email = f"kinds-{uuid.uuid4().hex[:12]}@example.gov"
    pool.create_user(email, role=Role.DISPATCHER, confirmed=True)
    await deactivated_users(fresh_engine, [email])
    await case_events(fresh_engine, EVENTS)
    publisher = CaseEventPublisher()
    worker = worker_on(fresh_engine, pool.adapter(), publisher)
    assert await worker.run_once() == 3
    assert await worker.run_once() == 0
    assert delivered(publisher) == IN_ORDER
    ids = [step_id for _, step_id, _ in publisher.sent]
    assert len(set(ids)) == len(ids)
    assert pool.find(email)["Enabled"] is False  # type: ignore[index]
    assert await count(fresh_engine) == 0


async def test_a_cognito_outage_does_not_delay_a_second_kind(fresh_engine: AsyncEngine) -> None:
    """Three users' directory work, older than the case events, meets a Cognito that refuses
    every connection: the first try pauses the directory, and the same batch goes on."""
    down = CognitoUserPool(cognito_client(unreachable_endpoint()), "ap-southeast-1_unused")
    emails = [f"down-{uuid.uuid4().hex[:12]}@example.gov" for _ in range(3)]
    await deactivated_users(fresh_engine, emails)
    await case_events(fresh_engine, EVENTS)
    publisher = CaseEventPublisher()
    worker = worker_on(fresh_engine, down, publisher)
    assert await worker.run_once() == 3  # one directory key, then both cases
    assert delivered(publisher) == IN_ORDER
    assert await count(fresh_engine, *pending_work()) == 3
    assert await count(fresh_engine, OutboxEntry.kind == CASE_EVENT) == 0


async def test_a_lost_lease_sends_no_empty_message_and_the_next_holder_sends_the_same_ids(
    fresh_engine: AsyncEngine, pool: MotoCognito
) -> None:
    await case_events(fresh_engine, EVENTS[:1])

    async def lose_the_lease() -> None:
        async with fresh_engine.begin() as connection:
            await connection.execute(text("UPDATE outbox_leases SET holder = gen_random_uuid()"))

    publisher = CaseEventPublisher(meanwhile=lose_the_lease)
    worker = worker_on(fresh_engine, pool.adapter(), publisher)
    assert await worker.run_once() == 1
    assert await count(fresh_engine) == 1  # the step, and nothing else
    async with fresh_engine.begin() as connection:
        await connection.execute(text("UPDATE outbox_leases SET expires_at = now()"))
    publisher.meanwhile = None
    assert await worker.run_once() == 1
    [first, again] = publisher.sent
    assert first == again  # the same message, the same dedup id: the consumer drops one
    assert await count(fresh_engine) == 0
