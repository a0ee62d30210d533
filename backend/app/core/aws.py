"""boto3 clients with bounded waits: every AWS call answers or fails within seconds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, overload

import boto3
from botocore.config import Config

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
