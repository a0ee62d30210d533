"""The host's env file holds no secret, and the deploy path works from it alone.

`deploy/backend.env.example` is what an operator copies to /etc/one-system/backend.env (the
env_file of docker-compose.prod.yml). With it, the migration step of the deploy and the app
itself read the database credentials from Secrets Manager (moto's server over HTTP here).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest
from moto.server import ThreadedMotoServer
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from .nginx_harness import REPO_ROOT, free_port, run_uvicorn

APP_ENV_EXAMPLE = REPO_ROOT / "deploy" / "backend.env.example"
SECRET_ID = "/one-system/db/credentials"


def env_file_values(path: Path) -> dict[str, str]:
    """KEY=value lines, as compose's env_file reads this file (no quoting or expansion in it)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, separator, value = line.partition("=")
            assert separator, line
            values[key] = value
    return values


def test_example_env_file_names_the_secret_and_holds_no_credentials() -> None:
    values = env_file_values(APP_ENV_EXAMPLE)
    assert values["DB_SECRET_ID"] == SECRET_ID
    # Everything the database needs comes from the secret, the password above all.
    assert not [key for key in values if key.startswith("DB_") and key != "DB_SECRET_ID"]
    assert not [key for key in values if "PASSWORD" in key or key.startswith("AWS_SECRET")]


@pytest.fixture
def secrets_manager() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


async def test_migration_and_app_read_the_secret_named_in_the_env_file(
    empty_database_url: str, secrets_manager: str, tmp_path: Path
) -> None:
    database = make_url(empty_database_url)
    values = env_file_values(APP_ENV_EXAMPLE)
    aws = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL_SECRETS_MANAGER": secrets_manager,
    }
    boto3.client(
        "secretsmanager",
        region_name=values["AWS_REGION"],
        endpoint_url=secrets_manager,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    ).create_secret(
        Name=values["DB_SECRET_ID"],
        SecretString=json.dumps(
            {
                "engine": "postgres",
                "host": database.host,
                "port": str(database.port),
                "username": database.username,
                # The test server may trust local connections; the secret must hold a password.
                "password": database.password or "ignored-by-trust-auth",
                "dbname": database.database,
            }
        ),
    )
    # Nothing of the test runner's own database or AWS settings may leak in.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("DB_", "AWS_"))}
    env = {**inherited, **values, **aws}

    # The deploy's migration step: `alembic upgrade head` with the app's env file (in a
    # directory without a .env, as in the image).
    migration = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "alembic", "-c", str(REPO_ROOT / "alembic.ini"), "upgrade", "head"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert migration.returncode == 0, migration.stderr
    engine = create_async_engine(empty_database_url)
    try:
        async with engine.connect() as connection:
            version = await connection.scalar(text("SELECT version_num FROM alembic_version"))
    finally:
        await engine.dispose()
    assert version

    # The app started the same way reaches the database through the secret.
    dead = f"http://127.0.0.1:{free_port()}"
    app_env = {**values, **aws, "COGNITO_JWKS_URL": f"{dead}/.well-known/jwks.json"}
    with run_uvicorn("app.main:app", env=app_env) as port:
        async with httpx.AsyncClient(timeout=10) as client:
            health = await client.get(f"http://127.0.0.1:{port}/health")
    assert health.status_code == 200, health.text
    assert health.json() == {"status": "ok", "db": "ok"}
