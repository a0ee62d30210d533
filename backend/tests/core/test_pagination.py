"""Counts are cached per query, per scope and per filter: lists sharing one cache never mix;
concurrent misses of one key compute it once."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.pagination import CountCache, PagedQuery, TicketedCache, orders, read_page
from app.core.roles import Role
from app.core.scope import ProvinceScope
from app.models.case import Case
from app.models.user import User


class Steady:
    """Changes that never happen: every count, once made, is served from the cache."""

    def ticket(self) -> int | None:
        return 1


USERS = PagedQuery(
    name="users",
    columns=(User.__table__.c.id,),
    source=User.__table__,
    filters={},
    sorts={"id": orders(User.id, User.id, descending=False)},
    province=User.responsible_province,
)
CASES = PagedQuery(
    name="cases",
    columns=(Case.__table__.c.id,),
    source=Case.__table__,
    filters={},
    sorts={"id": orders(Case.id, Case.id, descending=False)},
    province=Case.province,
)


async def total(
    session: AsyncSession, query: PagedQuery, counts: CountCache, scope: ProvinceScope
) -> int:
    connection = await session.connection()
    page = await read_page(
        connection, query, counts, {}, sort="id", page=1, page_size=10, scope=scope
    )
    return page.total


@pytest.fixture
async def officers(db_session: AsyncSession) -> None:
    """Two officers in Krabi and one in Phuket; no cases."""
    for province in ("Krabi", "Krabi", "Phuket"):
        db_session.add(
            User(
                cognito_user_id=str(uuid.uuid4()),
                email=f"officer-{uuid.uuid4().hex[:8]}@example.gov",
                full_name="Officer",
                role=Role.OFFICER,
                responsible_province=province,
            )
        )
    await db_session.flush()


async def test_each_query_and_scope_has_counts_of_its_own(
    db_session: AsyncSession, officers: None
) -> None:
    counts = CountCache(Steady())
    everyone, krabi = ProvinceScope(None), ProvinceScope("Krabi")

    first = [
        await total(db_session, USERS, counts, everyone),
        await total(db_session, CASES, counts, everyone),
        await total(db_session, USERS, counts, krabi),
    ]
    again = [
        await total(db_session, USERS, counts, everyone),
        await total(db_session, CASES, counts, everyone),
        await total(db_session, USERS, counts, krabi),
    ]

    assert first == again == [3, 0, 2]


async def test_a_scoped_list_is_not_read_without_a_scope(db_session: AsyncSession) -> None:
    connection = await db_session.connection()
    with pytest.raises(TypeError, match="province-scoped"):
        await read_page(connection, USERS, CountCache(Steady()), {}, sort="id", page=1, page_size=1)


class Moving:
    """Changes whose ticket a test moves on."""

    def __init__(self) -> None:
        self.at = 1

    def ticket(self) -> int | None:
        return self.at


async def test_concurrent_misses_of_one_key_compute_it_once() -> None:
    cache = TicketedCache[int](Steady())
    release = asyncio.Event()
    computed = 0

    async def compute() -> int:
        nonlocal computed
        computed += 1
        await release.wait()
        return 42

    callers = [asyncio.create_task(cache.get_or_compute("page 1", compute)) for _ in range(20)]
    await asyncio.sleep(0)  # every caller has now missed and is queued behind the first
    release.set()

    assert await asyncio.gather(*callers) == [42] * 20
    assert computed == 1


async def test_a_change_while_computing_makes_the_waiters_compute_afresh() -> None:
    changes = Moving()
    cache = TicketedCache[int](changes)
    release = asyncio.Event()
    answers = iter((1, 2))

    async def compute() -> int:
        await release.wait()
        return next(answers)

    first = asyncio.create_task(cache.get_or_compute("page 1", compute))
    await asyncio.sleep(0)
    second = asyncio.create_task(cache.get_or_compute("page 1", compute))
    await asyncio.sleep(0)
    changes.at = 2  # a users row changed while the first read ran: its answer may be stale
    release.set()

    assert (await first, await second) == (1, 2)
    assert await cache.get_or_compute("page 1", compute) == 2  # the second's, kept
