"""The real app behind the real Nginx config: a signed-in user's request goes all the way through.

The app runs as production runs it (uvicorn subprocess, proxy headers trusted from Nginx only)
on its own migrated database, verifying tokens against a JWKS served over HTTP.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.roles import Role
from app.models.user import User
from tests.support.jwt_tokens import (
    TEST_CLIENT_ID,
    TEST_REGION,
    TEST_USER_POOL_ID,
    JWKSServer,
    access_token_claims,
    mint_token,
    shared_rsa_key,
)

from .nginx_harness import offline_app_env, run_nginx, run_uvicorn

KEY_ID = "nginx-e2e-key"


@pytest.fixture(scope="module")
def jwks() -> Iterator[JWKSServer]:
    with JWKSServer(shared_rsa_key(KEY_ID)) as server:
        yield server


@pytest.fixture
async def officer(fresh_database_url: str) -> str:
    """The sub of an officer in the app's database."""
    sub = str(uuid.uuid4())
    engine = create_async_engine(fresh_database_url)
    async with engine.begin() as connection:
        await connection.execute(
            insert(User).values(
                cognito_user_id=sub,
                email="officer@example.gov",
                full_name="Oh Fisser",
                role=Role.OFFICER,
                responsible_province="Phuket",
            )
        )
    await engine.dispose()
    return sub


def app_env(database_url: str, jwks: JWKSServer) -> dict[str, str]:
    url = make_url(database_url)
    return {
        **offline_app_env(),
        "DB_HOST": str(url.host),
        "DB_PORT": str(url.port),
        "DB_NAME": str(url.database),
        "DB_USER": str(url.username),
        "AWS_REGION": TEST_REGION,
        "COGNITO_USER_POOL_ID": TEST_USER_POOL_ID,
        "COGNITO_APP_CLIENT_ID": TEST_CLIENT_ID,
        "COGNITO_JWKS_URL": jwks.url,
    }


async def test_signed_in_request_through_nginx(
    fresh_database_url: str, jwks: JWKSServer, officer: str
) -> None:
    token = mint_token(access_token_claims({"sub": officer}), shared_rsa_key(KEY_ID))
    env = app_env(fresh_database_url, jwks)
    with run_uvicorn("app.main:app", env=env) as app_port, run_nginx(app_port) as proxy:
        async with httpx.AsyncClient(timeout=10) as client:
            health = await client.get(proxy.url("/health"))
            me = await client.get(
                proxy.url("/api/v1/users/me"),
                headers={"Authorization": f"Bearer {token}", "X-Request-ID": "through-nginx"},
            )
            anonymous = await client.get(proxy.url("/api/v1/users/me"))
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "db": "ok"}
    assert me.status_code == 200, me.text
    assert me.json()["email"] == "officer@example.gov"
    assert me.headers.get_list("x-request-id") == ["through-nginx"]
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"


async def test_another_spelling_of_a_tokens_signature_is_refused_through_nginx(
    fresh_database_url: str, jwks: JWKSServer, officer: str
) -> None:
    """The last character of a 256-byte signature has 4 unused bits: 15 other spellings decode
    the same, and each would be a fresh per-user allowance at Nginx (keyed on the spelling)."""
    token = mint_token(access_token_claims({"sub": officer}), shared_rsa_key(KEY_ID))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(token[-1])
    respelled = token[:-1] + alphabet[last ^ 0b0001]
    assert base64.urlsafe_b64decode(respelled.rsplit(".", 1)[1] + "==") == (
        base64.urlsafe_b64decode(token.rsplit(".", 1)[1] + "==")
    )
    env = app_env(fresh_database_url, jwks)
    with run_uvicorn("app.main:app", env=env) as app_port, run_nginx(app_port) as proxy:
        async with httpx.AsyncClient(timeout=10) as client:
            url = proxy.url("/api/v1/users/me")
            canonical = await client.get(url, headers={"Authorization": f"Bearer {token}"})
            other = await client.get(url, headers={"Authorization": f"Bearer {respelled}"})
    assert canonical.status_code == 200, canonical.text
    assert other.status_code == 401
    assert other.json()["code"] == "not_authenticated"


async def test_the_metrics_are_served_to_the_hosts_agent_and_never_to_the_alb(
    fresh_database_url: str, jwks: JWKSServer
) -> None:
    env = app_env(fresh_database_url, jwks)
    with run_uvicorn("app.main:app", env=env) as app_port, run_nginx(app_port) as proxy:
        async with httpx.AsyncClient(timeout=10) as client:
            public = await client.get(proxy.url("/metrics"))
            agent = await client.get(f"http://127.0.0.1:{proxy.metrics_port}/metrics")
            other = await client.get(f"http://127.0.0.1:{proxy.metrics_port}/health")
    assert public.status_code == 404
    assert "one_system" not in public.text
    assert agent.status_code == 200
    assert "one_system_http_requests_total" in agent.text
    assert other.status_code == 404
