"""A local Cognito for `make run`: the tests' emulator (`devtools.cognito_emulator`: moto's
server, patched to answer as the real Cognito does) in a child process.

Bootstraps a user pool (email as username), an app client that allows USER_PASSWORD_AUTH, a
group per role, and a seeded admin. The emulator keeps nothing across restarts while the
database does, so every start re-provisions each user row in the emulator (same email, same
role, a known local password) and re-links the row to its new `sub` by email. A user the API
creates during a run gets a random temporary password; `token_for` (behind `make token`) gives
it the local password.

The app reaches the emulator only the way it reaches real Cognito: boto3's
AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER and the JWKS URL (COGNITO_JWKS_URL).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import create_async_engine

from app.cli.token import SignInError, sign_in
from app.core.config import load_database_settings
from app.core.roles import Role
from app.core.secrets import fetch_database_credentials
from app.models.user import User
from devtools.processes import (
    BACKEND,
    OWNER_VARIABLE,
    LocalPool,
    emulator_arguments,
    shown,
    stop_child,
    wait_for_port,
)

if TYPE_CHECKING:
    from mypy_boto3_cognito_idp import CognitoIdentityProviderClient

# A reserved documentation domain (RFC 2606) that the API's email validation accepts, so the
# local admin looks like any user the API creates (`.local` and `.test` are refused).
LOCAL_ADMIN_EMAIL = "admin@one-system.example"
LOCAL_PASSWORD = "Local-Passw0rd!"  # the emulator only; printed on every start
START_TIMEOUT_SECONDS = 30


class EmulatorError(RuntimeError):
    """The emulator could not be started or used; the message is one line for the user."""


def start_emulator(port: int, local_dir: Path) -> subprocess.Popen[bytes]:
    """Start the emulator on `port` (see `wait_for_emulator`), out of reach of Ctrl-C.

    Its own session: `make run` stops its children itself, in order (API first), and a Ctrl-C
    must not kill the emulator under a still-running API.
    """
    log_path = local_dir / "cognito-emulator.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", *emulator_arguments(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=local_dir,
            env={
                **os.environ,
                OWNER_VARIABLE: str(local_dir),
                # It runs in `local_dir`, where a relative PYTHONPATH (the Makefile's) is lost.
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(BACKEND), os.environ.get("PYTHONPATH")])
                ),
            },
            start_new_session=True,
        )
    return process


def wait_for_emulator(process: subprocess.Popen[bytes], port: int, local_dir: Path) -> None:
    """Return once it accepts connections; stop it and raise if it exits or takes too long."""
    if not wait_for_port(port, START_TIMEOUT_SECONDS, process):
        stop_child(process, 5)
        log = shown(local_dir / "cognito-emulator.log")
        raise EmulatorError(f"the local Cognito emulator did not start on port {port}; see {log}")


def _create_pool(cognito: CognitoIdentityProviderClient) -> tuple[str, str]:
    pool = cognito.create_user_pool(
        PoolName="one-system-local",
        UsernameAttributes=["email"],
        AutoVerifiedAttributes=["email"],
        # Users are created by admins only, as the pool check asks of a real pool.
        AdminCreateUserConfig={"AllowAdminCreateUserOnly": True},
    )["UserPool"]
    pool_id = pool["Id"]
    client = cognito.create_user_pool_client(
        UserPoolId=pool_id,
        ClientName="one-system-spa",
        # SRP for the SPA, as the pool check asks of a real pool; USER_PASSWORD for make token.
        ExplicitAuthFlows=[
            "ALLOW_USER_SRP_AUTH",
            "ALLOW_USER_PASSWORD_AUTH",
            "ALLOW_REFRESH_TOKEN_AUTH",
        ],
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
                # A new link, not a change of the user: `updated_at` keeps its value.
                users = User.__table__
                await connection.execute(
                    users.update()
                    .where(users.c.id == row.id)
                    .values(cognito_user_id=sub, updated_at=users.c.updated_at)
                )
            return len(rows) or 1
    finally:
        await engine.dispose()


def bootstrap(endpoint: str, region: str) -> tuple[LocalPool, int]:
    """Create the pool, provision every database user in it; return it and the user count.

    Points this process's boto3 at the emulator and exports what the API needs to reach it.
    """
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
    os.environ["AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER"] = endpoint
    cognito = boto3.client("cognito-idp", region_name=region)
    try:
        pool_id, client_id = _create_pool(cognito)
        users = asyncio.run(_relink_users(cognito, pool_id))
    except (BotoCoreError, ClientError) as error:
        raise EmulatorError(
            f"provisioning the local Cognito emulator at {endpoint} failed: {error}"
        ) from None
    os.environ.update(
        COGNITO_USER_POOL_ID=pool_id,
        COGNITO_APP_CLIENT_ID=client_id,
        COGNITO_JWKS_URL=f"{endpoint}/{pool_id}/.well-known/jwks.json",
    )
    return LocalPool(endpoint=endpoint, region=region, pool_id=pool_id, client_id=client_id), users


def token_for(pool: LocalPool, email: str) -> str:
    """Give `email` the local password in the emulator, sign in, and return an access token.

    Users the API creates during a run get a random temporary password that nobody sees; this
    sets the known one (permanent, so no new-password challenge) the way an admin would.
    """
    # sign_in builds its own client, which finds the emulator through boto3's variable.
    os.environ["AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER"] = pool.endpoint
    cognito = boto3.client(
        "cognito-idp",
        region_name=pool.region,
        endpoint_url=pool.endpoint,
        aws_access_key_id="local",
        aws_secret_access_key="local",
    )
    try:
        cognito.admin_set_user_password(
            UserPoolId=pool.pool_id, Username=email, Password=LOCAL_PASSWORD, Permanent=True
        )
        return sign_in(
            email=email, password=LOCAL_PASSWORD, client_id=pool.client_id, region=pool.region
        )
    except cognito.exceptions.UserNotFoundException:
        raise EmulatorError(f"no user {email} in the local Cognito emulator") from None
    except SignInError as error:
        raise EmulatorError(f"{email}: {error}") from None
    except (BotoCoreError, ClientError) as error:
        raise EmulatorError(
            f"the local Cognito emulator at {pool.endpoint} failed: {type(error).__name__}"
        ) from None
