"""The Cognito user pool as the user service needs it: a few admin calls, domain errors out.

Every call runs in a worker thread (boto3 blocks) with the bounded timeouts of `aws_client`,
and within the deadline of the request's Cognito work (`within_deadline`), after which the call
is abandoned (its thread ends on its own timeouts) and the request answers 503.

Users are addressed by their lower-case email, which is immutable in this system. How the pool
is configured decides what that email is to Cognito (`UsernameMode`, read once from
DescribeUserPool):
- **email as username** (`UsernameAttributes: [email]`): AdminCreateUser takes the email and
  makes the real username a UUID equal to `sub`; every admin call accepts the email.
- **email as an alias** (`AliasAttributes: [email]`): AdminCreateUser refuses an email-shaped
  username, so the user is created with a generated username (a UUID) and a verified email;
  every admin call accepts the verified email alias. A duplicate email is AliasExists.
- **neither**: the email is the username.

AdminCreateUser is the one call that is not idempotent, so it is sent once, never retried by
the SDK: a retry after a lost answer would meet the user the first attempt created. Its caller
resolves a lost answer by looking the user up (`CreateOutcome.UNKNOWN`).

Errors map to what a client of the API can act on:
- UsernameExists / AliasExists → 409; InvalidParameter / InvalidPassword → 422 with Cognito's
  message;
- throttling / limits → 429 with Retry-After; unreachable, timeouts, 5xx → 503 with Retry-After;
- UserNotFound (the caller has a row for this user) → 409: the directory and the database disagree;
- our own configuration (no credentials, access denied, unknown pool, client or group) → 503
  `directory_misconfigured` with a long Retry-After, logged at ERROR with what to change: no
  retry helps until an operator acts.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
import anyio.to_thread
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from app.core.aws import aws_client, client_config
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
UNDO_DEADLINE_SECONDS: Final = 5.0
UNAVAILABLE_RETRY_AFTER_SECONDS: Final = 5
# A misconfiguration lasts until an operator acts: retrying within seconds cannot help.
MISCONFIGURED_RETRY_AFTER_SECONDS: Final = 60
# The largest page ListUsers, ListUsersInGroup and ListGroups return.
MAX_PAGE_SIZE: Final = 60
ROLE_GROUPS: Final = tuple(role.value for role in Role)
POLICY_FILE: Final = "deploy/iam/instance-role-policy.json"

_THROTTLING_CODES = frozenset(
    {"TooManyRequestsException", "ThrottlingException", "LimitExceededException"}
)
_INVALID_INPUT_CODES = frozenset({"InvalidParameterException", "InvalidPasswordException"})
# How Cognito refuses a password reset for a user still on the temporary password.
_RESET_REFUSAL_CODES = frozenset({"NotAuthorizedException", "InvalidParameterException"})
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


class EmailTakenError(ConflictError):
    code = "email_taken"


class DirectoryMismatchError(ConflictError):
    """The user directory (Cognito) and the users table disagree about a user."""

    code = "directory_mismatch"


# The UserStatus of someone invited who has not signed in yet.
NEVER_SIGNED_IN_STATUS: Final = "FORCE_CHANGE_PASSWORD"

# When the current request's Cognito work must be over (time.monotonic()), if it has a deadline.
_deadline: ContextVar[float | None] = ContextVar("cognito_deadline", default=None)
# Set by a caller that reports misconfigurations itself (the pool check), so each is said once.
_caller_reports_misconfiguration: ContextVar[bool] = ContextVar(
    "cognito_caller_reports_misconfiguration", default=False
)


class DirectoryTimeoutError(ServiceUnavailableError):
    code = "directory_timeout"


class DirectoryMisconfiguredError(ServiceUnavailableError):
    """This instance cannot use the user pool as configured; an operator has to act."""

    code = "directory_misconfigured"

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


class UsernameMode(StrEnum):
    """What a user's email is to the pool (see the module docstring)."""

    EMAIL_IS_USERNAME_ATTRIBUTE = "email as username"
    EMAIL_IS_ALIAS = "email as alias"
    EMAIL_IS_USERNAME = "email is the username"
    # Sign-in by phone number only: a user cannot be created from an email at all.
    PHONE_ONLY = "phone number as username"

    @classmethod
    def of(cls, pool: Any) -> UsernameMode:
        """The mode of a DescribeUserPool `UserPool`."""
        username_attributes = pool.get("UsernameAttributes") or []
        if "email" in username_attributes:
            return cls.EMAIL_IS_USERNAME_ATTRIBUTE
        if username_attributes:
            return cls.PHONE_ONLY
        if "email" in (pool.get("AliasAttributes") or []):
            return cls.EMAIL_IS_ALIAS
        return cls.EMAIL_IS_USERNAME


