"""Authentication over HTTP: every crafted token is a 401 with a challenge, never a 500.

The verifier's rules are tested one by one in tests/core/test_tokens.py; here each class of
bad token goes through the whole app (bearer extraction, verification, user lookup).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.roles import Role
from app.models.user import User
from tests.support.harness import UserFactory, auth_headers, token_for
from tests.support.jwt_tokens import (
    OMIT,
    SIGNING_KEY_ID,
    access_token_claims,
    b64url,
    generate_rsa_key,
    id_token_claims,
    mint_token,
    shared_rsa_key,
)

ME = "/api/v1/users/me"
NOW = int(time.time())


def claims_for(user: User, **overrides: object) -> dict[str, object]:
    return access_token_claims({"sub": user.cognito_user_id, **overrides})


def signed(
    *, now: float | None = None, lifetime: int = 3600, **overrides: object
) -> Callable[[User], str]:
    return lambda user: mint_token(
        access_token_claims({"sub": user.cognito_user_id, **overrides}, now=now, lifetime=lifetime),
        shared_rsa_key(SIGNING_KEY_ID),
    )


def with_header(**header: object) -> Callable[[User], str]:
    return lambda user: mint_token(claims_for(user), shared_rsa_key(SIGNING_KEY_ID), **header)


def tampered(user: User) -> str:
    header, _, signature = token_for(user).split(".")
    forged = b64url(
        f'{{"sub":"{user.cognito_user_id}","token_use":"access","exp":{NOW + 99999}}}'.encode()
    )
    return f"{header}.{forged}.{signature}"


BAD_TOKENS: dict[str, Callable[[User], str]] = {
    "expired": signed(now=NOW - 7200, lifetime=3600),
    "wrong issuer": signed(iss="https://cognito-idp.us-east-1.amazonaws.com/us-east-1_other"),
    "wrong client": signed(client_id="someone-elses-client"),
    "missing token_use": signed(token_use=OMIT),
    "id token": lambda user: mint_token(
        id_token_claims({"sub": user.cognito_user_id}), shared_rsa_key(SIGNING_KEY_ID)
    ),
    "future iat": signed(iat=NOW + 3600),
    "future nbf": signed(nbf=NOW + 3600),
    "missing exp": signed(exp=OMIT),
    "missing sub": lambda user: mint_token(
        access_token_claims({"sub": OMIT}), shared_rsa_key(SIGNING_KEY_ID)
    ),
    "alg none": lambda user: mint_token(
        claims_for(user),
        shared_rsa_key(SIGNING_KEY_ID),
        alg="none",
        signing_key=None,
    ),
    "HS256 with the public key": lambda user: mint_token(
        claims_for(user),
        shared_rsa_key(SIGNING_KEY_ID),
        alg="HS256",
        signing_key=shared_rsa_key(SIGNING_KEY_ID).public_pem(),
    ),
    "RS512 header": lambda user: mint_token(
        claims_for(user), shared_rsa_key(SIGNING_KEY_ID), alg="RS512"
    ),
    "PS256 header": lambda user: mint_token(
        claims_for(user), shared_rsa_key(SIGNING_KEY_ID), alg="PS256"
    ),
    "missing kid": with_header(kid=OMIT),
    "numeric kid": with_header(kid=7),
    "crit header": with_header(crit=["exp"]),
    "jku header": with_header(jku="http://127.0.0.1:9/jwks.json"),
    "signed by an unknown key": lambda user: mint_token(
        claims_for(user), generate_rsa_key(SIGNING_KEY_ID)
    ),
    "tampered payload": tampered,
    "one segment": lambda user: "abc",
    "two segments": lambda user: ".".join(token_for(user).split(".")[:2]),
    "four segments": lambda user: token_for(user) + ".abc",
    "not base64": lambda user: "!!!.@@@.###",
    "not JSON": lambda user: f"{b64url(b'nope')}.{b64url(b'nope')}.{b64url(b'sig')}",
    "JSON array payload": lambda user: mint_token([1, 2], shared_rsa_key(SIGNING_KEY_ID)),
    "20 KB": lambda user: token_for(user, padding="x" * 20_000),
}


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
async def test_crafted_token_is_401_with_challenge(
    client: httpx.AsyncClient, make_user: UserFactory, kind: str
) -> None:
    user = await make_user(Role.ADMIN)
    response = await client.get(ME, headers={"Authorization": f"Bearer {BAD_TOKENS[kind](user)}"})
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'
    assert response.json()["code"] == "not_authenticated"


async def test_valid_token_returns_the_user(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user(Role.OFFICER, province="Khon Kaen")
    response = await client.get(ME, headers=auth_headers(user))
    assert response.status_code == 200
    body = response.json()
    assert body["id"] == str(user.id)
    assert body["role"] == "OFFICER"
    assert body["responsible_province"] == "Khon Kaen"


async def test_no_token_is_401_with_plain_challenge(client: httpx.AsyncClient) -> None:
    response = await client.get(ME)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("header", ["Token abc", "Basic dXNlcjpwdw==", "Bearer", "bearer "])
async def test_authorization_without_bearer_token_is_401(
    client: httpx.AsyncClient, header: str
) -> None:
    response = await client.get(ME, headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_token_of_unknown_user_is_401(client: httpx.AsyncClient) -> None:
    token = mint_token(access_token_claims({"sub": "no-such-user"}), shared_rsa_key(SIGNING_KEY_ID))
    response = await client.get(ME, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


async def test_deactivation_applies_on_the_very_next_request(
    client: httpx.AsyncClient, make_user: UserFactory, db_session: AsyncSession
) -> None:
    user = await make_user(Role.DISPATCHER)
    headers = auth_headers(user)
    assert (await client.get(ME, headers=headers)).status_code == 200
    user.is_active = False
    await db_session.commit()
    assert (await client.get(ME, headers=headers)).status_code == 401


async def test_role_comes_from_the_database_not_the_token(
    client: httpx.AsyncClient, make_user: UserFactory, db_session: AsyncSession
) -> None:
    user = await make_user(Role.EXECUTIVE)
    # Groups in the token claim ADMIN; the row says EXECUTIVE, and the row wins.
    headers = auth_headers(user, **{"cognito:groups": ["ADMIN"]})
    assert (await client.get("/api/v1/users", headers=headers)).status_code == 403
    user.role = Role.ADMIN
    await db_session.commit()
    assert (await client.get("/api/v1/users", headers=headers)).status_code == 200
    assert (await client.get(ME, headers=headers)).json()["role"] == "ADMIN"


async def test_rejection_reason_is_logged_but_not_returned(
    client: httpx.AsyncClient, make_user: UserFactory, caplog: pytest.LogCaptureFixture
) -> None:
    user = await make_user(Role.ADMIN)
    token = BAD_TOKENS["wrong client"](user)
    response = await client.get(ME, headers={"Authorization": f"Bearer {token}"})
    assert "client" not in response.json()["detail"].lower()
    reasons = [r.getMessage() for r in caplog.records if r.name == "app.core.rbac"]
    assert any("client_id" in reason for reason in reasons)
    assert all(token not in r.getMessage() for r in caplog.records)
