"""The user cache: exact across connections and processes, bypassed whenever it cannot be sure.

These tests need real commits (notifications are only sent for committed transactions), so each
runs on a database of its own and talks to the app through its real sessions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import os
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from app.core.listener import NotificationListener
from app.core.roles import Role
from app.main import create_app
from app.models.user import User
from app.schemas.user import UserResponse
from app.services.user_cache import (
    EVERYONE,
    READS_IN_FLIGHT,
    AuthenticatedUser,
    UserCache,
)
from tests.support.database import statements_sent, statements_waiting_for_a_lock
from tests.support.harness import (
    client_of,
    make_settings,
    served,
    token_for,
    wait_until,
)
from tests.support.jwt_tokens import FakeClock, JWKSServer
from tests.support.logs import RecordingHandler
from tests.support.pg_proxy import Drop, PostgresProxy

ME = "/api/v1/users/me"


def asyncpg_dsn(database_url: str) -> str:
    return make_url(database_url).set(drivername="postgresql").render_as_string(False)


async def insert_user(dsn: str, role: Role = Role.DISPATCHER) -> User:
    user = User(
        id=uuid.uuid4(),
        cognito_user_id=f"sub-{uuid.uuid4()}",
        email=f"{uuid.uuid4().hex[:10]}@example.gov",
        full_name="Cached Person",
        role=role,
        responsible_province="Chiang Mai" if role is Role.OFFICER else None,
        is_active=True,
    )
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(
            "INSERT INTO users (id, cognito_user_id, email, full_name, role, "
            "responsible_province) VALUES ($1, $2, $3, $4, $5, $6)",
            user.id,
            user.cognito_user_id,
            user.email,
            user.full_name,
            user.role.value,
            user.responsible_province,
        )
    finally:
        await connection.close()
    return user


async def commit_elsewhere(dsn: str, sql: str, *args: Any) -> None:
    """Run `sql` on a connection of its own, outside the app, and commit."""
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(sql, *args)
    finally:
        await connection.close()


async def fetch_one(dsn: str, sql: str) -> Any:
    connection = await asyncpg.connect(dsn)
    try:
        return await connection.fetchval(sql)
    finally:
        await connection.close()


async def eventually(condition: Callable[[], Any], within: float = 10.0) -> None:
    await wait_until(condition, within=within, every=0.02)


@asynccontextmanager
async def running_app(
    database_url: str, jwks_url: str, *, trusted: bool = True, **overrides: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, Any]]]:
    """The app with its lifespan; once its cache is trusted unless `trusted` is false."""
    app = create_app(make_settings(database_url, cognito_jwks_url=jwks_url, **overrides))
    async with served(app, background=False) as asgi, client_of(asgi) as client:
        cache: UserCache = asgi.state["user_cache"]
        if trusted:
            await eventually(lambda: cache.trusted)
        yield client, dict(asgi.state)


def headers_of(user: User) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_for(user)}"}


async def test_deactivation_committed_by_another_connection_rejects_the_cached_user(
    fresh_database_url: str, jwks_server: JWKSServer
) -> None:
    dsn = asyncpg_dsn(fresh_database_url)
    user = await insert_user(dsn)
    async with running_app(fresh_database_url, jwks_server.url) as (client, state):
        cache: UserCache = state["user_cache"]
        assert (await client.get(ME, headers=headers_of(user))).status_code == 200
        assert cache.get(user.cognito_user_id) is not None, "the first request fills the cache"

        evicted = asyncio.create_task(cache.wait_for_change())
        await commit_elsewhere(dsn, "UPDATE users SET is_active = false WHERE id = $1", user.id)
        # PostgreSQL sends the notification at commit; it arrives here within milliseconds.
        await asyncio.wait_for(evicted, 5)

        response = await client.get(ME, headers=headers_of(user))
        assert response.status_code == 401
        assert cache.get(user.cognito_user_id) is None


async def test_role_change_committed_by_another_connection_applies_to_the_next_request(
    fresh_database_url: str, jwks_server: JWKSServer
) -> None:
    dsn = asyncpg_dsn(fresh_database_url)
    user = await insert_user(dsn, Role.EXECUTIVE)
    async with running_app(fresh_database_url, jwks_server.url) as (client, state):
        cache: UserCache = state["user_cache"]
        assert (await client.get("/api/v1/users", headers=headers_of(user))).status_code == 403
        assert cache.get(user.cognito_user_id) is not None

        evicted = asyncio.create_task(cache.wait_for_change())
        await commit_elsewhere(dsn, "UPDATE users SET role = 'ADMIN' WHERE id = $1", user.id)
        await asyncio.wait_for(evicted, 5)

        assert (await client.get("/api/v1/users", headers=headers_of(user))).status_code == 200
        assert (await client.get(ME, headers=headers_of(user))).json()["role"] == "ADMIN"


async def test_a_commit_through_this_instance_evicts_before_the_commit_returns(
    fresh_database_url: str, jwks_server: JWKSServer
) -> None:
    dsn = asyncpg_dsn(fresh_database_url)
    user = await insert_user(dsn)
    async with running_app(fresh_database_url, jwks_server.url) as (client, state):
        cache: UserCache = state["user_cache"]
        assert (await client.get(ME, headers=headers_of(user))).status_code == 200

        async with state["sessionmaker"]() as session, session.begin():
            row = await session.get(User, user.id)
            assert row is not None
            row.is_active = False
        # No waiting for the notification: this process knew of its own write.
        assert cache.get(user.cognito_user_id) is None
        assert (await client.get(ME, headers=headers_of(user))).status_code == 401


async def test_misses_that_arrive_together_are_read_with_one_statement(
    fresh_database_url: str, jwks_server: JWKSServer
) -> None:
    dsn = asyncpg_dsn(fresh_database_url)
    users = [await insert_user(dsn, role) for role in (Role.ADMIN, Role.OFFICER, Role.EXECUTIVE)]
    async with running_app(fresh_database_url, jwks_server.url) as (client, state):
        async with statements_sent(state["engine"]) as sent:
            callers = [*users, users[0]]  # one of them twice
            responses = await asyncio.gather(
                *(client.get(ME, headers=headers_of(user)) for user in callers)
            )
        assert [r.json()["email"] for r in responses] == [user.email for user in callers]
        assert [r.json()["role"] for r in responses] == ["ADMIN", "OFFICER", "EXECUTIVE", "ADMIN"]
        assert len([statement for statement in sent if "FROM users" in statement.query]) == 1
        # Unknown subs in the same read are refused, each on its own.
        strangers = await asyncio.gather(
            client.get(ME, headers={"Authorization": f"Bearer {token_for(users[0], sub='x-1')}"}),
            client.get(ME, headers={"Authorization": f"Bearer {token_for(users[0], sub='x-2')}"}),
            client.get(ME, headers=headers_of(users[1])),
        )
        assert [r.status_code for r in strangers] == [401, 401, 200]


async def deactivate_through(state: dict[str, Any], user: User) -> None:
    """Commit a deactivation through an app instance's own request sessions."""
    async with state["sessionmaker"]() as session, session.begin():
        row = await session.get(User, user.id)
        assert row is not None
        row.is_active = False


