"""User management over HTTP: who may call it, the list, password resets and the audit trail,
asserted on the database and a moto Cognito pool."""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.principal import Principal
from app.core.roles import Role
from app.models.user import User
from app.schemas.user import UserList
from app.services.cognito import CognitoUserPool
from tests.api.user_requests import ME, USERS, create, new_email
from tests.support.harness import UserFactory, auth_headers
from tests.support.moto_cognito import (
    MotoCognito,
    aws_error_response,
    fail_operation,
)

# Every test here uses the moto-backed adapter.
pytestmark = pytest.mark.usefixtures("cognito")


# ---------------------------------------------------------------------------------------------
# Access


async def test_admin_lists_officer_is_refused_anonymous_is_challenged(
    client: httpx.AsyncClient, make_user: UserFactory, admin_headers: dict[str, str]
) -> None:
    officer = await make_user(Role.OFFICER)
    assert (await client.get(USERS, headers=admin_headers)).status_code == 200
    assert (await client.get(USERS, headers=auth_headers(officer))).status_code == 403
    assert (await client.get(USERS)).status_code == 401


async def test_me_is_never_read_as_an_id(
    client: httpx.AsyncClient, make_user: UserFactory, admin_headers: dict[str, str]
) -> None:
    officer = await make_user(Role.OFFICER)
    officer_id, officer_headers = str(officer.id), auth_headers(officer)
    me = await client.get(ME, headers=officer_headers)
    assert me.status_code == 200
    assert me.json()["id"] == officer_id
    # The same user through /{user_id} needs ADMIN.
    assert (await client.get(f"{USERS}/{officer_id}", headers=officer_headers)).status_code == 403
    by_id = await client.get(f"{USERS}/{officer_id}", headers=admin_headers)
    assert by_id.status_code == 200
    assert by_id.json() == {**me.json(), "directory_in_step": True}


