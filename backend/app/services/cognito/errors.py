"""What the Cognito adapter's failures mean to a client of the API, and to an operator.

Errors map to what a client of the API can act on:
- UsernameExists / AliasExists → 409; InvalidParameter / InvalidPassword → 422 with Cognito's
  message;
- throttling / limits → 429 with Retry-After; unreachable, timeouts, 5xx → 503 with Retry-After
  (what every AWS service shares: `app.core.aws.AwsAdapter.common_error`);
- UserNotFound (the caller has a row for this user) → 409: the directory and the database disagree;
- our own configuration (no credentials, access denied, unknown pool, client or group) → 503
  `directory_misconfigured` with a long Retry-After, logged at ERROR with what to change: no
  retry helps until an operator acts.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Final

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from app.core.aws import DependencyTimeoutError, error_code, error_message, http_status
from app.core.errors import ConflictError, DomainError, InvalidInputError, ServiceUnavailableError
from app.services.cognito.records import ROLE_GROUPS

logger = logging.getLogger(__name__)

# A misconfiguration lasts until an operator acts: retrying within seconds cannot help.
MISCONFIGURED_RETRY_AFTER_SECONDS: Final = 60
POLICY_FILE: Final = "deploy/iam/instance-role-policy.json"

_INVALID_INPUT_CODES = frozenset({"InvalidParameterException", "InvalidPasswordException"})
# How an email already taken is refused: as the username (plain and email-as-username pools),
# or as another user's verified alias (email-alias pools; ForceAliasCreation is never sent).
_TAKEN_CODES = frozenset({"UsernameExistsException", "AliasExistsException"})
# AWS refusing the caller rather than the request: the instance's role or credentials.
_DENIED_CODES = frozenset({"AccessDeniedException"})
_CREDENTIALS_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "MissingAuthenticationTokenException",
    }
)
# An unknown pool, group or app client: the settings name something that does not exist.
_NOT_FOUND_CODES = frozenset({"ResourceNotFoundException"})
_CREDENTIALS_ERRORS = (NoCredentialsError, PartialCredentialsError, NoRegionError)

# Set by a caller that reports misconfigurations itself (the pool check), so each is said once.
_caller_reports_misconfiguration: ContextVar[bool] = ContextVar(
    "cognito_caller_reports_misconfiguration", default=False
)


class EmailTakenError(ConflictError):
    code = "email_taken"


class CognitoUserExistsError(ConflictError):
    """The email belongs to a Cognito user that this create did not make and no row refers to:
    someone else's (made in the console, say); an operator takes it over with
    `reconcile --adopt`, never a create."""

    code = "cognito_user_exists"


class DirectoryMismatchError(ConflictError):
    """The user directory (Cognito) and the users table disagree about a user."""

    code = "directory_mismatch"


class DirectoryTimeoutError(DependencyTimeoutError):
    code = "directory_timeout"


class DirectoryMisconfiguredError(ServiceUnavailableError):
    """This instance cannot use the user pool as configured; an operator has to act."""

    code = "directory_misconfigured"
    # When the outbox tries again (past its backoff cap): an operator has to act first.
    retry_after_seconds = float(MISCONFIGURED_RETRY_AFTER_SECONDS)

    def __init__(
        self,
        detail: str = "The user directory (Cognito) is misconfigured; an operator must fix it",
        *,
        hint: str = "",
        retry_after: int = MISCONFIGURED_RETRY_AFTER_SECONDS,
    ) -> None:
        super().__init__(detail, retry_after=retry_after)
        # What is wrong and what to change, for the log and operators' tools; never the client.
        self.hint = hint


class AnswerLostError(Exception):
    """A call that may have been carried out although its answer never arrived."""


@contextlib.contextmanager
def reporting_misconfiguration_myself() -> Iterator[None]:
    """Inside, a misconfiguration is raised (with its `hint`) but not logged here."""
    token = _caller_reports_misconfiguration.set(True)
    try:
        yield
    finally:
        _caller_reports_misconfiguration.reset(token)


def may_have_been_carried_out(error: BaseException) -> bool:
    """Whether a failed call may still have changed Cognito (sent, answer lost or a 5xx)."""
    if isinstance(error, ClientError):
        return http_status(error) >= 500
    # Not connected at all, or not signed: nothing was sent.
    return not isinstance(
        error, (EndpointConnectionError, ConnectTimeoutError, *_CREDENTIALS_ERRORS)
    )


def cognito_code(error: DomainError) -> str | None:
    """The Cognito error code behind a domain error raised by this adapter."""
    cause = error.__cause__
    return error_code(cause) if isinstance(cause, ClientError) else None


def misconfiguration_hint(
    code: str, operation: str, message: str, user_pool_id: str, region: str | None
) -> str:
    """What is wrong with this instance's access to the pool, and what to change."""
    api = operation.split("(", 1)[0]
    if code in _DENIED_CODES:
        return (
            f"the instance's AWS role may not call cognito-idp:{api} on user pool "
            f"{user_pool_id}: attach {POLICY_FILE} (filled in for this pool) to the role"
        )
    if code in _NOT_FOUND_CODES:
        return (
            f"{message or 'not found'}: check COGNITO_USER_POOL_ID ({user_pool_id}) and "
            f"AWS_REGION ({region}), and that the pool has the groups {', '.join(ROLE_GROUPS)} "
            "(python -m app.cli.reconcile --check-pool names what is missing)"
        )
    return (
        f"no valid AWS credentials ({code}): run on an instance whose role carries "
        f"{POLICY_FILE}, reachable from containers (IMDSv2 hop limit 2)"
    )


def _misconfiguration_code(error: ClientError | BotoCoreError) -> str | None:
    """The error's code when it says this instance's configuration is wrong, else None."""
    if isinstance(error, _CREDENTIALS_ERRORS):
        return type(error).__name__
    if isinstance(error, ClientError):
        code = error_code(error)
        if code in _DENIED_CODES | _CREDENTIALS_CODES | _NOT_FOUND_CODES:
            return code
    return None


def cognito_error(
    operation: str, error: ClientError | BotoCoreError, user_pool_id: str, region: str | None
) -> DomainError | None:
    """The domain error for a Cognito-specific failure, logged as its kind deserves; None for
    what every AWS service shares (throttling, 5xx, timeouts: `AwsAdapter.common_error`)."""
    misconfiguration = _misconfiguration_code(error)
    if misconfiguration is not None:
        message = error_message(error) if isinstance(error, ClientError) else ""
        hint = misconfiguration_hint(misconfiguration, operation, message, user_pool_id, region)
        if not _caller_reports_misconfiguration.get():
            logger.error(
                "cognito %s failed: the user directory is misconfigured: %s",
                operation,
                hint,
                extra={"cognito_error": misconfiguration},
            )
        return DirectoryMisconfiguredError(hint=hint)
    if not isinstance(error, ClientError):
        return None
    code, message = error_code(error), error_message(error)
    if code in _TAKEN_CODES:
        return EmailTakenError("A user with this email already exists")
    if code in _INVALID_INPUT_CODES:
        return InvalidInputError(f"Cognito rejected the request: {message or code}")
    if code == "UserNotFoundException":
        return DirectoryMismatchError(
            "The user exists in the database but not in the user directory (Cognito)"
        )
    if code == "NotAuthorizedException":
        return DirectoryMismatchError(
            f"The user directory refused this action in the user's current state: {message}"
        )
    return None
