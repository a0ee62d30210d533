"""Settings, read once from the environment (and `.env` locally).

Field names are the environment variables a deployment sets (`DB_HOST`, `COGNITO_USER_POOL_ID`,
...). When `DB_SECRET_ID` is set the database credentials come from that AWS Secrets Manager
secret instead of the `DB_*` variables, which is how the service runs on EC2; reading it is
`app.core.secrets`' job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy import URL

_SETTINGS_CONFIG = SettingsConfigDict(
    env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
)


class ConfigError(RuntimeError):
    """The service cannot start with the configuration it was given."""


@dataclass(frozen=True, slots=True)
class DatabaseCredentials:
    host: str
    port: int
    name: str
    user: str
    password: SecretStr

    def url(self) -> URL:
        return URL.create(
            "postgresql+asyncpg",
            username=self.user,
            password=self.password.get_secret_value(),
            host=self.host,
            port=self.port,
            database=self.name,
        )


class AwsSettings(BaseSettings):
    """The region and the bounded waits of every AWS call (Cognito, Secrets Manager)."""

    model_config = _SETTINGS_CONFIG

    aws_region: str | None = None
    aws_connect_timeout_seconds: float = Field(default=2.0, gt=0)
    aws_read_timeout_seconds: float = Field(default=5.0, gt=0)
    aws_max_attempts: int = Field(default=2, ge=1)


class DatabaseSettings(BaseSettings):
    """Where the database is, how its credentials are found, and the pool's bounded waits."""

    model_config = _SETTINGS_CONFIG

    db_host: str | None = None
    db_port: int = Field(default=5432, ge=1, le=65535)
    db_name: str | None = None
    db_user: str | None = None
    db_password: SecretStr | None = None
    db_secret_id: str | None = None

    # Every wait is bounded and shorter than the Cognito calls (5 s) and the proxies (30 s, 60 s).
    db_pool_size: int = Field(default=5, ge=1)
    db_max_overflow: int = Field(default=2, ge=0)
    db_pool_timeout_seconds: float = Field(default=3.0, gt=0)
    db_connect_timeout_seconds: float = Field(default=2.0, gt=0)
    db_statement_timeout_seconds: float = Field(default=5.0, gt=0)

    @model_validator(mode="after")
    def _credentials_have_a_source(self) -> DatabaseSettings:
        if self.db_secret_id is None:
            missing = [
                name.upper()
                for name in ("db_host", "db_name", "db_user", "db_password")
                if getattr(self, name) is None
            ]
            if missing:
                raise ValueError(
                    "set DB_SECRET_ID, or all of DB_HOST, DB_NAME, DB_USER, DB_PASSWORD "
                    f"(missing: {', '.join(missing)})"
                )
        return self

    def credentials_from_env(self) -> DatabaseCredentials:
        # The model validator guarantees these when no secret is configured.
        assert self.db_host is not None
        assert self.db_name is not None
        assert self.db_user is not None
        assert self.db_password is not None
        return DatabaseCredentials(
            host=self.db_host,
            port=self.db_port,
            name=self.db_name,
            user=self.db_user,
            password=self.db_password,
        )


class DatabaseAccessSettings(DatabaseSettings, AwsSettings):
    """Enough to reach the database from a tool (Alembic, the CLIs): its secret may be in AWS."""


class Settings(DatabaseAccessSettings):
    """Everything the API needs at runtime."""

    aws_region: str  # required here; Alembic needs only the database fields
    cognito_user_pool_id: str
    cognito_app_client_id: str
    s3_attachments_bucket: str
    s3_exports_bucket: str
    s3_audit_bucket: str
    s3_landing_bucket: str
    sqs_notification_queue_url: str
    sqs_export_queue_url: str
    environment: str = "development"
    # What this instance runs, as the deploy names it (the image tag): `/metrics` reports it.
    app_release: str | None = None

    cognito_jwks_url: str | None = None
    cognito_domain: str | None = None
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    log_level: str = "INFO"
    # One JSON line per request. Behind Nginx, which logs every request with the same request
    # id, production turns it off (docker-compose.prod.yml) and saves its cost on every request.
    access_log: bool = True
    # Request metrics (`/metrics`, app.core.metrics). Off only to measure what they cost
    # (`make bench`): an operator has nothing to alarm on without them.
    metrics: bool = True
    health_timeout_seconds: float = Field(default=2.0, gt=0)
    # All the Cognito work of one request, retries included: below Nginx's 30 s proxy timeout
    # with room for the database work around it.
    cognito_deadline_seconds: float = Field(default=8.0, gt=0, le=20)
    # At startup, in the background: is the pool as this system needs it (logged once)?
    cognito_pool_check: bool = True
    # The per-worker cache of active users needs a LISTEN connection; behind RDS Proxy or
    # PgBouncer in transaction mode LISTEN does not work, so it can be turned off there.
    user_cache: bool = True

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [origin.strip() for origin in text.split(",") if origin.strip()]
        return value

    @field_validator("cors_origins")
    @classmethod
    def _no_wildcard_origin(cls, origins: list[str]) -> list[str]:
        # Browsers send the bearer token from the SPA only; an explicit list keeps other sites out.
        if "*" in origins:
            raise ValueError("CORS_ORIGINS must list origins explicitly; '*' is not allowed")
        return [origin.rstrip("/") for origin in origins]

    @field_validator("log_level")
    @classmethod
    def _known_log_level(cls, level: str) -> str:
        level = level.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("LOG_LEVEL must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @cached_property
    def cognito_issuer(self) -> str:
        # Real Cognito and the local emulator issue tokens with this same `iss`.
        return f"https://cognito-idp.{self.aws_region}.amazonaws.com/{self.cognito_user_pool_id}"

    @cached_property
    def jwks_url(self) -> str:
        return self.cognito_jwks_url or f"{self.cognito_issuer}/.well-known/jwks.json"


def _problems(error: ValidationError) -> list[str]:
    problems = []
    missing = [str(p["loc"][0]).upper() for p in error.errors() if p["type"] == "missing"]
    if missing:
        problems.append(f"missing required settings: {', '.join(missing)}")
    for problem in error.errors():
        if problem["type"] != "missing":
            where = f"{str(problem['loc'][0]).upper()}: " if problem["loc"] else ""
            # `msg` only: pydantic's full text would echo the offending value, maybe a secret.
            problems.append(f"{where}{problem['msg'].removeprefix('Value error, ')}")
    return problems


def load_settings(**overrides: Any) -> Settings:
    """Read the settings; on failure, one message that names every problem."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        problems = _problems(error)
    # The database rule spans several fields and only runs once they parse; check it too so that
    # the first message is the complete one.
    try:
        DatabaseAccessSettings(**overrides)
    except ValidationError as error:
        problems += [problem for problem in _problems(error) if problem not in problems]
    raise ConfigError("; ".join(problems))


def load_database_settings(**overrides: Any) -> DatabaseAccessSettings:
    """What a tool needs to reach the database; on failure, one message naming every problem."""
    try:
        return DatabaseAccessSettings(**overrides)
    except ValidationError as error:
        raise ConfigError("; ".join(_problems(error))) from None
