"""End to end: sign in through Cognito's API (moto's server over HTTP), call a protected route.

Nothing is stubbed between the pieces: the token CLI signs in with InitiateAuth and answers the
first-sign-in NEW_PASSWORD_REQUIRED challenge, and the app verifies the resulting access token
against the JWKS the emulator serves over HTTP.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import boto3
import pytest
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from app.core.roles import Role
from app.main import create_app
from app.models.user import User
from devtools.cognito_emulator import emulator_server
from tests.support.harness import make_settings, serve

REGION = "us-east-1"
EMAIL = "dispatcher@example.gov"
TEMPORARY_PASSWORD = "Temp-Passw0rd!"
NEW_PASSWORD = "Chosen-Passw0rd!"


@pytest.fixture(scope="module")
def cognito_endpoint() -> Iterator[str]:
    with emulator_server() as endpoint:
        yield endpoint


@pytest.fixture
def emulator_env(cognito_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER": cognito_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def sign_in_with_cli(
    env: dict[str, str], client_id: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "app.cli.token",
            "--email",
            EMAIL,
            "--password",
            TEMPORARY_PASSWORD,
            "--client-id",
            client_id,
            "--region",
            REGION,
            *extra,
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_sign_in_then_call_a_protected_route(
    emulator_env: dict[str, str], cognito_endpoint: str, fresh_database_url: str
) -> None:
    cognito = boto3.client("cognito-idp", region_name=REGION)
    pool_id = cognito.create_user_pool(PoolName="e2e", UsernameAttributes=["email"])["UserPool"][
        "Id"
    ]
    client_id = cognito.create_user_pool_client(
        UserPoolId=pool_id, ClientName="spa", ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH"]
    )["UserPoolClient"]["ClientId"]
    created = cognito.admin_create_user(
        UserPoolId=pool_id,
        Username=EMAIL,
        TemporaryPassword=TEMPORARY_PASSWORD,
        MessageAction="SUPPRESS",
        UserAttributes=[{"Name": "email", "Value": EMAIL}],
    )["User"]
    sub = next(a["Value"] for a in created["Attributes"] if a["Name"] == "sub")
    engine = create_async_engine(fresh_database_url)
    async with AsyncSession(engine) as session, session.begin():
        session.add(
            User(cognito_user_id=sub, email=EMAIL, full_name="Dee Spatcher", role=Role.DISPATCHER)
        )
    await engine.dispose()

    refused = sign_in_with_cli(emulator_env, client_id)
    assert refused.returncode == 1
    assert "--new-password" in refused.stderr
    signed_in = sign_in_with_cli(emulator_env, client_id, "--new-password", NEW_PASSWORD)
    assert signed_in.returncode == 0, signed_in.stderr
    access_token = signed_in.stdout.strip()

    app = create_app(
        make_settings(
            fresh_database_url,
            aws_region=REGION,
            cognito_user_pool_id=pool_id,
            cognito_app_client_id=client_id,
            cognito_jwks_url=f"{cognito_endpoint}/{pool_id}/.well-known/jwks.json",
        )
    )
    async with serve(app) as client:
        me = await client.get(
            "/api/v1/users/me", headers={"Authorization": f"Bearer {access_token}"}
        )
        anonymous = await client.get("/api/v1/users/me")
    assert me.status_code == 200, me.text
    assert me.json()["email"] == EMAIL
    assert me.json()["role"] == "DISPATCHER"
    assert anonymous.status_code == 401