async def test_two_instances_a_deactivation_through_one_is_refused_by_the_other(
    fresh_database_url: str, jwks_server: JWKSServer
) -> None:
    dsn = asyncpg_dsn(fresh_database_url)
    user = await insert_user(dsn)
    async with (
        running_app(fresh_database_url, jwks_server.url) as (client_a, state_a),
        running_app(fresh_database_url, jwks_server.url) as (client_b, state_b),
    ):
        cache_b: UserCache = state_b["user_cache"]
        for client in (client_a, client_b):
            assert (await client.get(ME, headers=headers_of(user))).status_code == 200
        assert cache_b.get(user.cognito_user_id) is not None, "B serves the user from memory"

        await deactivate_through(state_a, user)
        assert (await client_a.get(ME, headers=headers_of(user))).status_code == 401
        # B learns of A's commit from PostgreSQL's notification only: B's requests from A's
        # answer on, with nothing awaited of B's internals, until one is refused. A bound for
        # correctness, not a speed measurement (the bench times delivery: under a millisecond).
        answers: list[int] = []
        async with asyncio.timeout(3):
            while not answers or answers[-1] != 401:
                answers.append((await client_b.get(ME, headers=headers_of(user))).status_code)
        assert set(answers) <= {200, 401}, answers
        assert cache_b.get(user.cognito_user_id) is None


