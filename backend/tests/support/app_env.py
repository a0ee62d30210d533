"""The environment of an app server started as a subprocess by the tests, the soak or the bench."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy.engine import make_url

from tests.support.jwt_tokens import TEST_CLIENT_ID, TEST_REGION, TEST_USER_POOL_ID
from tests.support.moto_cognito import DUMMY_CREDENTIALS_ENV, MotoCognito

BACKEND_DIR = Path(__file__).resolve().parents[2]

# The server reads only what these say: nothing of the caller's database, AWS or Cognito setup.
_INHERITED_NOT = ("DB_", "COGNITO_", "AWS_", "S3_", "SQS_", "WEB_CONCURRENCY")


def app_environment(database_url: str, jwks_url: str, **overrides: str) -> dict[str, str]:
    """The caller's environment minus its service settings, plus the test pool and `database_url`.

    S3 and SQS are required settings the phase-2 app never calls: placeholders on a port that
    nothing listens on. The test pool exists nowhere, so the startup pool check is off: it could
    only report that (it is tested against moto pools on its own).
    """
    url = make_url(database_url)
    env = {name: value for name, value in os.environ.items() if not name.startswith(_INHERITED_NOT)}
    env.update(
        DB_HOST=str(url.host),
        DB_PORT=str(url.port or 5432),
        DB_NAME=str(url.database),
        DB_USER=str(url.username),
        DB_PASSWORD=url.password or "unused",  # the embedded server trusts loopback
        AWS_REGION=TEST_REGION,
        COGNITO_USER_POOL_ID=TEST_USER_POOL_ID,
        COGNITO_APP_CLIENT_ID=TEST_CLIENT_ID,
        COGNITO_JWKS_URL=jwks_url,
        S3_ATTACHMENTS_BUCKET="attachments",
        S3_EXPORTS_BUCKET="exports",
        S3_AUDIT_BUCKET="audit",
        S3_LANDING_BUCKET="landing",
        SQS_NOTIFICATION_QUEUE_URL="http://127.0.0.1:9/notifications",
        SQS_EXPORT_QUEUE_URL="http://127.0.0.1:9/exports",
        COGNITO_POOL_CHECK="false",
    )
    env.update(overrides)
    return env


def cli_environment(database_url: str, cognito: MotoCognito, **overrides: str) -> dict[str, str]:
    """The environment of a command-line tool (`python -m app.cli....`) run as systemd or an
    operator runs it: the app's settings, Cognito on the emulator, and this checkout's code on
    an absolute PYTHONPATH whatever the working directory."""
    return app_environment(
        database_url,
        "http://127.0.0.1:9/jwks.json",  # the tools verify no tokens
        **DUMMY_CREDENTIALS_ENV,
        AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER=cognito.endpoint_url,
        COGNITO_USER_POOL_ID=cognito.user_pool_id,
        PYTHONPATH=str(BACKEND_DIR),
        **overrides,
    )


def run_cli(
    module: str, environment: dict[str, str], cwd: Path, *arguments: str
) -> subprocess.CompletedProcess[str]:
    """`python -m <module> ...` in its own process, from `cwd` (where no .env lies)."""
    return subprocess.run(
        [sys.executable, "-m", module, *arguments],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
