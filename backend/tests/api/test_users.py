"""User management over HTTP: the database and a moto Cognito pool, asserted on both sides."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from app.api.deps import COGNITO
from app.core.roles import Role
from app.core.scope import PROVINCE_REQUIRED
from app.main import create_app
from app.models.user import User
from app.schemas.user import EMAIL_CANNOT_CHANGE
from app.services.cognito import CognitoUserPool
from tests.api.conftest import (
    UserFactory,
    _WithLifespanState,
    auth_headers,
    client_of,
    directory_caught_up,
    make_settings,
    served,
    using_cognito,
)
from tests.support.jwt_tokens import JWKSServer
from tests.support.moto_cognito import (
    MotoCognito,
    aws_error_response,
    cognito_client,
    create_pool,
    fail_operation,
    unreachable_endpoint,
)

USERS = "/api/v1/users"
ME = f"{USERS}/me"

# Every test here uses the moto-backed adapter.
pytestmark = pytest.mark.usefixtures("cognito")


def new_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.gov"


def body(email: str, role: Role = Role.DISPATCHER, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"full_name": "Somchai Jaidee", "email": email, "role": role}
    if role is Role.OFFICER:
        values["responsible_province"] = "Chiang Mai"
    values.update(overrides)
    return values


async def row_for(session: AsyncSession, email: str) -> User | None:
    result = await session.execute(
        select(User)
        .where(func.lower(User.email) == email.lower())
        .execution_options(populate_existing=True)
    )
    return result.scalar_one_or_none()


@pytest.fixture
async def admin_headers(make_user: UserFactory) -> dict[str, str]:
    return auth_headers(await make_user(Role.ADMIN))


async def create(
    client: httpx.AsyncClient, headers: dict[str, str], email: str, role: Role = Role.DISPATCHER
) -> dict[str, Any]:
    response = await client.post(USERS, json=body(email, role), headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


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
# Create


async def test_create_writes_the_row_and_the_cognito_user_in_its_group(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    db_session: AsyncSession,
    moto_cognito: MotoCognito,
) -> None:
    email = new_email("officer")
    response = await client.post(
        USERS,
        json=body(email.upper(), Role.OFFICER, full_name="  Malee Srisuk  "),
        headers=admin_headers,
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert response.headers["Location"] == f"{USERS}/{created['id']}"
    assert created["email"] == email
    assert created["full_name"] == "Malee Srisuk"
    assert created["role"] == "OFFICER"
    assert created["responsible_province"] == "Chiang Mai"
    assert created["is_active"] is True

    row = await row_for(db_session, email)
    assert row is not None
    assert str(row.id) == created["id"]
    cognito_user = moto_cognito.find(email)
    assert cognito_user is not None
    assert cognito_user["attributes"]["sub"] == row.cognito_user_id
    assert cognito_user["attributes"]["email_verified"] == "true"
    assert moto_cognito.groups_of(email) == {"OFFICER"}

    fetched = await client.get(response.headers["Location"], headers=admin_headers)
    assert fetched.json() == created


async def test_duplicate_email_in_the_database_in_any_case_is_409(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    make_user: UserFactory,
    moto_cognito: MotoCognito,
) -> None:
    email = new_email("dup")
    await make_user(Role.EXECUTIVE, email=email)
    for spelling in (email, email.upper(), email.title()):
        response = await client.post(USERS, json=body(spelling), headers=admin_headers)
        assert response.status_code == 409, spelling
        assert response.json()["code"] == "email_taken"
    # Refused before Cognito was asked.
    assert moto_cognito.find(email) is None


async def test_email_known_only_to_cognito_is_409_and_that_user_is_left_alone(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    db_session: AsyncSession,
    moto_cognito: MotoCognito,
) -> None:
    email = new_email("cognito-only")
    sub = moto_cognito.create_user(email)
    # Someone else's, made before this create began; its age does not matter.
    moto_cognito.make_older(email, timedelta(days=1))
    response = await client.post(USERS, json=body(email), headers=admin_headers)
    assert response.status_code == 409
    # Not email_taken: no row holds the email; an operator may take the user over.
    assert response.json()["code"] == "cognito_user_exists"
    assert await row_for(db_session, email) is None
    assert moto_cognito.find(email)["attributes"]["sub"] == sub  # type: ignore[index]


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"role": "OFFICER"}, "responsible_province is required for the OFFICER role"),
        (
            {"role": "EXECUTIVE", "responsible_province": "Chiang Mai"},
            "responsible_province is only for the OFFICER role",
        ),
        ({"full_name": "   "}, "at least 1 character"),
        ({"full_name": "x" * 201}, "at most 200 characters"),
        ({"email": "not-an-email"}, "email"),
        ({"role": "SUPERUSER"}, "ADMIN"),
        ({"is_active": False}, "Extra inputs are not permitted"),
    ],
)
async def test_invalid_create_is_422_saying_what_is_wrong(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    moto_cognito: MotoCognito,
    payload: dict[str, Any],
    message: str,
) -> None:
    email = new_email("invalid")
    response = await client.post(USERS, json=body(email) | payload, headers=admin_headers)
    assert response.status_code == 422
    assert message in response.text
    assert moto_cognito.find(email) is None


async def test_a_validator_message_reads_as_written_without_pydantics_prefix(
    client: httpx.AsyncClient, admin_headers: dict[str, str]
) -> None:
    payload = body(new_email("prefix")) | {"role": "OFFICER"}
    response = await client.post(USERS, json=payload, headers=admin_headers)
    assert response.status_code == 422
    assert [problem["msg"] for problem in response.json()["detail"]] == [PROVINCE_REQUIRED]


@pytest.mark.parametrize(
    ("operation", "status", "code", "expected_status"),
    [
        ("AdminCreateUser", 500, "InternalErrorException", 503),
        ("AdminCreateUser", 400, "TooManyRequestsException", 429),
        ("AdminCreateUser", 400, "InvalidParameterException", 422),
        ("AdminAddUserToGroup", 500, "InternalErrorException", 503),
        ("AdminAddUserToGroup", 400, "ThrottlingException", 429),
        ("AdminAddUserToGroup", 400, "ResourceNotFoundException", 503),
    ],
)
async def test_a_failing_cognito_step_leaves_neither_side_changed(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    db_session: AsyncSession,
    moto_cognito: MotoCognito,
    cognito: CognitoUserPool,
    caplog: pytest.LogCaptureFixture,
    operation: str,
    status: int,
    code: str,
    expected_status: int,
) -> None:
    fail_operation(cognito, operation, lambda: aws_error_response(status, code, "injected"))
    email = new_email("fault")
    with caplog.at_level(logging.INFO, logger="app.audit"):
        response = await client.post(USERS, json=body(email), headers=admin_headers)
    assert response.status_code == expected_status, response.text
    [audit] = [r for r in caplog.records if r.name == "app.audit"]
    assert audit.outcome.startswith("refused:")  # type: ignore[attr-defined]
    if expected_status in (429, 503):
        assert int(response.headers["Retry-After"]) > 0
    assert await row_for(db_session, email) is None
    assert moto_cognito.find(email) is None
    assert moto_cognito.users_with_email(email) == []


async def test_a_failing_insert_deletes_the_cognito_user_again(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    db_session: AsyncSession,
    moto_cognito: MotoCognito,
) -> None:
    await db_session.execute(
        text(
            "CREATE FUNCTION fail_insert() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'injected insert failure'; END $$"
        )
    )
    await db_session.execute(
        text(
            "CREATE TRIGGER fail_insert BEFORE INSERT ON users FOR EACH ROW "
            "WHEN (NEW.full_name = 'Fail On Insert') EXECUTE FUNCTION fail_insert()"
        )
    )
    await db_session.commit()  # a savepoint: the test's transaction still drops the trigger
    email = new_email("insert-fault")
    response = await client.post(
        USERS, json=body(email, full_name="Fail On Insert"), headers=admin_headers
    )
    assert response.status_code == 500
    assert await row_for(db_session, email) is None
    assert moto_cognito.find(email) is None


async def test_cognito_unreachable_is_503_quickly_and_nothing_is_written(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    db_session: AsyncSession,
) -> None:
    unreachable = CognitoUserPool(
        cognito_client(unreachable_endpoint(), max_attempts=2), "ap-southeast-1_unreachable"
    )
    app.dependency_overrides[COGNITO] = lambda: unreachable
    email = new_email("unreachable")
    started = time.monotonic()
    response = await client.post(USERS, json=body(email), headers=admin_headers)
    assert time.monotonic() - started < 5
    assert response.status_code == 503
    assert response.headers["Retry-After"]
    assert response.json()["code"] == "service_unavailable"
    assert await row_for(db_session, email) is None


def misconfigured_adapter(moto_cognito: MotoCognito, fault: str) -> CognitoUserPool:
    if fault == "unknown pool":
        return CognitoUserPool(moto_cognito.new_client(), "ap-southeast-1_NoSuchPool")
    if fault == "missing groups":
        return CognitoUserPool(
            moto_cognito.new_client(), create_pool(moto_cognito.client, groups=False)
        )
    adapter = moto_cognito.adapter()
    code = {
        "access denied": "AccessDeniedException",
        "bad credentials": "UnrecognizedClientException",
    }
    fail_operation(
        adapter,
        "AdminCreateUser",
        lambda: aws_error_response(400, code[fault], "refused by AWS"),
    )
    return adapter


@pytest.mark.parametrize(
    ("fault", "named"),
    [
        ("unknown pool", "COGNITO_USER_POOL_ID"),
        ("missing groups", "ADMIN, DISPATCHER, OFFICER, EXECUTIVE"),
        ("access denied", "cognito-idp:AdminCreateUser"),
        ("bad credentials", "no valid AWS credentials"),
    ],
)
async def test_a_misconfigured_directory_is_503_directory_misconfigured_and_logged_at_error(
    app: FastAPI,
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    db_session: AsyncSession,
    moto_cognito: MotoCognito,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    fault: str,
    named: str,
) -> None:
    adapter = misconfigured_adapter(moto_cognito, fault)
    monkeypatch.setitem(app.dependency_overrides, COGNITO, lambda: adapter)
    email = new_email("misconfigured")
    with caplog.at_level(logging.WARNING):
        response = await client.post(USERS, json=body(email), headers=admin_headers)
    assert response.status_code == 503
    assert response.json()["code"] == "directory_misconfigured"
    # Not "try again shortly": nothing changes until an operator acts.
    assert response.headers["Retry-After"] == "60"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("misconfigured" in line and named in line for line in errors), errors
    assert await row_for(db_session, email) is None
    if fault != "unknown pool":
        # Created, then the group was missing: the create was undone.
        left = moto_cognito.client.list_users(
            UserPoolId=adapter.user_pool_id, Filter=f'email = "{email}"'
        )
        assert left["Users"] == []


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
# Update


async def test_role_change_moves_the_cognito_group_and_keeps_the_province_rule(
    client: httpx.AsyncClient,
    served_app: _WithLifespanState,
    admin_headers: dict[str, str],
    db_session: AsyncSession,
    moto_cognito: MotoCognito,
) -> None:
    email = new_email("mover")
    user_id = (await create(client, admin_headers, email, Role.DISPATCHER))["id"]
    path = f"{USERS}/{user_id}"

    refused = await client.put(path, json={"role": "OFFICER"}, headers=admin_headers)
    assert refused.status_code == 422
    # The same answer as a create that breaks the rule: one shape for one rule.
    assert refused.json()["code"] == "validation_error"
    assert refused.json()["detail"] == [
        {"loc": ["body", "responsible_province"], "msg": PROVINCE_REQUIRED, "type": "value_error"}
    ]
    created = await client.post(
        USERS, json=body(new_email("o")) | {"role": "OFFICER"}, headers=admin_headers
    )
    assert created.json()["detail"] == refused.json()["detail"]
    refused = await client.put(path, json={"responsible_province": "Krabi"}, headers=admin_headers)
    assert refused.status_code == 422
    assert moto_cognito.groups_of(email) == {"DISPATCHER"}

    officer = await client.put(
        path, json={"role": "OFFICER", "responsible_province": " Krabi "}, headers=admin_headers
    )
    assert officer.status_code == 200, officer.text
    assert officer.json()["responsible_province"] == "Krabi"
    assert officer.json()["directory_in_step"] is False
    await directory_caught_up(served_app.state)
    assert moto_cognito.groups_of(email) == {"OFFICER"}
    in_step = await client.get(path, headers=admin_headers)
    assert in_step.json()["directory_in_step"] is True

    # Leaving the OFFICER role clears the province.
    executive = await client.put(path, json={"role": "EXECUTIVE"}, headers=admin_headers)
    assert executive.status_code == 200
    assert executive.json()["responsible_province"] is None
    row = await row_for(db_session, email)
    assert row is not None
    assert (row.role, row.responsible_province) == (Role.EXECUTIVE, None)
    await directory_caught_up(served_app.state)
    assert moto_cognito.groups_of(email) == {"EXECUTIVE"}

    # A new name is the API's alone: nothing for Cognito to follow.
    renamed = await client.put(path, json={"full_name": "New Name"}, headers=admin_headers)
    assert renamed.json()["full_name"] == "New Name"
    assert renamed.json()["role"] == "EXECUTIVE"
    assert renamed.json()["directory_in_step"] is True


async def test_an_update_answers_with_the_new_updated_at_as_stored(
    client: httpx.AsyncClient, admin_headers: dict[str, str], db_session: AsyncSession
) -> None:
    email = new_email("touched")
    created = await create(client, admin_headers, email)

    renamed = await client.put(
        f"{USERS}/{created['id']}", json={"full_name": "Renamed"}, headers=admin_headers
    )

    assert renamed.status_code == 200, renamed.text
    row = await row_for(db_session, email)
    assert row is not None
    updated_at = datetime.fromisoformat(renamed.json()["updated_at"])
    assert updated_at == row.updated_at
    assert updated_at > datetime.fromisoformat(created["updated_at"])


@pytest.mark.parametrize(
    "payload",
    [
        {"email": "other@example.gov"},
        {"full_name": None},
        {"role": None},
        {"is_active": None},
        {"full_name": ""},
        {"role": "ROOT"},
    ],
)
async def test_invalid_update_is_422(
    client: httpx.AsyncClient,
    admin_headers: dict[str, str],
    make_user: UserFactory,
    payload: dict[str, Any],
) -> None:
    user = await make_user(Role.DISPATCHER)
    response = await client.put(f"{USERS}/{user.id}", json=payload, headers=admin_headers)
    assert response.status_code == 422


async def test_sending_the_email_in_an_update_says_it_cannot_change(
    client: httpx.AsyncClient, admin_headers: dict[str, str], make_user: UserFactory
) -> None:
    user = await make_user(Role.DISPATCHER)
    response = await client.put(
        f"{USERS}/{user.id}",
        json={"email": "other@example.gov", "full_name": "Other"},
        headers=admin_headers,
    )
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {"loc": ["body", "email"], "msg": EMAIL_CANNOT_CHANGE, "type": "email_immutable"}
    ]


async def test_deactivation_applies_at_once_and_cognito_follows(
    client: httpx.AsyncClient,
    served_app: _WithLifespanState,
    admin_headers: dict[str, str],
    db_session: AsyncSession,
    moto_cognito: MotoCognito,
) -> None:
    email = new_email("leaver")
    user_id = (await create(client, admin_headers, email))["id"]
    row = await row_for(db_session, email)
    assert row is not None
    signed_in_at = int(time.time())
    token_before = auth_headers(row, auth_time=signed_in_at, iat=signed_in_at)
    assert (await client.get(ME, headers=token_before)).status_code == 200

    response = await client.put(
        f"{USERS}/{user_id}", json={"is_active": False}, headers=admin_headers
    )
    assert response.status_code == 200
    assert response.json()["is_active"] is False
    # The API refuses the user at once, before Cognito has heard of it.
    assert (await client.get(ME, headers=token_before)).status_code == 401
    row = await row_for(db_session, email)
    assert row is not None
    assert row.is_active is False
    await directory_caught_up(served_app.state)
    assert moto_cognito.find(email)["Enabled"] is False  # type: ignore[index]

    response = await client.put(
        f"{USERS}/{user_id}", json={"is_active": True}, headers=admin_headers
    )
    assert response.status_code == 200
    await directory_caught_up(served_app.state)
    assert moto_cognito.find(email)["Enabled"] is True  # type: ignore[index]
    # A token from before the deactivation stays dead, and so does its session: a token the
    # session's refresh token mints now has a new `iat` but Cognito keeps its `auth_time`.
    assert (await client.get(ME, headers=token_before)).status_code == 401
    refreshed = auth_headers(row, auth_time=signed_in_at, iat=int(time.time()) + 1)
    assert (await client.get(ME, headers=refreshed)).status_code == 401
    # A new sign-in works: a session begun at the revocation instant (`sessions_revoked_at`,
    # the database's clock with Cognito's skew allowed), or later.
    assert row.sessions_revoked_at is not None
    signed_in_again = int(row.sessions_revoked_at.timestamp())
    new_session = auth_headers(row, auth_time=signed_in_again, iat=signed_in_again)
    assert (await client.get(ME, headers=new_session)).status_code == 200


async def test_an_admin_cannot_deactivate_or_demote_themselves(
    client: httpx.AsyncClient, make_user: UserFactory, db_session: AsyncSession
) -> None:
    await make_user(Role.ADMIN)  # not the last admin: the self rule applies on its own
    admin = await make_user(Role.ADMIN)
    admin_id, headers = admin.id, auth_headers(admin)
    for change in ({"is_active": False}, {"role": "DISPATCHER"}):
        response = await client.put(f"{USERS}/{admin_id}", json=change, headers=headers)
        assert response.status_code == 409
        assert "yourself" in response.json()["detail"]
    row = await db_session.get(User, admin_id, populate_existing=True)
    assert row is not None
    assert (row.role, row.is_active) == (Role.ADMIN, True)


@pytest.mark.parametrize(
    ("operation", "change"),
    [
        ("AdminRemoveUserFromGroup", {"role": "EXECUTIVE"}),
        ("AdminAddUserToGroup", {"role": "EXECUTIVE"}),
        ("AdminDisableUser", {"role": "EXECUTIVE", "is_active": False}),
        ("AdminUserGlobalSignOut", {"role": "EXECUTIVE", "is_active": False}),
    ],
)
async def test_a_failing_cognito_step_does_not_fail_the_update_and_is_carried_out_later(
    client: httpx.AsyncClient,
    served_app: _WithLifespanState,
    admin_headers: dict[str, str],
    db_session: AsyncSession,
    moto_cognito: MotoCognito,
    cognito: CognitoUserPool,
    operation: str,
    change: dict[str, Any],
) -> None:
    email = new_email("update-fault")
    created = await create(client, admin_headers, email, Role.DISPATCHER)
    fail_operation(
        cognito,
        operation,
        lambda: aws_error_response(500, "InternalErrorException", "injected"),
        times=1,
    )
    response = await client.put(
        f"{USERS}/{created['id']}", json={**change, "full_name": "Changed"}, headers=admin_headers
    )
    assert response.status_code == 200, response.text
    assert response.json()["directory_in_step"] is False
    row = await row_for(db_session, email)
    assert row is not None
    assert (row.full_name, row.role, row.is_active) == (
        "Changed",
        Role.EXECUTIVE,
        change.get("is_active", True),
    )
    # The worker's first attempt met the fault; it retries after a backoff of a second or two.
    await directory_caught_up(served_app.state)
    assert moto_cognito.groups_of(email) == {"EXECUTIVE"}
    assert moto_cognito.find(email)["Enabled"] is change.get("is_active", True)  # type: ignore[index]


async def test_a_row_without_a_cognito_user_is_changed_and_the_mismatch_is_logged(
    client: httpx.AsyncClient,
    served_app: _WithLifespanState,
    admin_headers: dict[str, str],
    make_user: UserFactory,
    db_session: AsyncSession,
    cognito: CognitoUserPool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    orphan = await make_user(Role.DISPATCHER)  # a row only: Cognito has never heard of it
    orphan_id = orphan.id
    response = await client.put(
        f"{USERS}/{orphan_id}", json={"is_active": False}, headers=admin_headers
    )
    assert response.status_code == 200
    row = await db_session.get(User, orphan_id, populate_existing=True)
    assert row is not None
    assert row.is_active is False
    # Retrying cannot help: the worker drops the row and says so, for the reconcile command.
    await directory_caught_up(served_app.state)
    assert any(
        record.levelname == "ERROR" and record.name == "app.services.directory_sync"
        for record in caplog.records
    )


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


# ---------------------------------------------------------------------------------------------
# Real commits: a database of the test's own, the production session dependency


@dataclass
class CommittedApp:
    client: httpx.AsyncClient
    engine: AsyncEngine
    cognito: CognitoUserPool

    async def add_admin(self, moto: MotoCognito) -> tuple[uuid.UUID, str, dict[str, str]]:
        """An admin on both sides, committed; returns id, email and auth headers."""
        email = new_email("admin")
        sub = moto.create_user(email, role=Role.ADMIN)
        async with AsyncSession(self.engine, expire_on_commit=False) as session:
            user = User(
                cognito_user_id=sub, email=email, full_name="Committed Admin", role=Role.ADMIN
            )
            session.add(user)
            await session.commit()
        return user.id, email, auth_headers(user)

    async def row(self, email: str) -> User | None:
        async with AsyncSession(self.engine) as session:
            return await row_for(session, email)

    async def execute(self, statement: str) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(text(statement))


@pytest.fixture
async def committed(
    fresh_database_url: str, jwks_server: JWKSServer, moto_cognito: MotoCognito
) -> AsyncIterator[CommittedApp]:
    settings = make_settings(fresh_database_url, cognito_jwks_url=jwks_server.url, db_pool_size=25)
    app = create_app(settings)
    adapter = moto_cognito.adapter()
    engine = create_async_engine(fresh_database_url)
    try:
        async with (
            served(app) as asgi,
            client_of(asgi) as client,
        ):
            with using_cognito(app, asgi.state, adapter, asgi.background):
                yield CommittedApp(client, engine, adapter)
    finally:
        await engine.dispose()


FAIL_AT_COMMIT = [
    "CREATE FUNCTION fail_at_commit() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'injected commit failure'; END $$",
    # Deferred: it fires at COMMIT, after the service has flushed and returned.
    "CREATE CONSTRAINT TRIGGER fail_at_commit AFTER INSERT OR UPDATE ON users "
    "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
    "WHEN (NEW.full_name = 'Fail At Commit') EXECUTE FUNCTION fail_at_commit()",
]


async def test_a_failing_commit_of_a_create_deletes_the_cognito_user(
    committed: CommittedApp, moto_cognito: MotoCognito, caplog: pytest.LogCaptureFixture
) -> None:
    _, _, headers = await committed.add_admin(moto_cognito)
    for statement in FAIL_AT_COMMIT:
        await committed.execute(statement)
    email = new_email("commit-fault")
    with caplog.at_level(logging.INFO, logger="app.audit"):
        response = await committed.client.post(
            USERS, json=body(email, full_name="Fail At Commit"), headers=headers
        )
    assert response.status_code == 500
    # No success line: the create never committed.
    audit = [r.outcome for r in caplog.records if r.name == "app.audit"]  # type: ignore[attr-defined]
    assert audit == ["rolled_back"]
    assert await committed.row(email) is None
    assert moto_cognito.find(email) is None
    # And without the fault the same email goes through: nothing was left behind.
    response = await committed.client.post(USERS, json=body(email), headers=headers)
    assert response.status_code == 201


async def test_a_failing_commit_of_an_update_leaves_no_directory_work_behind(
    committed: CommittedApp, moto_cognito: MotoCognito
) -> None:
    _, _, headers = await committed.add_admin(moto_cognito)
    email = new_email("commit-fault")
    created = await create(committed.client, headers, email, Role.DISPATCHER)
    for statement in FAIL_AT_COMMIT:
        await committed.execute(statement)
    response = await committed.client.put(
        f"{USERS}/{created['id']}",
        json={"full_name": "Fail At Commit", "role": "EXECUTIVE", "is_active": False},
        headers=headers,
    )
    assert response.status_code == 500
    row = await committed.row(email)
    assert row is not None
    assert (row.full_name, row.role, row.is_active) == ("Somchai Jaidee", Role.DISPATCHER, True)
    assert moto_cognito.groups_of(email) == {"DISPATCHER"}
    assert moto_cognito.find(email)["Enabled"] is True  # type: ignore[index]


async def test_an_update_whose_commit_fails_is_audited_as_rolled_back_never_as_a_success(
    committed: CommittedApp, moto_cognito: MotoCognito, caplog: pytest.LogCaptureFixture
) -> None:
    admin_id, _, headers = await committed.add_admin(moto_cognito)
    email = new_email("audit-commit")
    created = await create(committed.client, headers, email)
    for statement in FAIL_AT_COMMIT:
        await committed.execute(statement)
    with caplog.at_level(logging.INFO, logger="app.audit"):
        failed = await committed.client.put(
            f"{USERS}/{created['id']}", json={"full_name": "Fail At Commit"}, headers=headers
        )
        assert failed.status_code == 500
        done = await committed.client.put(
            f"{USERS}/{created['id']}", json={"full_name": "Committed"}, headers=headers
        )
        assert done.status_code == 200
    lines = [
        record
        for record in caplog.records
        if record.name == "app.audit" and record.action == "user.update"  # type: ignore[attr-defined]
    ]
    assert [r.outcome for r in lines] == ["rolled_back", "success"]  # type: ignore[attr-defined]
    assert {(r.actor_id, r.target_id) for r in lines} == {  # type: ignore[attr-defined]
        (str(admin_id), created["id"])
    }
    row = await committed.row(email)
    assert row is not None
    assert row.full_name == "Committed"


async def test_twenty_concurrent_creates_of_one_email_make_exactly_one_user(
    committed: CommittedApp, moto_cognito: MotoCognito
) -> None:
    _, _, headers = await committed.add_admin(moto_cognito)
    email = new_email("race")
    spellings = [email if i % 2 else email.upper() for i in range(20)]
    responses = await asyncio.gather(
        *(committed.client.post(USERS, json=body(s), headers=headers) for s in spellings)
    )
    statuses = [response.status_code for response in responses]
    # One creates; every other is a conflict, never a 5xx: it meets the create in progress
    # (and is told when to try again) or, once committed, its row. Never a second user.
    assert sorted(statuses) == [201] + [409] * 19, [r.text for r in responses]
    conflicts = [r for r in responses if r.status_code == 409]
    codes = [r.json()["code"] for r in conflicts]
    assert set(codes) <= {"create_in_progress", "email_taken"}, codes
    assert "create_in_progress" in codes, codes
    assert all(
        r.headers.get("Retry-After") == "2"
        for r in conflicts
        if r.json()["code"] == "create_in_progress"
    )
    row = await committed.row(email)
    assert row is not None
    in_cognito = moto_cognito.users_with_email(email)
    assert len(in_cognito) == 1
    sub = {a["Name"]: a["Value"] for a in in_cognito[0]["Attributes"]}["sub"]
    assert sub == row.cognito_user_id


async def test_two_admins_deactivating_each_other_leave_one_active_admin(
    committed: CommittedApp, moto_cognito: MotoCognito
) -> None:
    first_id, _, first_headers = await committed.add_admin(moto_cognito)
    second_id, _, second_headers = await committed.add_admin(moto_cognito)
    responses = await asyncio.gather(
        committed.client.put(
            f"{USERS}/{second_id}", json={"is_active": False}, headers=first_headers
        ),
        committed.client.put(
            f"{USERS}/{first_id}", json={"is_active": False}, headers=second_headers
        ),
    )
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 409], [response.text for response in responses]
    refused = next(r for r in responses if r.status_code == 409)
    assert "last active admin" in refused.json()["detail"]
    async with AsyncSession(committed.engine) as session:
        active_admins = await session.scalar(
            select(func.count())
            .select_from(User)
            .where(User.role == Role.ADMIN, User.is_active.is_(True))
        )
    assert active_admins == 1


async def test_a_repeated_filter_is_refused_not_collapsed(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    admin = await make_user(Role.ADMIN)
    response = await client.get(
        "/api/v1/users?province=Phuket&province=Krabi", headers=auth_headers(admin)
    )
    assert response.status_code == 422
    assert "province" in response.json()["detail"]
