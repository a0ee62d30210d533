"""Cognito faults on every admin operation, over real HTTP, through the whole app.

A proxy in front of the moto server breaks one Cognito operation at a time: throttling, a 5xx,
a read timeout (it never answers), or the whole endpoint refusing connections. The app's own
client settings apply (bounded timeouts, two attempts in standard retry mode), so retries and
the undo of earlier steps run as in production. Each time: the mapped status with Retry-After,
and both sides unchanged (the row, and the Cognito user's groups, enabled flag and status).
Then, with Cognito healthy again, the same request succeeds on both sides.

tests/api/test_users.py covers single injected 5xx/throttling answers on create and on some
update steps; this adds timeouts and refused connections, reactivation and password resets,
and failures of the step after one that already changed Cognito, with retries in play.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from app.core.aws import client_config
from app.core.config import Settings
from app.core.roles import Role
from app.models.user import User
from app.services.cognito import CognitoUserPool
from tests.api.conftest import make_settings
from tests.hardening.harness import (
    Fault,
    FaultProxy,
    LiveApp,
    add_user,
    bearer,
    fault_proxy,
    live_app,
    timed,
)
from tests.support.jwt_tokens import TEST_REGION, JWKSServer
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
    # The app's own client configuration, pointed at the proxy.
    client = boto3.client(
        "cognito-idp",
        region_name=TEST_REGION,
        endpoint_url=proxy.url,
        config=client_config(settings),
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    admin = await add_user(fresh_database_url, Role.ADMIN)
    adapter = CognitoUserPool(client, moto_cognito.user_pool_id)
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
    return user_id, email


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


OPERATIONS = {
    "create": Operation("AdminAddUserToGroup", _new_target, _create, 201),
    "update role": Operation(
        "AdminAddUserToGroup", _existing, _put({"role": "EXECUTIVE", "full_name": "Moved"}), 200
    ),
    "deactivate": Operation(
        "AdminUserGlobalSignOut", _existing, _put({"is_active": False, "full_name": "Gone"}), 200
    ),
    "reactivate": Operation(
        "AdminEnableUser", _deactivated, _put({"is_active": True, "full_name": "Back"}), 200
    ),
    "reset password": Operation("AdminResetUserPassword", _signed_in_before, _reset, 202),
}


@pytest.mark.parametrize("operation_name", list(OPERATIONS))
async def test_every_fault_leaves_both_sides_unchanged_and_the_retry_succeeds(
    rig: Rig, operation_name: str
) -> None:
    operation = OPERATIONS[operation_name]
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


@pytest.mark.xfail(
    strict=True,
    reason="known bug: AdminCreateUser is not idempotent; when its answer is lost, botocore's "
    "retry gets UsernameExists, the API answers 409 and Cognito keeps an orphan user (no row, "
    "no group) that makes every later create of that email a 409 (app/services/users.py "
    "create_user undoes only creates it saw succeed)",
)
async def test_create_whose_answer_is_lost_leaves_no_orphan_in_cognito(rig: Rig) -> None:
    """Cognito created the user but the answer never arrived (a timeout after the fact)."""
    email = f"lost-{uuid.uuid4().hex[:12]}@example.gov"
    rig.proxy.fail("AdminCreateUser", Fault("lost", times=1))
    response = await _create(rig, "", email)
    assert response.status_code in (201, 503), response.text
    row, cognito = await rig.sides(email)
    assert (row is None) == (cognito is None), (row, cognito)
