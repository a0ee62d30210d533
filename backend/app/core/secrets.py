"""Database credentials: from the `DB_*` settings, or read from AWS Secrets Manager.

With `DB_SECRET_ID` set, the credentials are the RDS secret's JSON (`host`, `port` as a string or
a number, `username`, `password`, `dbname`), read when the app starts and again when the database
refuses them (a rotation, `app.core.db.DatabaseConnector`). A secret that RDS manages for the
master user holds only `username` and `password`: the rest then comes from `DB_HOST`, `DB_PORT`
and `DB_NAME`. Errors name the secret and the problem, never a value.
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
    DatabaseSettings,
    load_database_settings,
)


def parse_database_secret(
    secret_id: str, secret_string: str | None, settings: DatabaseSettings
) -> DatabaseCredentials:
    """Read an RDS-style secret; where it names no host, port or database, `settings` do."""
    try:
        document = json.loads(secret_string or "")
    except ValueError:
        raise ConfigError(f"secret {secret_id!r} is not a JSON object") from None
    if not isinstance(document, dict):
        raise ConfigError(f"secret {secret_id!r} is not a JSON object")
    values = {
        "host": document.get("host") or settings.db_host,
        "port": document.get("port") or settings.db_port,
        "username": document.get("username"),
        "password": document.get("password"),
        "dbname": document.get("dbname") or settings.db_name,
    }
    missing = [key for key, value in values.items() if value in (None, "")]
    if missing:
        raise ConfigError(
            f"secret {secret_id!r} lacks required keys: {', '.join(missing)}"
            " (host and dbname may come from DB_HOST and DB_NAME instead)"
        )
    try:
        port = int(str(values["port"]))
    except (TypeError, ValueError):
        raise ConfigError(f"secret {secret_id!r} has a port that is not a number") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"secret {secret_id!r} has a port out of range")
    return DatabaseCredentials(
        host=str(values["host"]),
        port=port,
        name=str(values["dbname"]),
        user=str(values["username"]),
        password=SecretStr(str(values["password"])),
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
    return parse_database_secret(settings.db_secret_id, response.get("SecretString"), settings)


def load_database_url() -> str:
    """The SQLAlchemy URL Alembic migrates, from the same settings the API uses."""
    credentials = fetch_database_credentials(load_database_settings())
    return credentials.url().render_as_string(hide_password=False)
