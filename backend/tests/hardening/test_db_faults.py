"""Database faults through the whole app: answers stay fast and honest, and it heals by itself.

The server is stopped (connections refused), frozen (SIGSTOP: connections hang), saturated
(every pooled connection busy) and locked (statements wait on a lock). Each time: 503 with
Retry-After within a few seconds, never a 500 or a hang, and once the fault ends the same app
process serves again with nothing left checked out of its pool.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app.core.db import SessionDep
from app.core.roles import Role
from tests.hardening.faults import OwnPostgres, timed
from tests.support.harness import (
    LiveApp,
    add_user,
    bearer,
    live_app,
    make_settings,
    uncached_user_list,
    wait_until,
)
from tests.support.jwt_tokens import JWKSServer

ME = "/api/v1/users/me"
USERS = "/api/v1/users"
# The design's bounds: /health answers within its 2 s check; an API request within connect
# (2 s) or pool (3 s) timeouts. Margins absorb scheduling noise on a loaded 2-core machine.
HEALTH_BOUND = 3.0
API_BOUND = 5.0


@pytest.fixture
async def app_with_admin(
    own_database: str, jwks_server: JWKSServer
) -> AsyncIterator[tuple[LiveApp, dict[str, str]]]:
    admin = await add_user(own_database, Role.ADMIN)
    settings = make_settings(own_database, cognito_jwks_url=jwks_server.url)
    async with live_app(settings) as live:
        yield live, bearer(admin.cognito_user_id)


@asynccontextmanager
async def locked(database_url: str, table: str) -> AsyncIterator[None]:
    """`table` locked against every statement by another session, until the block ends."""
    url = make_url(database_url)
    holder = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, database=url.database
    )
    try:
        async with holder.transaction():
            await holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await holder.close()


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    assert response.json()["code"] in ("database_unavailable", "service_unavailable")


async def assert_serving(live: LiveApp, headers: dict[str, str]) -> None:
    health = await live.client.get("/health")
    assert health.status_code == 200, health.text
    me = await live.client.get(ME, headers=headers)
    assert me.status_code == 200, me.text
    assert live.checked_out() == 0


async def test_stopped_database_is_503_fast_and_the_same_process_recovers(
    app_with_admin: tuple[LiveApp, dict[str, str]], own_pg: OwnPostgres
) -> None:
    live, headers = app_with_admin
    await assert_serving(live, headers)

    await asyncio.to_thread(own_pg.stop)
    health, seconds = await timed(live.client.get("/health"))
    assert health.status_code == 503
    assert health.json() == {"status": "error", "db": "error"}
    assert seconds < HEALTH_BOUND
    response, seconds = await timed(live.client.get(uncached_user_list(), headers=headers))
    assert_unavailable(response)
    assert seconds < API_BOUND
    # Routes an in-process cache may answer without the database: served or 503, never worse.
    for path in (ME, "/api/v1/reference/service-types"):
        response, seconds = await timed(live.client.get(path, headers=headers))
        if response.status_code != 200:
            assert_unavailable(response)
        assert seconds < API_BOUND, (path, seconds)
    assert (await live.client.get("/health/live")).status_code == 200
    assert live.checked_out() == 0

    await asyncio.to_thread(own_pg.start)
    # Pooled connections died with the server; pre-ping replaces them on checkout.
    await assert_serving(live, headers)


async def test_frozen_database_is_503_within_the_timeouts_not_a_hang(
    app_with_admin: tuple[LiveApp, dict[str, str]], own_pg: OwnPostgres
) -> None:
    live, headers = app_with_admin
    await assert_serving(live, headers)  # leaves a connection in the pool, about to freeze too
    frozen = own_pg.freeze()
    try:
        health, seconds = await timed(live.client.get("/health"))
        assert health.status_code == 503
        assert seconds < HEALTH_BOUND
        response, seconds = await timed(live.client.get(uncached_user_list(), headers=headers))
        assert_unavailable(response)
        # A pooled connection that stopped answering costs the pre-ping's command timeout
        # (statement timeout + 1 s), then a reconnect its connect timeout: bounded, no hang.
        assert seconds < 5.0 + 1 + 2 + 1, seconds
    finally:
        own_pg.thaw(frozen)
    await wait_until(lambda: _health_ok(live), within=10)
    await assert_serving(live, headers)


async def _health_ok(live: LiveApp) -> bool:
    return (await live.client.get("/health")).status_code == 200


def _slow_route(app: FastAPI) -> None:
    @app.get("/test/slow")
    async def slow(session: SessionDep) -> dict[str, Any]:
        await session.execute(text("SELECT pg_sleep(1.5)"))
        return {"slept": True}


async def test_pool_exhaustion_sheds_the_excess_with_503_and_recovers(
    own_database: str, jwks_server: JWKSServer
) -> None:
    settings = make_settings(
        own_database,
        cognito_jwks_url=jwks_server.url,
        db_pool_size=5,
        db_max_overflow=2,
        db_pool_timeout_seconds=0.5,
    )
    async with live_app(settings, customize=_slow_route) as live:
        responses = await asyncio.gather(*(live.client.get("/test/slow") for _ in range(50)))
        statuses = sorted(response.status_code for response in responses)
        # Seven connections (5 + 2 overflow) sleep 1.5 s; the rest wait 0.5 s for one and give up.
        assert statuses == [200] * 7 + [503] * 43
        for response in responses:
            if response.status_code == 503:
                assert_unavailable(response)
        assert live.checked_out() == 0
        assert (await live.client.get("/health")).status_code == 200
        again = await asyncio.gather(*(live.client.get("/health") for _ in range(20)))
        assert {response.status_code for response in again} == {200}
        assert live.checked_out() == 0


async def test_a_lock_that_blocks_every_query_is_503_not_a_hang(
    app_with_admin: tuple[LiveApp, dict[str, str]], own_database: str
) -> None:
    live, headers = app_with_admin
    await assert_serving(live, headers)
    async with locked(own_database, "users"):
        # Twenty callers: seven reach a connection and wait on the lock until the statement
        # timeout (5 s); the others wait for a connection until the pool timeout (3 s).
        results = await asyncio.gather(
            *(timed(live.client.get(uncached_user_list(), headers=headers)) for _ in range(20))
        )
    for response, seconds in results:
        assert_unavailable(response)
        assert seconds < 5.0 + 2, seconds
    await assert_serving(live, headers)


# What each read path reads, and which table a lock must hold to make it wait. The caller is
# an admin whose own row is cached (the warm-up request), so only the path itself waits.
READ_PATHS = {
    "user lookup on a cache miss": ("users", ME),
    "user list, count not yet cached": ("users", f"{USERS}?role=OFFICER"),
    # The warm-up's count serves another sort; its page is not cached (the warm-up's is).
    "user list with a cached count": ("users", f"{USERS}?sort=email"),
    "reference list on a cache miss": ("ref_service_types", "/api/v1/reference/service-types"),
    "provinces": ("cases", "/api/v1/reference/provinces"),
}


@pytest.mark.parametrize("path_name", list(READ_PATHS))
async def test_every_read_path_answers_503_when_its_query_times_out(
    own_database: str, jwks_server: JWKSServer, path_name: str
) -> None:
    table, path = READ_PATHS[path_name]
    admin = await add_user(own_database, Role.ADMIN)
    stranger = await add_user(own_database, Role.DISPATCHER)
    settings = make_settings(
        own_database, cognito_jwks_url=jwks_server.url, db_statement_timeout_seconds=1.0
    )
    async with live_app(settings) as live:
        admin_headers = bearer(admin.cognito_user_id)
        await wait_until(lambda: live.state["user_cache"].trusted, within=10)
        # Warm: the admin's row cached, and the unfiltered list's count with it.
        assert (await live.client.get(USERS, headers=admin_headers)).status_code == 200
        headers = bearer(stranger.cognito_user_id) if path == ME else admin_headers
        async with locked(own_database, table):
            response = await live.client.get(path, headers=headers)
        assert_unavailable(response)
        assert (await live.client.get(path, headers=headers)).status_code == 200
        assert live.checked_out() == 0
