"""The user list pages from both ends of its index and counts through a generation-checked cache."""

from __future__ import annotations

import itertools
import math
import uuid

import asyncpg
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from app.core.db import ReadSessions
from app.core.listener import NotificationListener
from app.core.roles import Role
from app.models.user import User
from app.schemas.user import UserList, UserListParams, UserSort
from app.services.user_cache import UserCache, UserCountCache
from app.services.user_list import list_users as list_users_of

PAGE_SIZE = 4


def read(db_session: AsyncSession) -> ReadSessions:
    """Sessions that see the test's uncommitted rows: savepoints on its connection."""
    assert isinstance(db_session.bind, AsyncConnection)
    return ReadSessions(bind=db_session.bind, join_transaction_mode="create_savepoint")


async def list_users(sessions: ReadSessions, params: UserListParams) -> UserList:
    # Counted every time: a cache without a listener vouches for nothing.
    return await list_users_of(sessions, UserCountCache(UserCache(None)), params)


@pytest.fixture
async def population(db_session: AsyncSession) -> int:
    """23 users inserted in one transaction: created_at ties everywhere, so ids must decide."""
    names = ["Ann", "Bea", "Cal", "Dee", "Eve"]
    for number, name in zip(range(23), itertools.cycle(names), strict=False):
        db_session.add(
            User(
                cognito_user_id=str(uuid.uuid4()),
                email=f"list-{number:02d}@example.gov",
                full_name=name,
                role=Role.EXECUTIVE if number % 3 else Role.DISPATCHER,
            )
        )
    await db_session.flush()
    return int(await db_session.scalar(select(func.count()).select_from(User)) or 0)


@pytest.mark.parametrize("sort", list(UserSort))
async def test_pages_from_either_end_tile_the_whole_ordering(
    db_session: AsyncSession, population: int, sort: UserSort
) -> None:
    everyone = await list_users(read(db_session), UserListParams(page_size=100, sort=sort))
    assert everyone.total == population
    pages = [
        await list_users(
            read(db_session), UserListParams(page=page, page_size=PAGE_SIZE, sort=sort)
        )
        for page in range(1, population // PAGE_SIZE + 3)
    ]
    assert all(page.total == population for page in pages)
    tiled = [user.id for page in pages for user in page.items]
    assert tiled == [user.id for user in everyone.items]
    assert pages[-1].items == []  # past the end: empty, with the true total


async def test_filters_page_from_the_end_too(db_session: AsyncSession, population: int) -> None:
    params = {"role": Role.EXECUTIVE, "page_size": 3}
    everyone = await list_users(
        read(db_session), UserListParams(role=Role.EXECUTIVE, page_size=100)
    )
    last_page = -(-everyone.total // 3)
    tail = await list_users(read(db_session), UserListParams(page=last_page, **params))
    assert [u.id for u in tail.items] == [u.id for u in everyone.items][(last_page - 1) * 3 :]


async def never_connects() -> asyncpg.Connection:
    raise OSError("no database in this test")


async def test_counts_are_cached_per_filter_until_any_user_changes() -> None:
    listener = NotificationListener(never_connects)
    listener._proven_at = math.inf  # as if every heartbeat came back
    users = UserCache(listener)
    counts = UserCountCache(users)
    calls: list[str] = []

    async def count(value: int, label: str) -> int:
        calls.append(label)
        return value

    assert await counts.get_or_compute(("ADMIN",), lambda: count(3, "admins")) == 3
    assert await counts.get_or_compute(("ADMIN",), lambda: count(99, "admins")) == 3
    assert await counts.get_or_compute(("OFFICER",), lambda: count(5, "officers")) == 5
    assert calls == ["admins", "officers"]

    users.invalidate(["some-sub"])  # any change, inserts included, moves the generation on
    assert await counts.get_or_compute(("ADMIN",), lambda: count(4, "admins")) == 4
    assert calls == ["admins", "officers", "admins"]


async def test_counts_are_not_cached_without_a_listener() -> None:
    counts = UserCountCache(UserCache(NotificationListener(never_connects)))
    calls: list[int] = []

    async def count() -> int:
        calls.append(1)
        return 7

    assert await counts.get_or_compute(("any",), count) == 7
    assert await counts.get_or_compute(("any",), count) == 7
    assert len(calls) == 2
