"""Settings from the environment and from an AWS Secrets Manager secret (moto)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import boto3
import pytest
from moto import mock_aws

from app.core.config import ConfigError, load_database_settings, load_settings
from app.core.secrets import fetch_database_credentials, load_database_url

REQUIRED = {
    "DB_HOST": "db.internal",
    "DB_NAME": "onesystem",
    "DB_USER": "api",
    "DB_PASSWORD": "s3cr3t-p@ss",
    "AWS_REGION": "ap-southeast-1",
    "COGNITO_USER_POOL_ID": "ap-southeast-1_abc",
    "COGNITO_APP_CLIENT_ID": "client123",
    "S3_ATTACHMENTS_BUCKET": "a",
    "S3_EXPORTS_BUCKET": "b",
    "S3_AUDIT_BUCKET": "c",
    "S3_LANDING_BUCKET": "d",
    "SQS_NOTIFICATION_QUEUE_URL": "https://sqs/notify",
    "SQS_EXPORT_QUEUE_URL": "https://sqs/export",
}
SECRET_ID = "/one-system/db/credentials"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: pytest.TempPathFactory) -> None:
    """Tests see only the variables they set, and no developer `.env`."""
    import os

    for name in list(os.environ):
        if name.startswith(("DB_", "COGNITO_", "S3_", "SQS_", "CORS_", "LOG_")) or name in {
            "AWS_REGION",
            "ENVIRONMENT",
        }:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # type: ignore[arg-type]


def set_env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(
        monkeypatch,
        {**REQUIRED, "DB_PORT": "6543", "CORS_ORIGINS": "https://a.gov, https://b.gov/"},
    )
    settings = load_settings()
    assert settings.db_port == 6543
    assert settings.cors_origins == ["https://a.gov", "https://b.gov"]
    assert settings.environment == "development"
    assert settings.cognito_issuer == (
        "https://cognito-idp.ap-southeast-1.amazonaws.com/ap-southeast-1_abc"
    )
    assert settings.jwks_url == settings.cognito_issuer + "/.well-known/jwks.json"


def test_settings_from_dotenv_file(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    from pathlib import Path

    Path(".env").write_text("\n".join(f"{k}={v}" for k, v in REQUIRED.items()))
    assert load_settings().db_host == "db.internal"


def test_every_missing_setting_is_named_in_one_message() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings()
    message = str(raised.value)
    for name in (
        "AWS_REGION",
        "COGNITO_USER_POOL_ID",
        "COGNITO_APP_CLIENT_ID",
        "S3_AUDIT_BUCKET",
        "SQS_EXPORT_QUEUE_URL",
        "DB_HOST",
        "DB_PASSWORD",
    ):
        assert name in message


def test_wildcard_cors_origin_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, {**REQUIRED, "CORS_ORIGINS": "*"})
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        load_settings()


def test_bad_values_are_named_without_echoing_them(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, {**REQUIRED, "DB_PORT": "not-a-port", "LOG_LEVEL": "LOUD"})
    with pytest.raises(ConfigError) as raised:
        load_settings()
    assert "DB_PORT" in str(raised.value)
    assert "LOG_LEVEL" in str(raised.value)
    assert "not-a-port" not in str(raised.value)


def test_password_is_not_shown_by_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, REQUIRED)
    settings = load_settings()
    assert "s3cr3t" not in repr(settings)
    assert "s3cr3t" not in repr(settings.credentials_from_env())


def test_database_url_escapes_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, REQUIRED)
    assert (
        load_database_url() == "postgresql+asyncpg://api:s3cr3t-p%40ss@db.internal:5432/onesystem"
    )


@pytest.fixture
def secrets() -> Iterator[object]:
    with mock_aws():
        yield boto3.client("secretsmanager", region_name="ap-southeast-1")


def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    set_env(monkeypatch, {"DB_SECRET_ID": SECRET_ID, "AWS_REGION": "ap-southeast-1"})
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")


@pytest.mark.parametrize("port", [5432, "5432"])
def test_credentials_from_secret(
    monkeypatch: pytest.MonkeyPatch, secrets: object, port: int | str
) -> None:
    secret_env(monkeypatch)
    document = {
        "engine": "postgres",
        "host": "aurora.internal",
        "port": port,
        "username": "svc",
        "password": "rotated!",
        "dbname": "onesystem",
    }
    secrets.create_secret(Name=SECRET_ID, SecretString=json.dumps(document))  # type: ignore[attr-defined]
    credentials = fetch_database_credentials(load_database_settings())
    assert (credentials.host, credentials.port, credentials.user, credentials.name) == (
        "aurora.internal",
        5432,
        "svc",
        "onesystem",
    )
    assert credentials.password.get_secret_value() == "rotated!"


def test_a_secret_rds_manages_takes_the_host_and_database_from_the_settings(
    monkeypatch: pytest.MonkeyPatch, secrets: object
) -> None:
    # RDS's own secret for the master user holds the user name and the password only.
    secret_env(monkeypatch)
    set_env(monkeypatch, {"DB_HOST": "aurora.internal", "DB_PORT": "6432", "DB_NAME": "onesystem"})
    document = {"username": "svc", "password": "rotated!"}
    secrets.create_secret(Name=SECRET_ID, SecretString=json.dumps(document))  # type: ignore[attr-defined]
    credentials = fetch_database_credentials(load_database_settings())
    assert (credentials.host, credentials.port, credentials.user, credentials.name) == (
        "aurora.internal",
        6432,
        "svc",
        "onesystem",
    )


@pytest.mark.parametrize(
    ("secret_string", "complaint"),
    [
        ("this is not json", "not a JSON object"),
        ('["a", "list"]', "not a JSON object"),
        (json.dumps({"host": "h", "port": 5432, "username": "u", "dbname": "d"}), "password"),
        (json.dumps({"username": "u", "password": "topsecret"}), "host, dbname"),
        (
            json.dumps(
                {"host": "h", "port": "x", "username": "u", "password": "topsecret", "dbname": "d"}
            ),
            "port",
        ),
    ],
)
def test_bad_secret_is_a_clear_error_without_its_value(
    monkeypatch: pytest.MonkeyPatch, secrets: object, secret_string: str, complaint: str
) -> None:
    secret_env(monkeypatch)
    secrets.create_secret(Name=SECRET_ID, SecretString=secret_string)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError) as raised:
        fetch_database_credentials(load_database_settings())
    assert SECRET_ID in str(raised.value)
    assert complaint in str(raised.value)
    assert "topsecret" not in str(raised.value)


def test_missing_secret_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, secrets: object) -> None:
    secret_env(monkeypatch)
    with pytest.raises(ConfigError, match="ResourceNotFoundException"):
        fetch_database_credentials(load_database_settings())
