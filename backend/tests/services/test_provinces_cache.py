"""The provinces cache: served from memory, yet never behind a committed case.

Notifications are only sent for committed transactions, so the tests that go through the app
run on a database of their own and write with connections of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from sqlalchemy import Connection, event

from app.core.roles import Role
from app.services.reference import PROVINCES_CHANNEL, ProvincesCache, RenderedJson
from tests.api.conftest import SIGNING_KEY_ID
from tests.services.test_user_cache import (
    asyncpg_dsn,
    commit_elsewhere,
    headers_of,
    insert_user,
    running_app,
)
from tests.support.jwt_tokens import JWKSServer, shared_rsa_key

PROVINCES = "/api/v1/reference/provinces"

INSERT_CASE = """
    INSERT INTO cases (case_number, priority, service_type_id, complaint_type_id, province,
                       complainant_name, description)
    SELECT $1, 'LOW', service_type_id, id, $2, 'Complainant', 'A case'
    FROM ref_complaint_types ORDER BY id LIMIT 1
"""


@pytest.fixture(scope="module")
def jwks_server() -> Iterator[JWKSServer]:
    with JWKSServer(shared_rsa_key(SIGNING_KEY_ID)) as server:
        yield server


async def test_a_case_committed_elsewhere_shows_its_province_without_a_query_in_between(
    fresh_database_url: str, jwks_server: JWKSServer
) -> None:
    dsn = asyncpg_dsn(fresh_database_url)
    headers = headers_of(await insert_user(dsn, Role.DISPATCHER))
    await commit_elsewhere(dsn, INSERT_CASE, "C-1", "Phuket")
    async with running_app(fresh_database_url, jwks_server.url) as (client, state):
        queries: list[str] = []

        def record(_conn: Connection, _cursor: Any, statement: str, *_: Any) -> None:
            if "provinces" in statement:
                queries.append(statement)

        async def provinces() -> list[str]:
            response = await client.get(PROVINCES, headers=headers)
            assert response.status_code == 200
            return list(response.json())

        event.listen(state["engine"].sync_engine, "before_cursor_execute", record)
        for _ in range(3):
            assert await provinces() == ["Phuket"]
        assert len(queries) == 1, "the first request fills the cache, the others use it"

        await commit_elsewhere(dsn, INSERT_CASE, "C-2", "Krabi")
        # PostgreSQL sends the notification at commit; it arrives within milliseconds.
        async with asyncio.timeout(5):
            while await provinces() != ["Krabi", "Phuket"]:  # noqa: ASYNC110 - polls the API
                await asyncio.sleep(0.01)
        assert len(queries) == 2


@pytest.mark.parametrize(
    ("statement", "args"),
    [
        (INSERT_CASE, ("C-2", "Krabi")),
        ("UPDATE cases SET province = 'Krabi'", ()),
        ("DELETE FROM cases", ()),
        ("TRUNCATE cases CASCADE", ()),
    ],
    ids=["insert", "update of province", "delete", "truncate"],
)
async def test_writes_that_can_change_the_provinces_notify_and_others_do_not(
    fresh_database_url: str, statement: str, args: tuple[object, ...]
) -> None:
    dsn = asyncpg_dsn(fresh_database_url)
    await commit_elsewhere(dsn, INSERT_CASE, "C-1", "Phuket")
    listener = await asyncpg.connect(dsn)
    received: asyncio.Queue[str] = asyncio.Queue()
    try:
        await listener.add_listener(PROVINCES_CHANNEL, lambda *note: received.put_nowait(note[2]))
        # Commits in this order, so its notification would arrive before the one awaited.
        await commit_elsewhere(dsn, "UPDATE cases SET description = 'Edited'")
        await commit_elsewhere(dsn, statement, *args)

        channel = await asyncio.wait_for(received.get(), 5)
        await listener.execute("SELECT 1")  # anything still in flight is read by now

        assert channel == PROVINCES_CHANNEL
        assert received.empty(), "an edit that keeps every province must not notify"
    finally:
        await listener.close()


# --- the cache on its own ----------------------------------------------------------------------


class Loads:
    def __init__(self) -> None:
        self.count = 0
        self.during: list[Any] = []

    async def __call__(self) -> RenderedJson:
        self.count += 1
        for action in self.during:
            action()
        return RenderedJson.of(f'["P{self.count}"]'.encode())


async def test_while_listening_a_load_is_kept_until_forgotten() -> None:
    cache, load = ProvincesCache(listening=lambda: True), Loads()

    first = await cache.get_or_load(load)
    assert await cache.get_or_load(load) is first
    cache.forget()
    assert (await cache.get_or_load(load)).body == b'["P2"]'
    assert load.count == 2


async def test_without_a_listener_every_request_loads() -> None:
    cache, load = ProvincesCache(listening=lambda: False), Loads()

    await cache.get_or_load(load)
    await cache.get_or_load(load)

    assert load.count == 2


async def test_a_load_that_overlapped_a_change_is_returned_but_not_kept() -> None:
    cache, load = ProvincesCache(listening=lambda: True), Loads()
    load.during.append(cache.forget)

    assert (await cache.get_or_load(load)).body == b'["P1"]'
    load.during.clear()
    assert (await cache.get_or_load(load)).body == b'["P2"]'


async def test_a_load_that_outlived_the_listener_is_not_kept() -> None:
    listening = [True]
    cache, load = ProvincesCache(listening=lambda: listening[0]), Loads()
    load.during.append(lambda: listening.__setitem__(0, False))

    await cache.get_or_load(load)
    listening[0] = True
    load.during.clear()
    await cache.get_or_load(load)

    assert load.count == 2
