"""Cognito faults on every admin operation, over real HTTP, through the whole app.

A proxy in front of the moto server breaks one Cognito operation at a time: throttling, a 5xx,
a read timeout (it never answers), the answer lost after Cognito acted on the call, or the
whole endpoint refusing connections. The app's own client settings apply (bounded timeouts, two
attempts in standard retry mode, one for AdminCreateUser), so retries, adoption and the undo of
earlier steps run as in production.

- Create and password reset call Cognito in the request: each fault gives the mapped status
  with Retry-After and both sides unchanged; with Cognito healthy the same request succeeds.
- Role changes, deactivation and reactivation never wait on Cognito: the API answers 200 and
  enforces the change at once whatever Cognito does, and the directory worker brings Cognito in
  step once it is healthy again (asserted by polling the emulator).
- A lost answer of any call leaves both stores consistent.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from app.core.config import Settings
from app.core.roles import Role
from app.models.user import User
from tests.hardening.faults import Fault, FaultProxy, fault_proxy, proxied_adapter, timed
from tests.support.harness import (
    LiveApp,
    add_user,
    bearer,
    directory_caught_up,
    live_app,
    make_settings,
)
from tests.support.jwt_tokens import JWKSServer
from tests.support.logs import recorded_logs
from tests.support.moto_cognito import MotoCognito

USERS = "/api/v1/users"
READ_TIMEOUT = 0.5
ATTEMPTS = 2


@dataclass
class Rig:
    live: LiveApp
    proxy: FaultProxy
    moto: MotoCognito
    database_url: str
    headers: dict[str, str]
    settings: Settings

    async def create(self, role: Role = Role.DISPATCHER) -> tuple[str, str]:
        email = f"fault-{uuid.uuid4().hex[:12]}@example.gov"
        response = await self.live.client.post(
            USERS,
            json={"full_name": "Fault Target", "email": email, "role": role},
            headers=self.headers,
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"]), email

    async def row(self, email: str) -> User | None:
        engine = create_async_engine(self.database_url, poolclass=NullPool)
        try:
            async with AsyncSession(engine) as session:
                result = await session.execute(select(User).where(func.lower(User.email) == email))
                return result.scalar_one_or_none()
        finally:
            await engine.dispose()

    async def sides(self, email: str) -> tuple[Any, Any]:
        """(row fields, Cognito fields) of a user; None for a side that has no such user."""
        row = await self.row(email)
        cognito = self.moto.find(email)
        return (
            None if row is None else (row.full_name, row.role, row.is_active),
            None
            if cognito is None
            else (cognito["Enabled"], cognito["UserStatus"], self.moto.groups_of(email)),
        )


@pytest.fixture
def proxy(moto_cognito: MotoCognito) -> Iterator[FaultProxy]:
    with fault_proxy(moto_cognito.endpoint_url) as running:
        yield running


@pytest.fixture
async def rig(
    fresh_database_url: str,
    jwks_server: JWKSServer,
    moto_cognito: MotoCognito,
    proxy: FaultProxy,
) -> AsyncIterator[Rig]:
    settings = make_settings(
        fresh_database_url,
        cognito_jwks_url=jwks_server.url,
        aws_connect_timeout_seconds=READ_TIMEOUT,
        aws_read_timeout_seconds=READ_TIMEOUT,
        aws_max_attempts=ATTEMPTS,
    )
    admin = await add_user(fresh_database_url, Role.ADMIN)
    adapter = proxied_adapter(proxy, moto_cognito, settings)
    async with live_app(settings, cognito=adapter) as live:
        yield Rig(
            live, proxy, moto_cognito, fresh_database_url, bearer(admin.cognito_user_id), settings
        )


FAULTS: dict[str, tuple[Callable[[], Fault] | None, int, str]] = {
    # name: (fault of the operation, or None for the whole endpoint refusing; status; code)
    "throttled": (
        lambda: Fault("status", times=ATTEMPTS, status=400, error_type="TooManyRequestsException"),
        429,
        "too_many_requests",
    ),
    "5xx": (lambda: Fault("status", times=ATTEMPTS, status=503), 503, "service_unavailable"),
    "timeout": (lambda: Fault("hang", times=ATTEMPTS), 503, "service_unavailable"),
    "refused": (None, 503, "service_unavailable"),
}
# Every attempt may wait the read timeout plus a backoff (< 1 s), the undo calls as much again.
REQUEST_BOUND = 2 * ATTEMPTS * (READ_TIMEOUT + 1) + 2


@dataclass
class Operation:
    failing_step: str  # the Cognito call the fault hits: the last step, so earlier ones are undone
    prepare: Callable[[Rig], Awaitable[tuple[str, str]]]  # (user id, email) of the target
    request: Callable[[Rig, str, str], Awaitable[httpx.Response]]
    success_status: int


async def _new_target(rig: Rig) -> tuple[str, str]:
    return "", f"fault-{uuid.uuid4().hex[:12]}@example.gov"


async def _create(rig: Rig, _: str, email: str) -> httpx.Response:
    return await rig.live.client.post(
        USERS,
        json={"full_name": "Fault Target", "email": email, "role": "DISPATCHER"},
        headers=rig.headers,
    )


async def _existing(rig: Rig) -> tuple[str, str]:
    return await rig.create(Role.DISPATCHER)


async def _deactivated(rig: Rig) -> tuple[str, str]:
    user_id, email = await rig.create(Role.DISPATCHER)
    response = await rig.live.client.put(
        f"{USERS}/{user_id}", json={"is_active": False}, headers=rig.headers
    )
    assert response.status_code == 200, response.text
    await directory_caught_up(rig.live.state)
    return user_id, email


async def _never_signed_in(rig: Rig) -> tuple[str, str]:
    """A user who never signed in: a reset re-sends the invitation, looking the user up first."""
    email = f"fault-{uuid.uuid4().hex[:12]}@example.gov"
    sub = rig.moto.create_user(email, role=Role.DISPATCHER)
    user = await add_user(rig.database_url, Role.DISPATCHER, email=email, sub=sub)
    return str(user.id), email


async def _signed_in_before(rig: Rig) -> tuple[str, str]:
    email = f"fault-{uuid.uuid4().hex[:12]}@example.gov"
    sub = rig.moto.create_user(email, role=Role.DISPATCHER, confirmed=True)
    user = await add_user(rig.database_url, Role.DISPATCHER, email=email, sub=sub)
    return str(user.id), email


def _put(body: dict[str, Any]) -> Callable[[Rig, str, str], Awaitable[httpx.Response]]:
    async def request(rig: Rig, user_id: str, _: str) -> httpx.Response:
        return await rig.live.client.put(f"{USERS}/{user_id}", json=body, headers=rig.headers)

    return request


async def _reset(rig: Rig, user_id: str, _: str) -> httpx.Response:
    return await rig.live.client.post(f"{USERS}/{user_id}/reset-password", headers=rig.headers)


SYNCHRONOUS = {
    "create": Operation("AdminAddUserToGroup", _new_target, _create, 201),
    "reset password": Operation("AdminResetUserPassword", _signed_in_before, _reset, 202),
}


@pytest.mark.parametrize("operation_name", list(SYNCHRONOUS))
async def test_every_fault_leaves_both_sides_unchanged_and_the_retry_succeeds(
    rig: Rig, operation_name: str
) -> None:
    operation = SYNCHRONOUS[operation_name]
    user_id, email = await operation.prepare(rig)
    before = await rig.sides(email)
    for fault_name, (make_fault, status, code) in FAULTS.items():
        if make_fault is None:
            rig.proxy.refuse()
        else:
            rig.proxy.fail(operation.failing_step, make_fault())
        try:
            response, seconds = await timed(operation.request(rig, user_id, email))
        finally:
            rig.proxy.heal()
            if make_fault is None:
                rig.proxy.accept()
        assert response.status_code == status, (fault_name, response.text)
        assert response.json()["code"] == code
        assert int(response.headers["Retry-After"]) > 0
        assert seconds < REQUEST_BOUND, (fault_name, seconds)
        assert await rig.sides(email) == before, fault_name
        assert rig.live.checked_out() == 0

    started = time.monotonic()
    response = await operation.request(rig, user_id, email)
    assert response.status_code == operation.success_status, response.text
    assert time.monotonic() - started < 5
    assert await rig.sides(email) != before


# The change, and what the row and Cognito hold once it is carried out: (role, is_active).
THROUGH_THE_OUTBOX: dict[
    str, tuple[Callable[[Rig], Awaitable[tuple[str, str]]], dict[str, Any], tuple[Role, bool]]
] = {
    "role change": (_existing, {"role": "EXECUTIVE"}, (Role.EXECUTIVE, True)),
    "deactivate": (_existing, {"is_active": False}, (Role.DISPATCHER, False)),
    "reactivate": (_deactivated, {"is_active": True}, (Role.DISPATCHER, True)),
}


@pytest.mark.parametrize("change_name", list(THROUGH_THE_OUTBOX))
async def test_with_cognito_down_a_change_applies_at_once_and_cognito_catches_up(
    rig: Rig, change_name: str
) -> None:
    prepare, change, (role, is_active) = THROUGH_THE_OUTBOX[change_name]
    user_id, email = await prepare(rig)
    rig.proxy.refuse()
    try:
        response, seconds = await timed(
            rig.live.client.put(f"{USERS}/{user_id}", json=change, headers=rig.headers)
        )
        assert response.status_code == 200, response.text
        assert seconds < 2, "the request must not wait on Cognito"
        assert response.json()["directory_in_step"] is False
        row, _ = await rig.sides(email)
        assert row is not None
        assert (row[1], row[2]) == (role, is_active)
        # Cognito stays as it was while it is down; the work waits in the outbox.
        await asyncio.sleep(1.5)
        assert await rig.live.state["directory_sync"].pending() == 1
    finally:
        rig.proxy.accept()
    # Back: within the capped backoff, with no operator action.
    await directory_caught_up(rig.live.state, within=40)
    _, cognito = await rig.sides(email)
    assert cognito is not None
    enabled, _, groups = cognito
    assert (groups, enabled) == ({role.value}, is_active)


# Each Cognito call the API makes, a request that makes it, and what that request answers: the
# answer is lost once (Cognito acted on the call, the app never heard). SDK retries of idempotent
# calls, adoption after a lost create and the outbox worker's retries each hide the loss.
LOST_ANSWERS = {
    "AdminCreateUser": (_new_target, _create, 201),
    "AdminAddUserToGroup": (_new_target, _create, 201),
    "AdminGetUser": (_never_signed_in, _reset, 202),
    "AdminResetUserPassword": (_signed_in_before, _reset, 202),
    "AdminDisableUser": (_existing, _put({"is_active": False}), 200),
    "AdminEnableUser": (_deactivated, _put({"is_active": True}), 200),
    "AdminListGroupsForUser": (_existing, _put({"role": "EXECUTIVE"}), 200),
    "AdminRemoveUserFromGroup": (_existing, _put({"role": "EXECUTIVE"}), 200),
    "AdminUserGlobalSignOut": (_existing, _put({"is_active": False}), 200),
}


# The calls the outbox worker makes (the others are the request's own).
OUTBOX_CALLS = frozenset(
    {
        "AdminDisableUser",
        "AdminEnableUser",
        "AdminListGroupsForUser",
        "AdminRemoveUserFromGroup",
        "AdminUserGlobalSignOut",
    }
)


@pytest.mark.parametrize("operation", list(LOST_ANSWERS))
async def test_a_lost_answer_of_any_call_leaves_both_stores_consistent(
    rig: Rig, operation: str
) -> None:
    prepare, request, status = LOST_ANSWERS[operation]
    user_id, email = await prepare(rig)
    calls_before = rig.proxy.count(operation)
    rig.proxy.fail(operation, Fault("lost", times=1))
    with recorded_logs() as logs:
        response = await request(rig, user_id, email)
        assert response.status_code == status, response.text
        await directory_caught_up(rig.live.state, within=40)
    assert rig.proxy.count(operation) > calls_before, "the fault was never met"
    # The worker's calls are sent once: the loss is a failure the outbox sees and retries (and
    # later reads back), not one an SDK retry hides from it. The request's own calls never
    # reach the outbox.
    warnings = [r.getMessage() for r in logs.at_least(logging.WARNING)]
    outbox_retried = any("directory work will be retried" in line for line in warnings)
    assert outbox_retried is (operation in OUTBOX_CALLS), warnings
    row, cognito = await rig.sides(email)
    assert row is not None
    assert cognito is not None
    _, role, is_active = row
    enabled, _, groups = cognito
    assert (groups, enabled) == ({role.value}, is_active)


async def test_a_create_whose_answer_is_lost_adopts_the_user_and_leaves_no_orphan(
    rig: Rig,
) -> None:
    """Cognito created the user but the answer never arrived (a timeout after the fact)."""
    _, email = await _new_target(rig)
    rig.proxy.fail("AdminCreateUser", Fault("lost", times=1))
    response = await _create(rig, "", email)
    assert response.status_code == 201, response.text
    row, cognito = await rig.sides(email)
    assert row is not None
    assert cognito is not None
    assert len(rig.moto.users_with_email(email)) == 1
    # The email is now taken on both sides alike.
    again = await _create(rig, "", email)
    assert again.status_code == 409
