"""User management with real commits: a database of the test's own and the production session
dependency."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from app.core.roles import Role
from app.main import create_app
from app.models.user import User
from app.services.cognito import CognitoUserPool
from tests.api.user_requests import USERS, body, create, new_email, row_for
from tests.support.harness import (
    UserFactory,
    auth_headers,
    client_of,
    make_settings,
    served,
    using_cognito,
)
from tests.support.jwt_tokens import JWKSServer
from tests.support.moto_cognito import (
    MotoCognito,
)

# Every test here uses the moto-backed adapter.
pytestmark = pytest.mark.usefixtures("cognito")


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
