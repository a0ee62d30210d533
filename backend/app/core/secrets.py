"""Database credentials: from the `DB_*` settings, or read from AWS Secrets Manager.

With `DB_SECRET_ID` set, the credentials are the RDS secret's JSON (`host`, `port` as a string or
a number, `username`, `password`, `dbname`), read when the app starts and again when the database
refuses them (a rotation, `app.core.db.DatabaseConnector`). Errors name the secret and the
problem, never a value.
"""

from __future__ import annotations

import json

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import SecretStr

from app.core.aws import aws_client
from app.core.config import (
    ConfigError,
    DatabaseAccessSettings,
    DatabaseCredentials,
    load_database_settings,
)

_SECRET_KEYS = ("host", "port", "username", "password", "dbname")


def parse_database_secret(secret_id: str, secret_string: str | None) -> DatabaseCredentials:
    """Read an RDS-style secret. Errors name the secret and the problem, never its value."""
    try:
        document = json.loads(secret_string or "")
    except ValueError:
        raise ConfigError(f"secret {secret_id!r} is not a JSON object") from None
    if not isinstance(document, dict):
        raise ConfigError(f"secret {secret_id!r} is not a JSON object")
    missing = [key for key in _SECRET_KEYS if document.get(key) in (None, "")]
    if missing:
        raise ConfigError(f"secret {secret_id!r} lacks required keys: {', '.join(missing)}")
    try:
        port = int(document["port"])
    except (TypeError, ValueError):
        raise ConfigError(f"secret {secret_id!r} has a port that is not a number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"secret {secret_id!r} has a port out of range")
    return DatabaseCredentials(
        host=str(document["host"]),
        port=port,
        name=str(document["dbname"]),
        user=str(document["username"]),
        password=SecretStr(str(document["password"])),
    )


def fetch_database_credentials(settings: DatabaseAccessSettings) -> DatabaseCredentials:
    """The credentials to connect with: from Secrets Manager when DB_SECRET_ID is set.

    Blocking (boto3): call it from a worker thread on the request path.
    """
    if settings.db_secret_id is None:
        return settings.credentials_from_env()
    client = aws_client("secretsmanager", settings)
    try:
        response = client.get_secret_value(SecretId=settings.db_secret_id)
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code", "unknown")
        raise ConfigError(f"cannot read secret {settings.db_secret_id!r}: {code}") from None
    except BotoCoreError as error:
        raise ConfigError(
            f"cannot read secret {settings.db_secret_id!r}: {type(error).__name__}"
        ) from None
    return parse_database_secret(settings.db_secret_id, response.get("SecretString"))


def load_database_url() -> str:
    """The SQLAlchemy URL Alembic migrates, from the same settings the API uses."""
    credentials = fetch_database_credentials(load_database_settings())
    return credentials.url().render_as_string(hide_password=False)
