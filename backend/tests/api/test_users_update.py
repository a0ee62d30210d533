"""Changing users over HTTP: name, role, province and active state, and Cognito following."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.roles import Role
from app.core.scope import PROVINCE_REQUIRED
from app.models.user import User
from app.schemas.user import EMAIL_CANNOT_CHANGE
from app.services.cognito import CognitoUserPool
from tests.api.user_requests import ME, USERS, body, create, new_email, row_for
from tests.support.harness import ServedApp, UserFactory, auth_headers, directory_caught_up
from tests.support.moto_cognito import (
    MotoCognito,
    aws_error_response,
    fail_operation,
)

# Every test here uses the moto-backed adapter.
pytestmark = pytest.mark.usefixtures("cognito")


# ---------------------------------------------------------------------------------------------
# Update


async def test_role_change_moves_the_cognito_group_and_keeps_the_province_rule(
    client: httpx.AsyncClient,
    served_app: ServedApp,
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
    served_app: ServedApp,
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
    served_app: ServedApp,
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
    served_app: ServedApp,
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
