"""boto3 clients with bounded waits: every AWS call answers or fails within seconds."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from prometheus_client import Counter

from app.core.config import AwsSettings

if TYPE_CHECKING:
    from mypy_boto3_cognito_idp import CognitoIdentityProviderClient
    from mypy_boto3_secretsmanager import SecretsManagerClient


def client_config(settings: AwsSettings) -> Config:
    return Config(
        connect_timeout=settings.aws_connect_timeout_seconds,
        read_timeout=settings.aws_read_timeout_seconds,
        # total_max_attempts counts the first try; botocore's max_attempts would add retries
        # on top of it and stretch a Cognito outage past the 5 s the request may wait.
        retries={"total_max_attempts": settings.aws_max_attempts, "mode": "standard"},
    )


@overload
def aws_client(
    service: Literal["cognito-idp"], settings: AwsSettings, *, config: Config | None = None
) -> CognitoIdentityProviderClient: ...
@overload
def aws_client(
    service: Literal["secretsmanager"], settings: AwsSettings, *, config: Config | None = None
) -> SecretsManagerClient: ...
def aws_client(service: str, settings: AwsSettings, *, config: Config | None = None) -> Any:
    """A client with `client_config(settings)`, or `config` where a call needs other bounds."""
    # Endpoints for local emulators come from boto3's own AWS_ENDPOINT_URL* variables.
    return boto3.client(  # type: ignore[call-overload]
        service, region_name=settings.aws_region, config=config or client_config(settings)
    )


@dataclass(frozen=True, slots=True)
class AwsCallMetrics:
    """A service's call counter (by operation and outcome) and time counter (by operation)."""

    calls: Counter
    seconds: Counter


def call_outcome(error: BaseException | None) -> str:
    """`ok`, the error code AWS answered, botocore's error class, or `deadline` (abandoned)."""
    if error is None:
        return "ok"
    # An adapter raises its own error from the SDK's (or from None, after a timeout): the
    # outcome is what lies beneath.
    for cause in (error, error.__cause__, error.__context__):
        if isinstance(cause, ClientError):
            return str(cause.response.get("Error", {}).get("Code") or "ClientError")
        if isinstance(cause, BotoCoreError):
            return type(cause).__name__
        if isinstance(cause, TimeoutError):
            return "deadline"
    return "error"


@contextlib.contextmanager
def observed_aws_call(observed: AwsCallMetrics, operation: str) -> Iterator[None]:
    """Count the call in the block by its outcome and time it, whatever it raises."""
    started = time.perf_counter()
    error: BaseException | None = None
    try:
        yield
    except BaseException as raised:
        error = raised
        raise
    finally:
        observed.seconds.labels(operation).inc(time.perf_counter() - started)
        observed.calls.labels(operation, call_outcome(error)).inc()
