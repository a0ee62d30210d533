"""Creating users over HTTP: the row and the Cognito user, and every way a create is refused."""

from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.deps import COGNITO
from app.core.roles import Role
from app.core.scope import PROVINCE_REQUIRED
from app.services.cognito import CognitoUserPool
from tests.api.user_requests import USERS, body, new_email, row_for
from tests.support.harness import UserFactory
from tests.support.moto_cognito import (
    MotoCognito,
    aws_error_response,
    cognito_client,
    create_pool,
    fail_operation,
    unreachable_endpoint,
)

# Every test here uses the moto-backed adapter.
pytestmark = pytest.mark.usefixtures("cognito")


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
