"""The Cognito user pool as the user service needs it: a few admin calls, domain errors out.

Every call runs in a worker thread (boto3 blocks) with the bounded timeouts of `aws_client`.
Users are addressed by their Cognito username, which is their lower-case email: it is immutable
in this system, and every admin API accepts it (also when the pool uses email as an alias).

Errors map to what a client of the API can act on:
- UsernameExists → 409; InvalidParameter / InvalidPassword → 422 with Cognito's message;
- throttling / limits → 429 with Retry-After; unreachable, timeouts, 5xx → 503 with Retry-After;
- UserNotFound (the caller has a row for this user) → 409: the directory and the database disagree.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio.to_thread
from botocore.exceptions import BotoCoreError, ClientError

from app.core.aws import aws_client
from app.core.errors import (
    ConflictError,
    DomainError,
    InvalidInputError,
    ServiceUnavailableError,
    TooManyRequestsError,
)
from app.core.roles import Role
from app.schemas.user import PasswordResetOutcome

if TYPE_CHECKING:
    from mypy_boto3_cognito_idp import CognitoIdentityProviderClient

    from app.core.config import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

THROTTLED_RETRY_AFTER_SECONDS: Final = 2
UNAVAILABLE_RETRY_AFTER_SECONDS: Final = 5

_THROTTLING_CODES = frozenset(
    {"TooManyRequestsException", "ThrottlingException", "LimitExceededException"}
)
_INVALID_INPUT_CODES = frozenset({"InvalidParameterException", "InvalidPasswordException"})
# How Cognito refuses a password reset for a user still on the temporary password.
_RESET_REFUSAL_CODES = frozenset({"NotAuthorizedException", "InvalidParameterException"})


class EmailTakenError(ConflictError):
    code = "email_taken"


class DirectoryMismatchError(ConflictError):
    """The user directory (Cognito) and the users table disagree about a user."""

    code = "directory_mismatch"


# The UserStatus of someone invited who has not signed in yet.
NEVER_SIGNED_IN_STATUS: Final = "FORCE_CHANGE_PASSWORD"


@dataclass(frozen=True, slots=True)
class CognitoUser:
    username: str
    sub: str
    status: str
    enabled: bool
    email: str | None


def _attribute(attributes: list[Any], name: str) -> str | None:
    for attribute in attributes:
        if attribute.get("Name") == name:
            value = attribute.get("Value")
            return str(value) if value is not None else None
    return None


def _cognito_code(error: DomainError) -> str | None:
    """The Cognito error code behind a domain error raised by this adapter."""
    cause = error.__cause__
    if isinstance(cause, ClientError):
        return str(cause.response.get("Error", {}).get("Code", ""))
    return None


def _domain_error(operation: str, error: Exception) -> DomainError:
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", "Unknown"))
        message = str(error.response.get("Error", {}).get("Message", "")).strip()
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code == "UsernameExistsException":
            return EmailTakenError("A user with this email already exists")
        if code in _INVALID_INPUT_CODES:
            return InvalidInputError(f"Cognito rejected the request: {message or code}")
        if code in _THROTTLING_CODES:
            return TooManyRequestsError(
                "The user directory is busy; try again shortly",
                retry_after=THROTTLED_RETRY_AFTER_SECONDS,
            )
        if code == "UserNotFoundException":
            return DirectoryMismatchError(
                "The user exists in the database but not in the user directory (Cognito)"
            )
        if code == "NotAuthorizedException":
            return DirectoryMismatchError(
                f"The user directory refused this action in the user's current state: {message}"
            )
        if status < 500:
            # Access denied, unknown pool, bad credentials: our configuration, not the caller's
            # request. The instance cannot manage users until it is fixed.
            logger.error("cognito %s failed: %s (HTTP %s)", operation, code, status)
        else:
            logger.warning("cognito %s failed: %s (HTTP %s)", operation, code, status)
    else:
        logger.warning("cognito %s failed: %s", operation, type(error).__name__)
    return ServiceUnavailableError(
        "The user directory (Cognito) is unavailable; try again shortly",
        retry_after=UNAVAILABLE_RETRY_AFTER_SECONDS,
    )


class CognitoUserPool:
    """Admin operations on one Cognito user pool."""

    def __init__(self, client: CognitoIdentityProviderClient, user_pool_id: str) -> None:
        self._client = client
        self.user_pool_id = user_pool_id

    @classmethod
    def from_settings(cls, settings: Settings) -> CognitoUserPool:
        return cls(aws_client("cognito-idp", settings), settings.cognito_user_pool_id)

    async def _call(self, operation: str, call: Callable[[], T]) -> T:
        try:
            return await anyio.to_thread.run_sync(call)
        except (ClientError, BotoCoreError) as error:
            raise _domain_error(operation, error) from error

    async def create_user(self, email: str) -> CognitoUser:
        """Create the user and have Cognito email the invitation (a temporary password)."""
        response = await self._call(
            "AdminCreateUser",
            functools.partial(
                self._client.admin_create_user,
                UserPoolId=self.user_pool_id,
                Username=email,
                UserAttributes=[
                    {"Name": "email", "Value": email},
                    # The admin vouches for the address; a reset code can then be sent to it.
                    {"Name": "email_verified", "Value": "true"},
                ],
                DesiredDeliveryMediums=["EMAIL"],
            ),
        )
        return self._user(response["User"], "Attributes")

    async def get_user(self, username: str) -> CognitoUser:
        response = await self._call(
            "AdminGetUser",
            functools.partial(
                self._client.admin_get_user, UserPoolId=self.user_pool_id, Username=username
            ),
        )
        return self._user(response, "UserAttributes")

    def _user(self, description: Any, attributes_key: str) -> CognitoUser:
        attributes = description.get(attributes_key, [])
        sub = _attribute(attributes, "sub")
        if not sub:
            raise ServiceUnavailableError("The user directory returned a user without an id")
        return CognitoUser(
            username=str(description.get("Username", "")),
            sub=sub,
            status=str(description.get("UserStatus", "")),
            enabled=bool(description.get("Enabled", True)),
            email=_attribute(attributes, "email"),
        )

    async def delete_user(self, username: str) -> None:
        await self._call(
            "AdminDeleteUser",
            functools.partial(
                self._client.admin_delete_user, UserPoolId=self.user_pool_id, Username=username
            ),
        )

    async def delete_user_if_sub(self, username: str, sub: str) -> None:
        """Delete `username` only while it is still the user with id `sub`.

        The undo of a create: a concurrent request may have replaced the user under the same
        name (after a delete), and that one must survive.
        """
        current = await self.get_user(username)
        if current.sub != sub:
            logger.warning("not deleting Cognito user %s: the name now belongs to another", sub)
            return
        await self.delete_user(username)

    async def add_to_group(self, username: str, role: Role) -> None:
        await self._call(
            "AdminAddUserToGroup",
            functools.partial(
                self._client.admin_add_user_to_group,
                UserPoolId=self.user_pool_id,
                Username=username,
                GroupName=role.value,
            ),
        )

    async def remove_from_group(self, username: str, role: Role) -> None:
        await self._call(
            "AdminRemoveUserFromGroup",
            functools.partial(
                self._client.admin_remove_user_from_group,
                UserPoolId=self.user_pool_id,
                Username=username,
                GroupName=role.value,
            ),
        )

    async def disable_user(self, username: str) -> None:
        await self._call(
            "AdminDisableUser",
            functools.partial(
                self._client.admin_disable_user, UserPoolId=self.user_pool_id, Username=username
            ),
        )

    async def enable_user(self, username: str) -> None:
        await self._call(
            "AdminEnableUser",
            functools.partial(
                self._client.admin_enable_user, UserPoolId=self.user_pool_id, Username=username
            ),
        )

    async def sign_out_everywhere(self, username: str) -> None:
        """Revoke the user's refresh tokens, so no new access tokens are issued to them."""
        await self._call(
            "AdminUserGlobalSignOut",
            functools.partial(
                self._client.admin_user_global_sign_out,
                UserPoolId=self.user_pool_id,
                Username=username,
            ),
        )

    async def reset_password(self, username: str) -> PasswordResetOutcome:
        """Send a password-reset code; to a user who never signed in, re-send the invitation.

        Cognito refuses a reset while the user still has the temporary password
        (FORCE_CHANGE_PASSWORD); for them a fresh invitation is what "reset" means.
        """
        try:
            await self._call(
                "AdminResetUserPassword",
                functools.partial(
                    self._client.admin_reset_user_password,
                    UserPoolId=self.user_pool_id,
                    Username=username,
                ),
            )
        except DomainError as refusal:
            if _cognito_code(refusal) not in _RESET_REFUSAL_CODES:
                raise
            user = await self.get_user(username)
            if user.status != NEVER_SIGNED_IN_STATUS:
                raise
            await self.resend_invitation(username)
            return PasswordResetOutcome.INVITATION_RESENT
        return PasswordResetOutcome.RESET

    async def resend_invitation(self, username: str) -> None:
        await self._call(
            "AdminCreateUser(RESEND)",
            functools.partial(
                self._client.admin_create_user,
                UserPoolId=self.user_pool_id,
                Username=username,
                MessageAction="RESEND",
                DesiredDeliveryMediums=["EMAIL"],
            ),
        )