class AnswerLostError(Exception):
    """A call that may have been carried out although its answer never arrived."""


def _may_have_been_carried_out(error: BaseException) -> bool:
    """Whether a failed call may still have changed Cognito (sent, answer lost or a 5xx)."""
    if isinstance(error, ClientError):
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return status >= 500
    # Not connected at all, or not signed: nothing was sent.
    return not isinstance(
        error, (EndpointConnectionError, ConnectTimeoutError, *_CREDENTIALS_ERRORS)
    )


@dataclass(frozen=True, slots=True)
class CognitoUser:
    username: str
    sub: str
    status: str
    enabled: bool
    email: str | None
    created_at: datetime | None


def _attribute(attributes: list[Any], name: str) -> str | None:
    for attribute in attributes:
        if attribute.get("Name") == name:
            value = attribute.get("Value")
            return str(value) if value is not None else None
    return None


def _aware(value: object) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def cognito_code(error: DomainError) -> str | None:
    """The Cognito error code behind a domain error raised by this adapter."""
    cause = error.__cause__
    if isinstance(cause, ClientError):
        return str(cause.response.get("Error", {}).get("Code", ""))
    return None


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


def _misconfiguration_code(error: Exception) -> str | None:
    """The error's code when it says this instance's configuration is wrong, else None."""
    if isinstance(error, _CREDENTIALS_ERRORS):
        return type(error).__name__
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        if code in _DENIED_CODES | _CREDENTIALS_CODES | _NOT_FOUND_CODES:
            return code
    return None


def _domain_error(
    operation: str, error: Exception, user_pool_id: str, region: str | None
) -> DomainError:
    misconfiguration = _misconfiguration_code(error)
    if misconfiguration is not None:
        message = ""
        if isinstance(error, ClientError):
            message = str(error.response.get("Error", {}).get("Message", "")).strip()
        hint = misconfiguration_hint(misconfiguration, operation, message, user_pool_id, region)
        if not _caller_reports_misconfiguration.get():
            logger.error(
                "cognito %s failed: the user directory is misconfigured: %s",
                operation,
                hint,
                extra={"cognito_error": misconfiguration},
            )
        return DirectoryMisconfiguredError(hint=hint)
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", "Unknown"))
        message = str(error.response.get("Error", {}).get("Message", "")).strip()
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _TAKEN_CODES:
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
            # A refusal this adapter does not know: not the caller's request, and not known
            # to pass. The instance may not manage users until someone looks.
            logger.error("cognito %s failed: %s (HTTP %s)", operation, code, status)
        else:
            logger.warning("cognito %s failed: %s (HTTP %s)", operation, code, status)
    else:
        logger.warning("cognito %s failed: %s", operation, type(error).__name__)
    return ServiceUnavailableError(
        "The user directory (Cognito) is unavailable; try again shortly",
        retry_after=UNAVAILABLE_RETRY_AFTER_SECONDS,
    )


def single_attempt(config: Config) -> Config:
    """`config` without SDK retries: for AdminCreateUser, which is not idempotent."""
    return config.merge(Config(retries={"total_max_attempts": 1, "mode": "standard"}))