async def test_two_instances_while_the_others_listener_is_down_it_refuses_at_once(
    fresh_database_url: str, jwks_server: JWKSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = asyncpg_dsn(fresh_database_url)
    user = await insert_user(dsn)
    async with (
        running_app(fresh_database_url, jwks_server.url) as (_, state_a),
        running_app(fresh_database_url, jwks_server.url) as (client_b, state_b),
    ):
        cache_b: UserCache = state_b["user_cache"]
        assert (await client_b.get(ME, headers=headers_of(user))).status_code == 200
        assert cache_b.get(user.cognito_user_id) is not None
        # B's listener goes down and stays down; A's reconnects as it would.
        listener_b: NotificationListener = cache_b._listener  # type: ignore[assignment]
        never = asyncio.Event()

        async def stay_down() -> asyncpg.Connection:
            await never.wait()
            raise AssertionError("unreachable")

        monkeypatch.setattr(listener_b, "_connect", stay_down)
        await commit_elsewhere(
            dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        await eventually(lambda: not cache_b.trusted)
        await eventually(lambda: state_a["user_cache"].trusted)

        # No notification can reach B now; it reads the row on every request instead.
        await deactivate_through(state_a, user)
        assert (await client_b.get(ME, headers=headers_of(user))).status_code == 401
        assert not cache_b.trusted


async def test_a_lost_listener_clears_and_bypasses_the_cache_until_it_reconnects(
    fresh_database_url: str, jwks_server: JWKSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = asyncpg_dsn(fresh_database_url)
    user = await insert_user(dsn)
    async with running_app(fresh_database_url, jwks_server.url) as (client, state):
        cache: UserCache = state["user_cache"]
        assert (await client.get(ME, headers=headers_of(user))).status_code == 200
        assert len(cache) == 1
        # The listener may reconnect only when the test says so.
        listener: NotificationListener = cache._listener  # type: ignore[assignment]
        reconnect = asyncio.Event()
        connect = listener._connect

        async def connect_when_allowed() -> asyncpg.Connection:
            await reconnect.wait()
            return await connect()

        monkeypatch.setattr(listener, "_connect", connect_when_allowed)

        # Every other connection of the database goes, the listener's among them.
        await commit_elsewhere(
            dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        await eventually(lambda: not cache.trusted)
        assert len(cache) == 0
        # While nothing listens, each request reads the row: a deactivation applies at once.
        await commit_elsewhere(dsn, "UPDATE users SET is_active = false WHERE id = $1", user.id)
        assert (await client.get(ME, headers=headers_of(user))).status_code == 401
        assert not cache.trusted

        reconnect.set()
        await eventually(lambda: cache.trusted)
        await commit_elsewhere(dsn, "UPDATE users SET is_active = true WHERE id = $1", user.id)
        await eventually(lambda: cache.get(user.cognito_user_id) is None)
        assert (await client.get(ME, headers=headers_of(user))).status_code == 200
        assert cache.get(user.cognito_user_id) is not None


async def test_a_listener_that_stops_answering_is_noticed_within_five_seconds(
    fresh_database_url: str, jwks_server: JWKSServer
) -> None:
    dsn = asyncpg_dsn(fresh_database_url)
    async with running_app(fresh_database_url, jwks_server.url) as (_, state):
        cache: UserCache = state["user_cache"]
        # Its server process frozen: the socket stays open, nothing closes, nothing answers.
        backend_pid = await fetch_one(
            dsn,
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND query LIKE 'LISTEN%'",
        )
        os.kill(backend_pid, signal.SIGSTOP)
        try:
            # A bound for correctness, not a speed measurement: no heartbeat comes back, and
            # 3 s after the last one that did the cache is bypassed, whatever else is running.
            await eventually(lambda: not cache.trusted, within=5)
        finally:
            os.kill(backend_pid, signal.SIGCONT)
        assert cache.get("anyone") is None
        await eventually(lambda: cache.trusted)


async def test_with_the_user_cache_turned_off_nothing_listens_and_every_request_reads(
    fresh_database_url: str, jwks_server: JWKSServer
) -> None:
    dsn = asyncpg_dsn(fresh_database_url)
    user = await insert_user(dsn)
    settings = make_settings(fresh_database_url, cognito_jwks_url=jwks_server.url, user_cache=False)
    app = create_app(settings)
    async with served(app) as asgi, client_of(asgi) as client:
        cache: UserCache = asgi.state["user_cache"]
        assert (await client.get(ME, headers=headers_of(user))).status_code == 200
        assert len(cache) == 0
        listening = await fetch_one(
            dsn,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND query LIKE 'LISTEN%'",
        )
        assert listening == 0
        await commit_elsewhere(dsn, "UPDATE users SET is_active = false WHERE id = $1", user.id)
        assert (await client.get(ME, headers=headers_of(user))).status_code == 401


async def test_mass_updates_tell_listeners_to_forget_everyone(fresh_database_url: str) -> None:
    dsn = asyncpg_dsn(fresh_database_url)
    payloads: list[str] = []
    listener = await asyncpg.connect(dsn)
    try:
        await listener.add_listener(
            "users_changed", lambda _c, _p, _ch, payload: payloads.append(payload)
        )
        await commit_elsewhere(
            dsn,
            "INSERT INTO users (cognito_user_id, email, full_name, role) "
            "SELECT 'mass-' || g, 'mass' || g || '@example.gov', 'Mass', 'EXECUTIVE' "
            "FROM generate_series(1, 1001) AS g",
        )
        await commit_elsewhere(
            dsn, "UPDATE users SET full_name = 'Renamed' WHERE email = $1", "mass1@example.gov"
        )
        await commit_elsewhere(dsn, "UPDATE users SET full_name = 'Renamed'")
        await commit_elsewhere(dsn, "DELETE FROM users WHERE cognito_user_id = 'mass-2'")
        await eventually(lambda: len(payloads) == 4, within=5)
    finally:
        await listener.close()
    # One row names its user; a thousand and one rows, inserted or updated, say "everyone".
    assert payloads == [EVERYONE, "mass-1", EVERYONE, "mass-2"]


# --- behind a proxy that drops notifications ------------------------------------------------
# The app's database connections go through a proxy that passes queries but, when told to,
# drops the NotificationResponse messages, as RDS Proxy or PgBouncer in transaction mode do.
# Changes are committed on connections of their own, straight to the database.


@asynccontextmanager
async def proxy_to(database_url: str) -> AsyncIterator[PostgresProxy]:
    url = make_url(database_url)
    async with PostgresProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        yield proxy


def dsn_through(proxy: PostgresProxy, database_url: str) -> str:
    url = make_url(database_url).set(drivername="postgresql", host="127.0.0.1", port=proxy.port)
    return url.render_as_string(False)


async def until_listening_through(proxy: PostgresProxy, dsn: str) -> None:
    """Until a notification committed elsewhere reaches the proxy: a LISTEN through it is up."""
    seen = proxy.dropped + proxy.delivered
    async with asyncio.timeout(10):
        while proxy.dropped + proxy.delivered == seen:
            await commit_elsewhere(dsn, "NOTIFY users_changed, 'nobody'")
            await asyncio.sleep(0.05)


@contextmanager
def listener_logs() -> Iterator[RecordingHandler]:
    """What the listener logs, however the app (re)configures the root logger meanwhile."""
    handler = RecordingHandler()
    logger = logging.getLogger("app.core.listener")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def listener_warnings(logs: RecordingHandler) -> list[logging.LogRecord]:
    return logs.at_least(logging.WARNING)


def listener_infos(logs: RecordingHandler, text: str) -> list[logging.LogRecord]:
    return [r for r in logs.records if r.levelno == logging.INFO and text in r.getMessage()]


async def until_status(client: httpx.AsyncClient, user: User, status: int) -> None:
    while (await client.get(ME, headers=headers_of(user))).status_code != status:  # noqa: ASYNC110 - polls the API
        await asyncio.sleep(0.05)


async def test_when_a_proxy_starts_dropping_notifications_the_cache_is_bypassed_within_5_s(
    fresh_database_url: str, jwks_server: JWKSServer
) -> None:
    dsn = asyncpg_dsn(fresh_database_url)
    user = await insert_user(dsn, Role.EXECUTIVE)
    async with (
        proxy_to(fresh_database_url) as proxy,
        running_app(
            fresh_database_url, jwks_server.url, db_host="127.0.0.1", db_port=proxy.port
        ) as (client, state),
    ):
        cache: UserCache = state["user_cache"]
        with listener_logs() as logs:
            assert (await client.get(ME, headers=headers_of(user))).status_code == 200
            assert cache.get(user.cognito_user_id) is not None

            proxy.drop = Drop.ALL_NOTIFICATIONS
            await commit_elsewhere(dsn, "UPDATE users SET is_active = false WHERE id = $1", user.id)
            # The deactivation's notification never arrives, nor do the heartbeats: within 5 s
            # of the last one proven (before the proxy began to drop) the row is read instead.
            await asyncio.wait_for(until_status(client, user, 401), 5)
            assert proxy.dropped >= 2, "the change's notification and a heartbeat were dropped"

            # Working uncached: every request reads its user, so every change applies at once.
            await eventually(lambda: len(listener_warnings(logs)) == 1, within=5)
            await commit_elsewhere(
                dsn, "UPDATE users SET is_active = true, role = 'ADMIN' WHERE id = $1", user.id
            )
            assert (await client.get(ME, headers=headers_of(user))).json()["role"] == "ADMIN"
            await commit_elsewhere(
                dsn, "UPDATE users SET role = 'DISPATCHER' WHERE id = $1", user.id
            )
            assert (await client.get(ME, headers=headers_of(user))).json()["role"] == "DISPATCHER"
            assert not cache.trusted
            assert len(cache) == 0
            # The heartbeats go on unanswered, and say so once, not once per heartbeat.
            dropped = proxy.dropped
            await eventually(lambda: proxy.dropped >= dropped + 3, within=10)
            assert len(listener_warnings(logs)) == 1
            assert "not being delivered" in listener_warnings(logs)[0].getMessage()

            # Delivered again: the cache is used again, starting empty, and hears changes.
            proxy.drop = Drop.NOTHING
            await eventually(lambda: cache.trusted)
            assert len(listener_infos(logs, "delivered again")) == 1
            assert len(cache) == 0
            assert (await client.get(ME, headers=headers_of(user))).json()["role"] == "DISPATCHER"
            assert cache.get(user.cognito_user_id) is not None
            evicted = asyncio.create_task(cache.wait_for_change())
            await commit_elsewhere(dsn, "UPDATE users SET is_active = false WHERE id = $1", user.id)
            await asyncio.wait_for(evicted, 5)
            assert (await client.get(ME, headers=headers_of(user))).status_code == 401
            assert len(listener_warnings(logs)) == 1


async def test_where_notifications_are_never_delivered_the_app_works_uncached_with_one_warning(
    fresh_database_url: str, jwks_server: JWKSServer
) -> None:
    dsn = asyncpg_dsn(fresh_database_url)
    user = await insert_user(dsn)
    async with proxy_to(fresh_database_url) as proxy:
        proxy.drop = Drop.ALL_NOTIFICATIONS
        with listener_logs() as logs:
            async with running_app(
                fresh_database_url,
                jwks_server.url,
                trusted=False,
                db_host="127.0.0.1",
                db_port=proxy.port,
            ) as (client, state):
                cache: UserCache = state["user_cache"]
                await until_listening_through(proxy, dsn)
                assert (await client.get(ME, headers=headers_of(user))).status_code == 200
                await commit_elsewhere(
                    dsn, "UPDATE users SET is_active = false WHERE id = $1", user.id
                )
                assert (await client.get(ME, headers=headers_of(user))).status_code == 401
                await eventually(lambda: len(listener_warnings(logs)) == 1, within=10)
                # Several heartbeats later: still that one line, still nothing cached.
                dropped = proxy.dropped
                await eventually(lambda: proxy.dropped >= dropped + 3, within=10)
                await commit_elsewhere(
                    dsn, "UPDATE users SET is_active = true WHERE id = $1", user.id
                )
                assert (await client.get(ME, headers=headers_of(user))).status_code == 200
                assert not cache.trusted
                assert len(cache) == 0
        assert len(listener_warnings(logs)) == 1
        assert listener_infos(logs, "delivered") == []


async def test_a_notify_the_listening_session_sends_itself_proves_nothing(
    fresh_database_url: str,
) -> None:
    """Behind a pooler, a NOTIFY can run on the very server session that LISTENs, and come back
    to it while every other session's notification is lost: the heartbeat must come from
    another session."""
    dsn = asyncpg_dsn(fresh_database_url)
    async with proxy_to(fresh_database_url) as proxy:
        proxy.drop = Drop.NOTIFICATIONS_FROM_OTHER_SESSIONS
        through_proxy = dsn_through(proxy, fresh_database_url)
        # The proxy as described: a session hears itself, not the others.
        heard: list[str] = []
        connection = await asyncpg.connect(through_proxy)
        try:
            await connection.add_listener(
                "probe", lambda _c, _p, _ch, payload: heard.append(payload)
            )
            await commit_elsewhere(dsn, "NOTIFY probe, 'other'")
            await connection.execute("NOTIFY probe, 'self'")
            await eventually(lambda: heard == ["self"], within=5)
        finally:
            await connection.close()

        listener = NotificationListener(lambda: asyncpg.connect(through_proxy), min_backoff=0.05)
        lost: list[str] = []
        listener.subscribe("users_changed", lambda _payload: None, lambda: lost.append("lost"))
        listener.start()
        try:
            # Listening, and a few heartbeats later still nothing proven.
            await until_listening_through(proxy, dsn)
            dropped = proxy.dropped
            # The heartbeats are sent (and dropped): without them this would prove nothing.
            await eventually(lambda: proxy.dropped >= dropped + 3, within=5)
            assert not listener.listening
            assert lost == []  # nothing was ever trusted, so nothing had to be forgotten
        finally:
            await listener.aclose()


async def test_the_listener_forgets_once_per_gap_in_delivery_and_trusts_again_after_it(
    fresh_database_url: str,
) -> None:
    async with proxy_to(fresh_database_url) as proxy:
        through_proxy = dsn_through(proxy, fresh_database_url)
        listener = NotificationListener(lambda: asyncpg.connect(through_proxy))
        events: list[str] = []
        listener.subscribe("c", events.append, lambda: events.append("lost"))
        listener.start()
        try:
            await eventually(lambda: listener.listening)
            proxy.drop = Drop.ALL_NOTIFICATIONS
            await eventually(lambda: not listener.listening, within=5)
            dropped = proxy.dropped
            await eventually(lambda: proxy.dropped >= dropped + 3, within=10)
            assert events == ["lost"]
            proxy.drop = Drop.NOTHING
            await eventually(lambda: listener.listening)
            await commit_elsewhere(asyncpg_dsn(fresh_database_url), "NOTIFY c, 'after'")
            await eventually(lambda: events == ["lost", "after"], within=5)
        finally:
            await listener.aclose()


# --- the cache on its own ---------------------------------------------------------------------


def cached_user() -> AuthenticatedUser:
    now = datetime.now(UTC)
    return AuthenticatedUser(
        id=uuid.uuid4(),
        cognito_user_id="sub-1",
        email="a@example.gov",
        full_name="A",
        role=Role.EXECUTIVE,
        responsible_province=None,
        is_active=True,
        created_at=now,
        updated_at=now,
        sessions_revoked_at=None,
    )


async def never_connects() -> asyncpg.Connection:
    raise OSError("database unreachable")


def listening_cache(**options: Any) -> UserCache:
    """A cache whose listener says it listens (no connection: for the cache's own rules)."""
    listener = NotificationListener(never_connects)
    listener._proven_at = math.inf  # as if every heartbeat came back
    return UserCache(listener, **options)


async def test_without_a_listener_nothing_is_cached_or_served() -> None:
    listener = NotificationListener(never_connects, min_backoff=0.01, max_backoff=0.02)
    cache = UserCache(listener)
    listener.start()
    try:
        await asyncio.sleep(0.05)
        assert not cache.trusted
        assert cache.ticket() is None
        cache.put(cache.ticket(), cached_user())
        assert cache.get("sub-1") is None
        assert len(cache) == 0
    finally:
        await listener.aclose()


async def test_a_lookup_that_raced_with_a_change_is_not_stored() -> None:
    cache = listening_cache()
    ticket = cache.ticket()
    cache.invalidate(["someone-else"])  # a change arrives while the row is being read
    cache.put(ticket, cached_user())
    assert cache.get("sub-1") is None

    cache.put(cache.ticket(), cached_user())
    hit = cache.get("sub-1")
    assert hit is not None
    assert hit.role is Role.EXECUTIVE
    # One snapshot serves every request of the user, so it must be immutable.
    with pytest.raises(dataclasses.FrozenInstanceError):
        hit.role = Role.ADMIN  # type: ignore[misc]


async def test_users_cached_together_expire_over_the_last_fifth_of_the_ttl() -> None:
    clock = FakeClock(start=0.0)
    cache = listening_cache(ttl_seconds=300, timer=clock)
    subs = [f"sub-{n}" for n in range(1_000)]
    for sub in subs:
        cache.put(cache.ticket(), dataclasses.replace(cached_user(), cognito_user_id=sub))

    def still_cached(at: float) -> int:
        clock.now = at
        return sum(cache.get(sub) is not None for sub in subs)

    assert still_cached(239.9) == 1_000
    assert 350 < still_cached(270) < 650  # about half: the expiries are spread evenly
    assert still_cached(300) == 0


async def test_misses_beyond_the_reads_in_flight_wait_and_go_out_as_one_batch(
    fresh_database_url: str, jwks_server: JWKSServer
) -> None:
    # The reads are held in PostgreSQL itself: a lock on users that every SELECT waits for.
    dsn = asyncpg_dsn(fresh_database_url)
    users = [await insert_user(dsn) for _ in range(READS_IN_FLIGHT + 2)]
    first, rest = users[:READS_IN_FLIGHT], users[READS_IN_FLIGHT:]
    async with running_app(fresh_database_url, jwks_server.url) as (client, state):

        async def reads_held() -> int:
            return sum("FROM users" in sql for sql in await statements_waiting_for_a_lock(dsn))

        async def reads_held_are(count: int) -> bool:
            return await reads_held() == count

        locker = await asyncpg.connect(dsn)
        try:
            async with statements_sent(state["engine"]) as sent:
                lock = locker.transaction()
                await lock.start()
                await locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")

                def ask(*callers: User) -> list[asyncio.Task[httpx.Response]]:
                    return [
                        asyncio.create_task(client.get(ME, headers=headers_of(user)))
                        for user in callers
                    ]

                asked: list[asyncio.Task[httpx.Response]] = []
                for held, user in enumerate(first, start=1):  # one read each, as they come
                    asked += ask(user)
                    await eventually(functools.partial(reads_held_are, held))
                asked += ask(*rest, rest[0])
                await asyncio.sleep(0.3)  # time enough to send a read, were a slot free
                assert await reads_held() == READS_IN_FLIGHT  # the rest wait for a read to end

                await lock.commit()
                answers = await asyncio.gather(*asked)
        finally:
            await locker.close()
        assert [answer.json()["email"] for answer in answers] == [
            user.email for user in (*first, *rest, rest[0])
        ]
        # Logged as they end, in any order: a read each for the first, then one for the rest.
        subs_read = sorted(sorted(read.args[0]) for read in sent if "FROM users" in read.query)
        assert subs_read == sorted(
            [[user.cognito_user_id] for user in first]
            + [sorted(user.cognito_user_id for user in rest)]
        )


async def test_inactive_users_are_never_stored() -> None:
    cache = listening_cache()
    cache.put(cache.ticket(), dataclasses.replace(cached_user(), is_active=False))
    assert len(cache) == 0


async def test_the_listener_delivers_each_channel_and_reports_its_loss_to_every_subscriber(
    fresh_database_url: str,
) -> None:
    dsn = asyncpg_dsn(fresh_database_url)
    listener = NotificationListener(lambda: asyncpg.connect(dsn), min_backoff=0.05)
    events: list[str] = []
    listener.subscribe(
        "one", lambda payload: events.append(f"one:{payload}"), lambda: events.append("one lost")
    )
    listener.subscribe(
        "two", lambda payload: events.append(f"two:{payload}"), lambda: events.append("two lost")
    )
    listener.start()
    try:
        await eventually(lambda: listener.listening)

        await commit_elsewhere(dsn, "NOTIFY two, 'b'")
        await commit_elsewhere(dsn, "NOTIFY one, 'a'")
        await eventually(lambda: events == ["two:b", "one:a"])

        await commit_elsewhere(
            dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        await eventually(lambda: len(events) == 4)
        assert sorted(events[2:]) == ["one lost", "two lost"]
        await eventually(lambda: listener.listening)
    finally:
        await listener.aclose()


def test_a_snapshots_profile_is_rendered_once_and_as_the_schema_renders_it() -> None:
    user = AuthenticatedUser(
        id=uuid.uuid4(),
        role=Role.OFFICER,
        responsible_province="Chiang Mai",
        cognito_user_id="sub-1",
        email="officer@example.gov",
        full_name="An Officer",
        is_active=True,
        created_at=datetime(2026, 12, 1, tzinfo=UTC),
        updated_at=datetime(2026, 12, 2, tzinfo=UTC),
        sessions_revoked_at=None,
    )
    rendered = user.profile_json()
    assert rendered == UserResponse.model_validate(user).model_dump_json().encode()
    assert user.profile_json() is rendered
    # The memo is no part of the snapshot's value: a fresh copy of the row is the same user.
    assert user == dataclasses.replace(user)