async def test_malformed_id_is_422_and_unknown_id_is_404(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    assert (await client.get(f"{USERS}/not-a-uuid", headers=admin_headers)).status_code == 422
    missing = await client.get(f"{USERS}/{uuid.uuid4()}", headers=admin_headers)
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    update = await client.put(f"{USERS}/{uuid.uuid4()}", json={}, headers=admin_headers)
    reset = await client.post(f"{USERS}/{uuid.uuid4()}/reset-password", headers=admin_headers)
    assert (update.status_code, reset.status_code) == (404, 404)


# ---------------------------------------------------------------------------------------------
# List


@pytest.fixture
async def listed(make_user: UserFactory, db_session: AsyncSession) -> tuple[str, list[User]]:
    """Six users sharing a tag in their names, with distinct creation times."""
    tag = uuid.uuid4().hex[:8]
    users = [
        await make_user(Role.ADMIN, full_name=f"Anong {tag}"),
        await make_user(Role.DISPATCHER, full_name=f"Boon {tag}", is_active=False),
        await make_user(Role.OFFICER, full_name=f"Chai {tag}", province="Phuket"),
        await make_user(Role.OFFICER, full_name=f"Dao {tag} 100%", province="Chiang Mai"),
        await make_user(Role.EXECUTIVE, full_name=f"Ek {tag} 1000"),
        await make_user(Role.EXECUTIVE, full_name=f"Ek {tag} 1000"),
    ]
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for offset, user in enumerate(users):
        await db_session.execute(
            update(User).where(User.id == user.id).values(created_at=base + timedelta(days=offset))
        )
    await db_session.commit()
    return tag, users


async def get_list(
    client: httpx.AsyncClient, headers: dict[str, str], **params: Any
) -> dict[str, Any]:
    response = await client.get(USERS, params=params, headers=headers)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def test_pagination_pages_through_every_match_once(
    client: httpx.AsyncClient, admin_headers: dict[str, str], listed: tuple[str, list[User]]
) -> None:
    tag, users = listed
    seen: list[str] = []
    for page_number in (1, 2, 3):
        page = await get_list(client, admin_headers, q=tag, page=page_number, page_size=2)
        assert page["total"] == 6
        assert page["page"] == page_number
        assert page["page_size"] == 2
        assert len(page["items"]) == 2
        seen += [item["id"] for item in page["items"]]
    assert sorted(seen) == sorted(str(user.id) for user in users)
    beyond = await get_list(client, admin_headers, q=tag, page=4, page_size=2)
    assert beyond["items"] == []
    assert beyond["total"] == 6
    default = await get_list(client, admin_headers, q=tag)
    assert default["page"] == 1
    assert default["page_size"] == 20


@pytest.mark.parametrize(
    "params",
    [
        {"page_size": 0},
        {"page_size": 101},
        {"page": 0},
        {"page": -1},
        {"page": "x"},
        {"sort": "password"},
        {"sort": "-id"},
        {"role": "ROOT"},
        {"is_active": "maybe"},
        {"q": "x" * 101},
        {"unknown": "1"},
    ],
)
async def test_out_of_range_or_unknown_parameters_are_422(
    client: httpx.AsyncClient, admin_headers: dict[str, str], params: dict[str, Any]
) -> None:
    response = await client.get(USERS, params=params, headers=admin_headers)
    assert response.status_code == 422, params
    assert response.json()["code"] == "validation_error"


def names(page: dict[str, Any]) -> list[str]:
    return [item["full_name"].split(" ")[0] for item in page["items"]]


async def test_filters(
    client: httpx.AsyncClient, admin_headers: dict[str, str], listed: tuple[str, list[User]]
) -> None:
    tag, users = listed
    sort = "full_name"
    assert names(await get_list(client, admin_headers, q=tag, role="OFFICER", sort=sort)) == [
        "Chai",
        "Dao",
    ]
    assert names(await get_list(client, admin_headers, q=tag, is_active="false")) == ["Boon"]
    assert len((await get_list(client, admin_headers, q=tag, is_active="true"))["items"]) == 5
    assert names(await get_list(client, admin_headers, q=tag, province="Phuket")) == ["Chai"]
    # q: case-insensitive, in the name or in the email.
    assert names(await get_list(client, admin_headers, q=f"ANONG {tag.upper()}")) == ["Anong"]
    by_email = await get_list(client, admin_headers, q=users[4].email.upper())
    assert [item["id"] for item in by_email["items"]] == [str(users[4].id)]
    # LIKE wildcards in q are plain characters.
    assert names(await get_list(client, admin_headers, q=f"{tag} 100%")) == ["Dao"]
    assert names(await get_list(client, admin_headers, q=f"{tag} 1_0")) == []
    combined = await get_list(
        client, admin_headers, q=tag, role="OFFICER", province="Chiang Mai", is_active="true"
    )
    assert names(combined) == ["Dao"]
    assert combined["total"] == 1


async def test_every_sort_order_is_stable(
    client: httpx.AsyncClient, admin_headers: dict[str, str], listed: tuple[str, list[User]]
) -> None:
    tag, users = listed
    ids = [str(user.id) for user in users]
    by_id = {str(user.id): user for user in users}

    async def order(sort: str) -> list[str]:
        page = await get_list(client, admin_headers, q=tag, sort=sort)
        return [item["id"] for item in page["items"]]

    assert await order("-created_at") == ids[::-1]
    assert await order("created_at") == ids
    assert await order("email") == sorted(ids, key=lambda i: by_id[i].email)
    assert await order("-email") == sorted(ids, key=lambda i: by_id[i].email, reverse=True)
    # Two users share one name: the id decides between them, the same way on every call.
    twins = sorted(ids[4:])
    assert await order("full_name") == [*ids[:4], *twins]
    assert await order("-full_name") == [*twins[::-1], *ids[:4][::-1]]
    assert (await get_list(client, admin_headers, q=tag))["items"][0]["id"] == ids[-1]


# ---------------------------------------------------------------------------------------------
# Reset password


async def test_reset_password_of_a_user_who_signed_in_before(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    make_user: UserFactory,
    moto_cognito: MotoCognito,
    db_session: AsyncSession,
) -> None:
    email = new_email("forgetful")
    sub = moto_cognito.create_user(email, role=Role.DISPATCHER, confirmed=True)
    user = await make_user(Role.DISPATCHER, email=email)
    user.cognito_user_id = sub
    await db_session.commit()
    response = await client.post(f"{USERS}/{user.id}/reset-password", headers=admin_headers)
    assert response.status_code == 202
    assert response.json() == {"outcome": "reset"}
    assert moto_cognito.find(email)["UserStatus"] == "RESET_REQUIRED"  # type: ignore[index]


async def test_reset_password_of_a_user_who_never_signed_in_resends_the_invitation(
    client: httpx.AsyncClient, admin_headers: dict[str, str], moto_cognito: MotoCognito
) -> None:
    email = new_email("invitee")
    created = await create(client, admin_headers, email)
    response = await client.post(f"{USERS}/{created['id']}/reset-password", headers=admin_headers)
    assert response.status_code == 202
    assert response.json() == {"outcome": "invitation_resent"}
    assert moto_cognito.find(email)["UserStatus"] == "FORCE_CHANGE_PASSWORD"  # type: ignore[index]


async def test_reset_password_of_an_inactive_user_is_409(
    client: httpx.AsyncClient, admin_headers: dict[str, str], make_user: UserFactory
) -> None:
    inactive = await make_user(Role.DISPATCHER, is_active=False)
    response = await client.post(f"{USERS}/{inactive.id}/reset-password", headers=admin_headers)
    assert response.status_code == 409
    assert "deactivated" in response.json()["detail"]


async def test_reset_password_throttled_is_429_with_retry_after(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    cognito: CognitoUserPool,
) -> None:
    created = await create(client, admin_headers, new_email("throttled"))
    fail_operation(
        cognito,
        "AdminResetUserPassword",
        lambda: aws_error_response(400, "TooManyRequestsException", "Rate exceeded"),
    )
    response = await client.post(f"{USERS}/{created['id']}/reset-password", headers=admin_headers)
    assert response.status_code == 429
    assert int(response.headers["Retry-After"]) > 0
    assert response.json()["code"] == "too_many_requests"


# ---------------------------------------------------------------------------------------------
# Audit and schema


async def test_each_admin_action_writes_one_audit_line_without_secrets(
    client: httpx.AsyncClient,
    make_user: UserFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin = await make_user(Role.ADMIN)
    admin_id, headers = str(admin.id), auth_headers(admin)
    with caplog.at_level(logging.INFO, logger="app.audit"):
        created = await create(client, headers, new_email("audited"))
        await client.put(f"{USERS}/{created['id']}", json={"full_name": "X"}, headers=headers)
        await client.post(f"{USERS}/{created['id']}/reset-password", headers=headers)
        await client.put(f"{USERS}/{admin_id}", json={"is_active": False}, headers=headers)
    lines = [record for record in caplog.records if record.name == "app.audit"]
    assert [(r.action, r.outcome) for r in lines] == [  # type: ignore[attr-defined]
        ("user.create", "success"),
        ("user.update", "success"),
        ("user.reset_password", "success"),
        ("user.update", "refused:conflict"),
    ]
    for record in lines:
        assert record.actor_id == admin_id  # type: ignore[attr-defined]
    assert [r.target_id for r in lines[:3]] == [created["id"]] * 3  # type: ignore[attr-defined]
    token = headers["Authorization"].removeprefix("Bearer ")
    assert token not in caplog.text


def test_openapi_declares_every_status_each_route_returns(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    expected = {
        ("post", USERS): {"201", "401", "403", "409", "422", "429", "503"},
        ("get", USERS): {"200", "401", "403", "422", "503"},
        ("get", f"{USERS}/{{user_id}}"): {"200", "401", "403", "404", "422", "503"},
        ("put", f"{USERS}/{{user_id}}"): {"200", "401", "403", "404", "409", "422", "503"},
        ("post", f"{USERS}/{{user_id}}/reset-password"): {
            "202",
            "401",
            "403",
            "404",
            "409",
            "429",
            "503",
        },
        ("get", ME): {"200", "401", "503"},
    }
    for (method, path), statuses in expected.items():
        declared = set(paths[path][method]["responses"])
        assert statuses <= declared, (method, path, statuses - declared)
        assert paths[path][method]["description"] or paths[path][method]["summary"]


async def test_requests_that_miss_one_page_together_read_it_once(
    client: httpx.AsyncClient,
    make_user: UserFactory,
    served_app: Any,
    api_database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state = served_app.state
    admin = auth_headers(await make_user(Role.ADMIN))

    class AnAdmin:
        """The caller, answered without the users table, which the test locks: a cached
        admin could be evicted meanwhile by a notification (its own insert's, arriving late)."""

        async def active_user(self, _sub: str, _session_started_at: int) -> Principal:
            return Principal(id=uuid.uuid4(), role=Role.ADMIN, responsible_province=None)

    monkeypatch.setitem(served_app.overrides, "user_lookup", AnAdmin())
    async with asyncio.timeout(10):
        while not state["user_cache"].trusted:  # noqa: ASYNC110 - the listener proves itself
            await asyncio.sleep(0.05)
    page = f"{USERS}?q={uuid.uuid4().hex}"
    reads: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if "ILIKE" in statement.upper():
            reads.append(statement)

    engine = state["engine"]
    event.listen(engine.sync_engine, "before_cursor_execute", record)
    locker: asyncpg.Connection | None = None
    try:
        # The first read is held in PostgreSQL: every SELECT on users waits for this lock,
        # taken on a connection of its own (not one of the app's pool).
        dsn = make_url(api_database_url).set(drivername="postgresql")
        locker = await asyncpg.connect(dsn.render_as_string(hide_password=False))
        lock = locker.transaction()
        await lock.start()
        await locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        asked = [asyncio.create_task(client.get(page, headers=admin)) for _ in range(10)]
        async with asyncio.timeout(10):
            while not reads:  # noqa: ASYNC110 - the first request's count is sent
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # time enough for the others to send theirs, were they to
        assert len(reads) == 1
        await lock.rollback()
        answers = await asyncio.gather(*asked)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
        if locker is not None:
            await locker.close()
    assert {answer.status_code for answer in answers} == {200}
    assert len({answer.content for answer in answers}) == 1
    assert UserList.model_validate_json(answers[0].content).total == 0
    assert len(reads) == 1  # the one count (nothing matches: no page to read) served all ten


async def test_a_page_is_sent_gzipped_to_a_client_that_accepts_gzip(
    client: httpx.AsyncClient, admin_headers: dict[str, str], listed: tuple[str, list[User]]
) -> None:
    """As browsers ask (Nginx would otherwise compress each response anew); the same JSON."""
    tag, _ = listed

    async def get(accept_encoding: str) -> httpx.Response:
        headers = {**admin_headers, "Accept-Encoding": accept_encoding}
        response = await client.get(USERS, params={"q": tag}, headers=headers)
        assert response.status_code == 200
        assert "Accept-Encoding" in response.headers.get_list("vary")
        return response

    plain, gzipped, refused = (
        await get("identity"),
        await get("gzip, deflate, br"),
        await get("br, gzip;q=0"),
    )
    assert "content-encoding" not in plain.headers
    assert "content-encoding" not in refused.headers
    assert gzipped.headers["content-encoding"] == "gzip"
    assert int(gzipped.headers["content-length"]) < len(plain.content) / 2
    assert gzipped.json() == plain.json() == refused.json()  # httpx decodes the gzip
    assert len(plain.json()["items"]) == 6


async def test_a_page_is_served_as_cached_until_a_users_row_changes(
    client: httpx.AsyncClient, make_user: UserFactory, served_app: Any
) -> None:
    """The page cache answers under the count cache's rule: while the listener vouches for it
    and no users row changed since."""
    admin = await make_user(Role.ADMIN)
    state = served_app.state
    async with asyncio.timeout(10):
        while not state["user_cache"].trusted:  # noqa: ASYNC110 - the listener proves itself
            await asyncio.sleep(0.05)
    page = f"{USERS}?page=1&sort=full_name"
    first = await client.get(page, headers=auth_headers(admin))
    assert first.status_code == 200

    async def rename(full_name: str, *, notified: bool) -> None:
        async with state["engine"].connect() as connection:
            if not notified:  # the row changes behind the listener's back (no trigger fires)
                await connection.execute(text("SET LOCAL session_replication_role = replica"))
            await connection.execute(
                update(User).where(User.id == admin.id).values(full_name=full_name)
            )
            await connection.commit()

    await rename("Unheard Of", notified=False)
    cached = await client.get(page, headers=auth_headers(admin))
    assert cached.content == first.content  # served from the cache: the database was not read
    await rename("Heard Of", notified=True)
    async with asyncio.timeout(10):
        # The notification reaches the listener a moment after the commit.
        while "Heard Of" not in (await client.get(page, headers=auth_headers(admin))).text:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert UserList.model_validate_json(cached.content).total >= 1
