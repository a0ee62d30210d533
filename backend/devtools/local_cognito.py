"""A local Cognito for `make run`: moto's server emulating the real Cognito API over HTTP.

Bootstraps a user pool (email as username), an app client that allows USER_PASSWORD_AUTH, a
group per role, and a seeded admin. The emulator keeps nothing across restarts while the
database does, so every start re-provisions each user row in the emulator (same email, same
role, a known local password) and re-links the row to its new `sub` by email.

The app reaches the emulator only the way it reaches real Cognito: boto3's
AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER and the JWKS URL (COGNITO_JWKS_URL).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from app.cli.token import sign_in
from app.core.config import load_database_settings
from app.core.roles import Role
from app.core.secrets import fetch_database_credentials
from app.models.user import User

if TYPE_CHECKING:
    from mypy_boto3_cognito_idp import CognitoIdentityProviderClient

LOCAL_ADMIN_EMAIL = "admin@one-system.local"
LOCAL_PASSWORD = "Local-Passw0rd!"  # the emulator only; printed on every start


def _wait_for_port(port: int, deadline_seconds: float = 20.0) -> None:
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"the local Cognito emulator did not start on port {port}")


def _start_emulator(port: int, log_dir: Path) -> None:
    log_dir.mkdir(parents=True, exist_ok=True)
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            raise RuntimeError(f"port {port} is taken; set LOCAL_COGNITO_PORT to a free port")
    log = (log_dir / "cognito-emulator.log").open("ab")
    subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    _wait_for_port(port)


def _create_pool(cognito: CognitoIdentityProviderClient) -> tuple[str, str]:
    pool = cognito.create_user_pool(
        PoolName="one-system-local",
        UsernameAttributes=["email"],
        AutoVerifiedAttributes=["email"],
    )["UserPool"]
    pool_id = pool["Id"]
    client = cognito.create_user_pool_client(
        UserPoolId=pool_id,
        ClientName="one-system-spa",
        ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
    )["UserPoolClient"]
    for role in Role:
        cognito.create_group(GroupName=role.value, UserPoolId=pool_id)
    return pool_id, client["ClientId"]


def _provision(
    cognito: CognitoIdentityProviderClient, pool_id: str, email: str, role: Role, active: bool
) -> str:
    created = cognito.admin_create_user(
        UserPoolId=pool_id,
        Username=email,
        MessageAction="SUPPRESS",
        UserAttributes=[
            {"Name": "email", "Value": email},
            {"Name": "email_verified", "Value": "true"},
        ],
    )["User"]
    cognito.admin_set_user_password(
        UserPoolId=pool_id, Username=email, Password=LOCAL_PASSWORD, Permanent=True
    )
    cognito.admin_add_user_to_group(UserPoolId=pool_id, Username=email, GroupName=role.value)
    if not active:
        cognito.admin_disable_user(UserPoolId=pool_id, Username=email)
    return next(attr["Value"] for attr in created.get("Attributes", []) if attr["Name"] == "sub")


async def _relink_users(cognito: CognitoIdentityProviderClient, pool_id: str) -> int:
    credentials = fetch_database_credentials(load_database_settings())
    engine = create_async_engine(credentials.url())
    try:
        async with engine.begin() as connection:
            rows = (
                await connection.execute(select(User.id, User.email, User.role, User.is_active))
            ).all()
            if not any(row.email == LOCAL_ADMIN_EMAIL for row in rows):
                sub = _provision(cognito, pool_id, LOCAL_ADMIN_EMAIL, Role.ADMIN, True)
                await connection.execute(
                    User.__table__.insert().values(
                        cognito_user_id=sub,
                        email=LOCAL_ADMIN_EMAIL,
                        full_name="Local Admin",
                        role=Role.ADMIN,
                    )
                )
            for row in rows:
                sub = _provision(cognito, pool_id, row.email, Role(row.role), row.is_active)
                await connection.execute(
                    User.__table__.update()
                    .where(User.__table__.c.id == row.id)
                    .values(cognito_user_id=sub)
                )
            return len(rows) or 1
    finally:
        await engine.dispose()


def start_local_cognito(local_dir: Path) -> None:
    """Start and bootstrap the emulator; export what the app needs to reach it."""
    port = int(os.environ.get("LOCAL_COGNITO_PORT", "9229"))
    _start_emulator(port, local_dir)
    endpoint = f"http://127.0.0.1:{port}"
    region = os.environ["AWS_REGION"]
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
    os.environ["AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER"] = endpoint
    cognito = boto3.client("cognito-idp", region_name=region)
    pool_id, client_id = _create_pool(cognito)
    users = asyncio.run(_relink_users(cognito, pool_id))
    os.environ.update(
        COGNITO_USER_POOL_ID=pool_id,
        COGNITO_APP_CLIENT_ID=client_id,
        COGNITO_JWKS_URL=f"{endpoint}/{pool_id}/.well-known/jwks.json",
    )
    token = sign_in(
        email=LOCAL_ADMIN_EMAIL, password=LOCAL_PASSWORD, client_id=client_id, region=region
    )
    docs = f"http://127.0.0.1:{os.environ.get('PORT', '8000')}/docs"
    print(
        f"""
local Cognito emulator on {endpoint} (pool {pool_id}, app client {client_id})
  {users} user(s) provisioned, each with the local password below
  admin email:     {LOCAL_ADMIN_EMAIL}
  password:        {LOCAL_PASSWORD}
  access token:    {token}
  a new token:     COGNITO_APP_CLIENT_ID={client_id} AWS_REGION={region} \\
                   AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER={endpoint} \\
                   .venv/bin/python -m app.cli.token --email {LOCAL_ADMIN_EMAIL}
  Swagger UI:      {docs}  (Authorize, paste the token)
""",
        flush=True,
    )
