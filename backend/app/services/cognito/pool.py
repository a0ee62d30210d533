"""The Cognito user pool as the user service needs it: a few admin calls, domain errors out.

An `AwsAdapter` (`app.core.aws`): every call runs in a worker thread (boto3 blocks) with the
bounded timeouts of `aws_client`, and within the deadline of the request's Cognito work, after
which the call is abandoned (its thread ends on its own timeouts) and the request answers 503.
What Cognito's own errors become is `errors`; what a user's email is to the pool is `records`.

AdminCreateUser is the one call that is not idempotent, so it is sent once, never retried by
the SDK: a retry after a lost answer would meet the user the first attempt created. It raises
`AnswerLostError` instead, and its caller looks the user up under the create's intent
(`app.services.user_creation`).
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from botocore.exceptions import BotoCoreError, ClientError

from app.core import metrics
from app.core.aws import AwsAdapter, AwsCallMetrics, aws_client
from app.core.deadline import within_deadline
from app.core.errors import DomainError, ServiceUnavailableError
from app.core.roles import Role
from app.schemas.user import PasswordResetOutcome
from app.services.cognito.errors import (
    AnswerLostError,
    DirectoryMisconfiguredError,
    DirectoryMismatchError,
    DirectoryTimeoutError,
    cognito_code,
    cognito_error,
    may_have_been_carried_out,
)
from app.services.cognito.records import NEVER_SIGNED_IN_STATUS, CognitoUser, UsernameMode

if TYPE_CHECKING:
    from mypy_boto3_cognito_idp import CognitoIdentityProviderClient

    from app.core.config import Settings

logger = logging.getLogger(__name__)

T = TypeVar("T")

COGNITO_CALLS: Final = AwsCallMetrics(metrics.COGNITO_CALLS, metrics.COGNITO_CALL_SECONDS)

UNDO_DEADLINE_SECONDS: Final = 5.0
# The largest page ListUsers, ListUsersInGroup and ListGroups return.
MAX_PAGE_SIZE: Final = 60
# How Cognito refuses a password reset for a user still on the temporary password.
_RESET_REFUSAL_CODES = frozenset({"NotAuthorizedException", "InvalidParameterException"})


class CognitoUserPool(AwsAdapter["CognitoIdentityProviderClient"]):
    """Admin operations on one Cognito user pool."""

    service_name = "cognito"
    unavailable_subject = "The user directory (Cognito)"
    timeout_error = DirectoryTimeoutError

    def __init__(
        self,
        client: CognitoIdentityProviderClient,
        user_pool_id: str,
        *,
        create_client: CognitoIdentityProviderClient | None = None,
        deadline_seconds: float = 8.0,
        username_mode: UsernameMode | None = None,
    ) -> None:
        # `create_client`: the same endpoint and timeouts, one attempt only: for
        # AdminCreateUser, and for every call of `without_sdk_retries()`.
        super().__init__(
            client, COGNITO_CALLS, once_client=create_client, deadline_seconds=deadline_seconds
        )
        self.user_pool_id = user_pool_id
        # Learnt from DescribeUserPool on first need (or from the startup check); a pool's
        # username configuration cannot change after it is created.
        self.username_mode = username_mode

    @classmethod
    def from_settings(cls, settings: Settings) -> CognitoUserPool:
        return cls(
            aws_client("cognito-idp", settings),
            settings.cognito_user_pool_id,
            create_client=aws_client("cognito-idp", settings, sdk_retries=False),
            deadline_seconds=settings.cognito_deadline_seconds,
        )

    def domain_error(self, operation: str, error: ClientError | BotoCoreError) -> DomainError:
        region = self._client.meta.region_name
        mapped = cognito_error(operation, error, self.user_pool_id, region)
        return mapped if mapped is not None else self.common_error(operation, error)

    async def _on_user(
        self, operation: str, method: Callable[..., T], username: str, **params: Any
    ) -> T:
        """An Admin* call on one user of the pool, addressed by `username`."""
        return await self.call(
            operation,
            functools.partial(method, UserPoolId=self.user_pool_id, Username=username, **params),
        )

    # -- the pool itself -------------------------------------------------------------------

    async def describe_pool(self) -> Any:
        """DescribeUserPool's `UserPool`; learns the username mode on the way."""
        response = await self.call(
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
            page = await self.call(
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
        response = await self.call(
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
        page = await self.call(
            "ListUsers",
            functools.partial(
                self._client.list_users,
                UserPoolId=self.user_pool_id,
                Limit=limit,
                **({"PaginationToken": token} if token else {}),
            ),
        )
        users = [CognitoUser.of(user, "Attributes") for user in page.get("Users", [])]
        return users, page.get("PaginationToken") or None

    async def group_members_page(
        self, role: Role, token: str | None, *, limit: int = MAX_PAGE_SIZE
    ) -> tuple[list[CognitoUser], str | None]:
        """One page of ListUsersInGroup for a role's group, and the next page's token."""
        page = await self.call(
            "ListUsersInGroup",
            functools.partial(
                self._client.list_users_in_group,
                UserPoolId=self.user_pool_id,
                GroupName=role.value,
                Limit=limit,
                **({"NextToken": token} if token else {}),
            ),
        )
        users = [CognitoUser.of(user, "Attributes") for user in page.get("Users", [])]
        return users, page.get("NextToken") or None

    # -- users ------------------------------------------------------------------------------

    async def username_for_create(self, email: str) -> str | None:
        """The username a create of `email` sends when this system names the user (a generated
        one, in an email-alias pool); None where the email itself is sent (Cognito names the
        user, or the email is the name). Known before the call, so an intent can record it."""
        username = await self._username_to_send(email)
        return None if username == email else username

    async def _username_to_send(self, email: str) -> str:
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

    async def create_user(self, email: str, username: str | None = None) -> CognitoUser:
        """Create the user and have Cognito email the invitation (a temporary password), under
        `username` when given (from `username_for_create`).

        Sent once. Raises `AnswerLostError` when Cognito may have created the user although no
        answer arrived (a read timeout, a dropped connection, a 5xx, the deadline).
        """
        # Outside the `try`: a failure here happens before anything was sent to create.
        username = username or await self._username_to_send(email)
        try:
            response = await self._on_user(
                "AdminCreateUser",
                self._once_client.admin_create_user,
                username,
                UserAttributes=[
                    {"Name": "email", "Value": email},
                    # The admin vouches for the address: a reset code can then be sent to
                    # it, and in an email-alias pool only a verified email is an alias.
                    {"Name": "email_verified", "Value": "true"},
                ],
                DesiredDeliveryMediums=["EMAIL"],
            )
        except DirectoryTimeoutError as error:
            raise AnswerLostError("AdminCreateUser abandoned at the deadline") from error
        except ServiceUnavailableError as error:
            if error.__cause__ is not None and may_have_been_carried_out(error.__cause__):
                raise AnswerLostError(type(error.__cause__).__name__) from error
            raise
        return CognitoUser.of(response["User"], "Attributes")

    async def find_user(self, username: str) -> CognitoUser | None:
        """The user, or None when the pool has no such user."""
        try:
            return await self.get_user(username)
        except DirectoryMismatchError as error:
            if cognito_code(error) == "UserNotFoundException":
                return None
            raise

    async def get_user(self, username: str) -> CognitoUser:
        response = await self._on_user("AdminGetUser", self._client.admin_get_user, username)
        return CognitoUser.of(response, "UserAttributes")

    async def delete_user(self, username: str) -> None:
        await self._on_user("AdminDeleteUser", self._client.admin_delete_user, username)

    async def delete_user_if_sub(self, username: str, sub: str) -> None:
        """Delete `username` only while it is still the user with id `sub`.

        The undo of a create: a concurrent request may have replaced the user under the same
        name (after a delete), and that one must survive.
        """
        with within_deadline(UNDO_DEADLINE_SECONDS, replacing=True):
            current = await self.find_user(username)
            if current is None or current.sub != sub:
                logger.warning("not deleting Cognito user %s: the name now belongs to another", sub)
                return
            await self.delete_user(username)

    async def groups_of(self, username: str) -> set[str]:
        response = await self._on_user(
            "AdminListGroupsForUser", self._client.admin_list_groups_for_user, username, Limit=60
        )
        return {str(group["GroupName"]) for group in response.get("Groups", [])}

    async def add_to_group(self, username: str, role: Role) -> None:
        await self._on_user(
            "AdminAddUserToGroup",
            self._client.admin_add_user_to_group,
            username,
            GroupName=role.value,
        )

    async def remove_from_group(self, username: str, role: Role) -> None:
        await self._on_user(
            "AdminRemoveUserFromGroup",
            self._client.admin_remove_user_from_group,
            username,
            GroupName=role.value,
        )

    async def set_enabled(self, username: str, enabled: bool) -> None:
        if enabled:
            await self.enable_user(username)
        else:
            await self.disable_user(username)

    async def disable_user(self, username: str) -> None:
        await self._on_user("AdminDisableUser", self._client.admin_disable_user, username)

    async def enable_user(self, username: str) -> None:
        await self._on_user("AdminEnableUser", self._client.admin_enable_user, username)

    async def sign_out_everywhere(self, username: str) -> None:
        """Revoke the user's refresh tokens, so no new access tokens are issued to them."""
        await self._on_user(
            "AdminUserGlobalSignOut", self._client.admin_user_global_sign_out, username
        )

    async def reset_password(self, username: str) -> PasswordResetOutcome:
        """Send a password-reset code; to a user who never signed in, re-send the invitation.

        Cognito refuses a reset while the user still has the temporary password
        (FORCE_CHANGE_PASSWORD); for them a fresh invitation is what "reset" means.
        """
        try:
            await self._on_user(
                "AdminResetUserPassword", self._client.admin_reset_user_password, username
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
        await self._on_user(
            "AdminCreateUser(RESEND)",
            self._client.admin_create_user,
            username,
            MessageAction="RESEND",
            DesiredDeliveryMediums=["EMAIL"],
        )