class CognitoUserPool:
    """Admin operations on one Cognito user pool."""

    def __init__(
        self,
        client: CognitoIdentityProviderClient,
        user_pool_id: str,
        *,
        create_client: CognitoIdentityProviderClient | None = None,
        deadline_seconds: float = 8.0,
        username_mode: UsernameMode | None = None,
    ) -> None:
        self._client = client
        # The same endpoint and timeouts, one attempt only: for AdminCreateUser.
        self._create_client = create_client or client
        self.user_pool_id = user_pool_id
        self.deadline_seconds = deadline_seconds
        # Learnt from DescribeUserPool on first need (or from the startup check); a pool's
        # username configuration cannot change after it is created.
        self.username_mode = username_mode

    @classmethod
    def from_settings(cls, settings: Settings) -> CognitoUserPool:
        once = single_attempt(client_config(settings))
        return cls(
            aws_client("cognito-idp", settings),
            settings.cognito_user_pool_id,
            create_client=aws_client("cognito-idp", settings, config=once),
            deadline_seconds=settings.cognito_deadline_seconds,
        )

    def deadline(self) -> contextlib.AbstractContextManager[None]:
        """The deadline of one request's (or one outbox row's) Cognito work."""
        return self.within_deadline(self.deadline_seconds)

    @staticmethod
    @contextlib.contextmanager
    def within_deadline(seconds: float, *, replacing: bool = False) -> Iterator[None]:
        """Bound every call made inside to `seconds` in all.

        An enclosing deadline still holds, unless `replacing`: for an undo, which must run
        even when the work it undoes ran out of time.
        """
        outer = None if replacing else _deadline.get()
        deadline = time.monotonic() + seconds
        token = _deadline.set(deadline if outer is None else min(outer, deadline))
        try:
            yield
        finally:
            _deadline.reset(token)

    @staticmethod
    @contextlib.contextmanager
    def reporting_misconfiguration_myself() -> Iterator[None]:
        """Inside, a misconfiguration is raised (with its `hint`) but not logged here."""
        token = _caller_reports_misconfiguration.set(True)
        try:
            yield
        finally:
            _caller_reports_misconfiguration.reset(token)

    async def _call(self, operation: str, call: Callable[[], T]) -> T:
        deadline = _deadline.get()
        try:
            if deadline is None:
                return await anyio.to_thread.run_sync(call)
            # Abandoned, not interrupted, when time runs out: boto3 cannot be cancelled, and
            # its thread ends on its own timeouts.
            with anyio.fail_after(max(deadline - time.monotonic(), 0)):
                return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        except (ClientError, BotoCoreError) as error:
            region = self._client.meta.region_name
            raise _domain_error(operation, error, self.user_pool_id, region) from error
        except TimeoutError:
            logger.warning("cognito %s abandoned: the request's deadline passed", operation)
            raise DirectoryTimeoutError(
                "The user directory (Cognito) did not answer in time; try again shortly",
                retry_after=UNAVAILABLE_RETRY_AFTER_SECONDS,
            ) from None

    # -- the pool itself -------------------------------------------------------------------

    async def describe_pool(self) -> Any:
        """DescribeUserPool's `UserPool`; learns the username mode on the way."""
        response = await self._call(
            "DescribeUserPool",
            functools.partial(self._client.describe_user_pool, UserPoolId=self.user_pool_id),
        )
        pool = response["UserPool"]
        self.username_mode = UsernameMode.of(pool)
        return pool

    async def known_username_mode(self) -> UsernameMode:
        if self.username_mode is None:
            await self.describe_pool()
        assert self.username_mode is not None
        return self.username_mode

    async def group_names(self) -> set[str]:
        """Every group of the pool (ListGroups, all pages)."""
        names: set[str] = set()
        token: str | None = None
        while True:
            page = await self._call(
                "ListGroups",
                functools.partial(
                    self._client.list_groups,
                    UserPoolId=self.user_pool_id,
                    Limit=MAX_PAGE_SIZE,
                    **({"NextToken": token} if token else {}),
                ),
            )
            names |= {str(group["GroupName"]) for group in page.get("Groups", [])}
            token = page.get("NextToken")
            if not token:
                return names

    async def describe_client(self, client_id: str) -> Any:
        """DescribeUserPoolClient's `UserPoolClient`; a secret in it is the caller's to drop."""
        response = await self._call(
            "DescribeUserPoolClient",
            functools.partial(
                self._client.describe_user_pool_client,
                UserPoolId=self.user_pool_id,
                ClientId=client_id,
            ),
        )
        return response["UserPoolClient"]

    async def users_page(
        self, token: str | None, *, limit: int = MAX_PAGE_SIZE
    ) -> tuple[list[CognitoUser], str | None]:
        """One page of ListUsers, and the token of the next one (None after the last)."""
        page = await self._call(
            "ListUsers",
            functools.partial(
                self._client.list_users,
                UserPoolId=self.user_pool_id,
                Limit=limit,
                **({"PaginationToken": token} if token else {}),
            ),
        )
        users = [self._user(user, "Attributes") for user in page.get("Users", [])]
        return users, page.get("PaginationToken") or None

    async def group_members_page(
        self, role: Role, token: str | None, *, limit: int = MAX_PAGE_SIZE
    ) -> tuple[list[CognitoUser], str | None]:
        """One page of ListUsersInGroup for a role's group, and the next page's token."""
        page = await self._call(
            "ListUsersInGroup",
            functools.partial(
                self._client.list_users_in_group,
                UserPoolId=self.user_pool_id,
                GroupName=role.value,
                Limit=limit,
                **({"NextToken": token} if token else {}),
            ),
        )
        users = [self._user(user, "Attributes") for user in page.get("Users", [])]
        return users, page.get("NextToken") or None

    # -- users ------------------------------------------------------------------------------

    async def _username_for_create(self, email: str) -> str:
        mode = await self.known_username_mode()
        if mode is UsernameMode.PHONE_ONLY:
            hint = (
                f"user pool {self.user_pool_id} signs users in by phone number only; this "
                "system needs a pool with email as username or as an alias"
            )
            logger.error("cognito AdminCreateUser not sent: %s", hint)
            raise DirectoryMisconfiguredError(hint=hint)
        if mode is UsernameMode.EMAIL_IS_ALIAS:
            # Cognito refuses an email-shaped username in such a pool; the user signs in with
            # the verified email alias and never sees this name.
            return str(uuid.uuid4())
        return email

    async def create_user(self, email: str) -> CognitoUser:
        """Create the user and have Cognito email the invitation (a temporary password).

        Sent once. Raises `AnswerLostError` when Cognito may have created the user although no
        answer arrived (a read timeout, a dropped connection, a 5xx, the deadline).
        """
        # Outside the `try`: a failure here happens before anything was sent to create.
        username = await self._username_for_create(email)
        try:
            response = await self._call(
                "AdminCreateUser",
                functools.partial(
                    self._create_client.admin_create_user,
                    UserPoolId=self.user_pool_id,
                    Username=username,
                    UserAttributes=[
                        {"Name": "email", "Value": email},
                        # The admin vouches for the address: a reset code can then be sent to
                        # it, and in an email-alias pool only a verified email is an alias.
                        {"Name": "email_verified", "Value": "true"},
                    ],
                    DesiredDeliveryMediums=["EMAIL"],
                ),
            )
        except DirectoryTimeoutError as error:
            raise AnswerLostError("AdminCreateUser abandoned at the deadline") from error
        except ServiceUnavailableError as error:
            if error.__cause__ is not None and _may_have_been_carried_out(error.__cause__):
                raise AnswerLostError(type(error.__cause__).__name__) from error
            raise
        return self._user(response["User"], "Attributes")

    async def find_user(self, username: str) -> CognitoUser | None:
        """The user, or None when the pool has no such user."""
        try:
            return await self.get_user(username)
        except DirectoryMismatchError as error:
            if cognito_code(error) == "UserNotFoundException":
                return None
            raise

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
            created_at=_aware(description.get("UserCreateDate")),
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
        with self.within_deadline(UNDO_DEADLINE_SECONDS, replacing=True):
            current = await self.find_user(username)
            if current is None or current.sub != sub:
                logger.warning("not deleting Cognito user %s: the name now belongs to another", sub)
                return
            await self.delete_user(username)

    async def groups_of(self, username: str) -> set[str]:
        response = await self._call(
            "AdminListGroupsForUser",
            functools.partial(
                self._client.admin_list_groups_for_user,
                UserPoolId=self.user_pool_id,
                Username=username,
                Limit=60,
            ),
        )
        return {str(group["GroupName"]) for group in response.get("Groups", [])}

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

    async def set_enabled(self, username: str, enabled: bool) -> None:
        if enabled:
            await self.enable_user(username)
        else:
            await self.disable_user(username)

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
            if cognito_code(refusal) not in _RESET_REFUSAL_CODES:
                raise
            user = await self.get_user(username)
            if user.status != NEVER_SIGNED_IN_STATUS:
                raise
            # By the real username: the one name every kind of pool accepts for a RESEND.
            await self.resend_invitation(user.username)
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
