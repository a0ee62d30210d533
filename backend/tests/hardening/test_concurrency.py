"""Concurrent admin changes to one user end with the database and Cognito in agreement.

(Twenty concurrent creates of one email are covered in tests/api/test_users.py.)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from app.core.roles import Role
from app.models.user import User
from tests.support.harness import (
    LiveApp,
    add_user,
    bearer,
    directory_caught_up,
    live_app,
    make_settings,
)
from tests.support.jwt_tokens import JWKSServer
from tests.support.moto_cognito import MotoCognito

USERS = "/api/v1/users"


@pytest.fixture
async def admin_app(
    fresh_database_url: str, jwks_server: JWKSServer, moto_cognito: MotoCognito
) -> AsyncIterator[tuple[LiveApp, dict[str, str]]]:
    admin = await add_user(fresh_database_url, Role.ADMIN)
    settings = make_settings(fresh_database_url, cognito_jwks_url=jwks_server.url)
    async with live_app(settings, cognito=moto_cognito.adapter(max_attempts=2)) as live:
        yield live, bearer(admin.cognito_user_id)


async def row(database_url: str, user_id: str) -> User:
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with AsyncSession(engine) as session:
            found = await session.scalar(select(User).where(User.id == uuid.UUID(user_id)))
            assert found is not None
            return found
    finally:
        await engine.dispose()


async def test_parallel_role_changes_end_with_one_role_on_both_sides(
    admin_app: tuple[LiveApp, dict[str, str]], moto_cognito: MotoCognito, fresh_database_url: str
) -> None:
    live, headers = admin_app
    email = f"contended-{uuid.uuid4().hex[:10]}@example.gov"
    created = await live.client.post(
        USERS,
        json={"full_name": "Contended", "email": email, "role": "DISPATCHER"},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    user_id = created.json()["id"]
    changes = [
        {"role": "EXECUTIVE"},
        {"role": "OFFICER", "responsible_province": "Krabi"},
        {"role": "DISPATCHER"},
        {"role": "ADMIN"},
    ] * 3
    responses = await asyncio.gather(
        *(live.client.put(f"{USERS}/{user_id}", json=c, headers=headers) for c in changes)
    )
    # The row lock serialises them: every change applies, one after another, and Cognito
    # follows the last one.
    assert [response.status_code for response in responses] == [200] * len(changes), [
        response.text for response in responses if response.status_code != 200
    ]
    final = await row(fresh_database_url, user_id)
    await directory_caught_up(live.state)
    assert moto_cognito.groups_of(email) == {final.role.value}
    assert (final.role is Role.OFFICER) == (final.responsible_province is not None)
    assert live.checked_out() == 0


async def test_parallel_deactivations_and_reactivations_agree_on_both_sides(
    admin_app: tuple[LiveApp, dict[str, str]], moto_cognito: MotoCognito, fresh_database_url: str
) -> None:
    live, headers = admin_app
    email = f"toggled-{uuid.uuid4().hex[:10]}@example.gov"
    created = await live.client.post(
        USERS, json={"full_name": "Toggled", "email": email, "role": "EXECUTIVE"}, headers=headers
    )
    assert created.status_code == 201, created.text
    user_id = created.json()["id"]
    toggles = [{"is_active": index % 2 == 0} for index in range(10)]
    responses = await asyncio.gather(
        *(live.client.put(f"{USERS}/{user_id}", json=t, headers=headers) for t in toggles)
    )
    assert {response.status_code for response in responses} == {200}
    final = await row(fresh_database_url, user_id)
    await directory_caught_up(live.state)
    cognito_user = moto_cognito.find(email)
    assert cognito_user is not None
    assert cognito_user["Enabled"] is final.is_active
    assert moto_cognito.groups_of(email) == {"EXECUTIVE"}
    assert live.checked_out() == 0
