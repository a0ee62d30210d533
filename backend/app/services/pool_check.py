"""Is the user pool as this system needs it? Checked at startup (logged once) and on demand.

Three reads, no change: DescribeUserPool (how a user's email is addressed: `UsernameMode`;
users created by admins only, never by self sign-up),
ListGroups (a group per role: ADMIN, DISPATCHER, OFFICER, EXECUTIVE) and DescribeUserPoolClient
(the SPA's app client: a flow the browser can sign in with, and no client secret, which a
browser cannot keep). Each problem found names what is wrong and what to change.

At startup the check runs as a background task (`start_pool_check`), bounded by the Cognito
deadline, so an unreachable or misconfigured Cognito never holds up startup; requests that need
Cognito meanwhile answer 503 `directory_misconfigured` on a misconfiguration anyway. On demand:
`python -m app.cli.reconcile --check-pool`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from app.core.deadline import within_deadline
from app.core.errors import DomainError
from app.services.cognito import (
    ROLE_GROUPS,
    CognitoUserPool,
    DirectoryMisconfiguredError,
    UsernameMode,
    cognito_code,
    reporting_misconfiguration_myself,
)

if TYPE_CHECKING:
    from app.core.config import Settings

logger = logging.getLogger(__name__)

# Cognito's defaults for an app client created without ExplicitAuthFlows.
DEFAULT_AUTH_FLOWS: Final = frozenset(
    {"ALLOW_USER_SRP_AUTH", "ALLOW_CUSTOM_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"}
)
# Token validity units when TokenValidityUnits does not say (Cognito's defaults).
_DEFAULT_UNITS: Final = {"AccessToken": "hours", "IdToken": "hours", "RefreshToken": "days"}
_DEFAULT_VALIDITY: Final = {"AccessToken": 1, "IdToken": 1, "RefreshToken": 30}
_VALIDITY_KEYS: Final = {
    "AccessToken": "AccessTokenValidity",
    "IdToken": "IdTokenValidity",
    "RefreshToken": "RefreshTokenValidity",
}


class PoolCheckUnavailable(Exception):
    """Cognito could not be asked (unreachable, throttled, too slow): nothing is known."""


@dataclass
class PoolCheck:
    user_pool_id: str
    app_client_id: str
    username_mode: UsernameMode | None = None
    # What is wrong, each with what to change; empty when the pool is as needed.
    problems: list[str] = field(default_factory=list)
    # Worth knowing, not wrong.
    notes: list[str] = field(default_factory=list)
    auth_flows: list[str] = field(default_factory=list)
    oauth_flows: list[str] = field(default_factory=list)
    client_has_secret: bool | None = None
    token_validity: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "user_pool_id": self.user_pool_id,
            "app_client_id": self.app_client_id,
            "username_mode": self.username_mode.value if self.username_mode else None,
            "problems": self.problems,
            "notes": self.notes,
            "auth_flows": self.auth_flows,
            "oauth_flows": self.oauth_flows,
            "client_has_secret": self.client_has_secret,
            "token_validity": self.token_validity,
        }

    def summary(self) -> str:
        """One line for the log."""
        if not self.ok:
            numbered = "; ".join(f"{n}) {p}" for n, p in enumerate(self.problems, 1))
            return (
                f"cognito pool check: user pool {self.user_pool_id} is not as this system "
                f"needs it ({len(self.problems)} problem(s)): {numbered}"
            )
        flows = ", ".join(self.auth_flows + [f"oauth:{f}" for f in self.oauth_flows])
        line = (
            f"cognito pool check passed: user pool {self.user_pool_id} "
            f"({self.username_mode.value if self.username_mode else 'unknown'}), groups "
            f"{', '.join(ROLE_GROUPS)} present, app client {self.app_client_id} without a "
            f"secret (flows: {flows})"
        )
        if self.notes:
            line += "; notes: " + "; ".join(self.notes)
        return line


def _unavailable(error: DomainError) -> PoolCheckUnavailable:
    return PoolCheckUnavailable(f"{error.code}: {error.detail}")


async def _check_pool(check: PoolCheck, cognito: CognitoUserPool) -> bool:
    """The username configuration; False when nothing else can be checked."""
    try:
        pool = await cognito.describe_pool()
    except DirectoryMisconfiguredError as error:
        check.problems.append(error.hint)
        return False
    check.username_mode = UsernameMode.of(pool)
    if check.username_mode is UsernameMode.PHONE_ONLY:
        check.problems.append(
            "users sign in by phone number only (UsernameAttributes: [phone_number]); this "
            "system creates users from their email: use a pool with email as username or as "
            "an alias (a pool's sign-in attributes cannot be changed after it is created)"
        )
    # Absent means Cognito's default, false: anyone may call SignUp with the public client id.
    if not (pool.get("AdminCreateUserConfig") or {}).get("AllowAdminCreateUserOnly"):
        check.problems.append(
            "self sign-up is enabled (AdminCreateUserConfig.AllowAdminCreateUserOnly is false): "
            "anyone can sign up with the SPA's client id, and so pre-register a staff email "
            "before an admin creates that user: set AllowAdminCreateUserOnly to true (console: "
            "Sign-up, self-registration off; with UpdateUserPool pass the pool's whole current "
            "configuration, as every setting left out is reset to its default)"
        )
    if (pool.get("UsernameConfiguration") or {}).get("CaseSensitive"):
        check.notes.append(
            "usernames are case-sensitive; this system stores and sends emails in lower case"
        )
    return True


async def _check_groups(check: PoolCheck, cognito: CognitoUserPool) -> None:
    try:
        groups = await cognito.group_names()
    except DirectoryMisconfiguredError as error:
        check.problems.append(error.hint)
        return
    for missing in (group for group in ROLE_GROUPS if group not in groups):
        check.problems.append(
            f"the group {missing} is missing: create it (aws cognito-idp create-group "
            f"--user-pool-id {check.user_pool_id} --group-name {missing})"
        )


def _validity(client: Any) -> dict[str, str]:
    units = {**_DEFAULT_UNITS, **(client.get("TokenValidityUnits") or {})}
    return {
        token: f"{client.get(key) or _DEFAULT_VALIDITY[token]} {units[token]}"
        for token, key in _VALIDITY_KEYS.items()
    }


async def _check_client(check: PoolCheck, cognito: CognitoUserPool, hosted_ui: bool) -> None:
    try:
        client = await cognito.describe_client(check.app_client_id)
    except DirectoryMisconfiguredError as error:
        if cognito_code(error) != "ResourceNotFoundException":
            check.problems.append(error.hint)
            return
        check.problems.append(
            f"COGNITO_APP_CLIENT_ID ({check.app_client_id}) is not an app client of user pool "
            f"{check.user_pool_id}: set it to the id of the SPA's app client"
        )
        return
    # Only whether it has one: the secret itself is dropped here and never shown.
    check.client_has_secret = bool(client.pop("ClientSecret", None))
    flows = set(client.get("ExplicitAuthFlows") or DEFAULT_AUTH_FLOWS)
    oauth = set(client.get("AllowedOAuthFlows") or [])
    if not client.get("AllowedOAuthFlowsUserPoolClient"):
        oauth = set()
    check.auth_flows, check.oauth_flows = sorted(flows), sorted(oauth)
    check.token_validity = _validity(client)
    if check.client_has_secret:
        check.problems.append(
            f"the app client {check.app_client_id} has a client secret, which a browser SPA "
            "cannot keep: create an app client without one (GenerateSecret false) and set "
            "COGNITO_APP_CLIENT_ID to it"
        )
    if "ALLOW_USER_SRP_AUTH" not in flows and "code" not in oauth:
        check.problems.append(
            f"the app client {check.app_client_id} offers the SPA no way to sign in: allow "
            "ALLOW_USER_SRP_AUTH, or the OAuth authorization code flow (with PKCE) on the "
            "Hosted UI"
        )
    if hosted_ui and "code" not in oauth:
        check.problems.append(
            "COGNITO_DOMAIN is set, so Swagger UI signs in through the Hosted UI, but the app "
            f"client {check.app_client_id} does not allow the OAuth authorization code flow"
        )
    if "implicit" in oauth:
        check.notes.append(
            "the implicit OAuth flow is allowed; it returns tokens in the URL: prefer the code "
            "flow with PKCE and turn it off"
        )
    if "ALLOW_REFRESH_TOKEN_AUTH" not in flows:
        check.notes.append("ALLOW_REFRESH_TOKEN_AUTH is off: users sign in again every hour")
    if "ALLOW_USER_PASSWORD_AUTH" not in flows:
        check.notes.append(
            "ALLOW_USER_PASSWORD_AUTH is off: the token CLI (app.cli.token) cannot sign in "
            "with this client, the SPA is unaffected"
        )


async def check_pool(
    cognito: CognitoUserPool, app_client_id: str, *, hosted_ui: bool = False
) -> PoolCheck:
    """The pool as this system needs it; raises `PoolCheckUnavailable` if Cognito cannot say."""
    check = PoolCheck(cognito.user_pool_id, app_client_id)
    try:
        with reporting_misconfiguration_myself():
            if await _check_pool(check, cognito):
                await _check_groups(check, cognito)
                await _check_client(check, cognito, hosted_ui)
    except DirectoryMisconfiguredError as error:
        check.problems.append(error.hint)
    except DomainError as error:
        raise _unavailable(error) from error
    return check


async def check_configured_pool(cognito: CognitoUserPool, settings: Settings) -> PoolCheck:
    """`check_pool` of the pool and app client `settings` name, within the Cognito deadline."""
    with within_deadline(settings.cognito_deadline_seconds):
        return await check_pool(
            cognito, settings.cognito_app_client_id, hosted_ui=settings.cognito_domain is not None
        )


async def log_pool_check(cognito: CognitoUserPool, settings: Settings) -> None:
    """Check the pool within the Cognito deadline and say what was found, once."""
    try:
        check = await check_configured_pool(cognito, settings)
    except PoolCheckUnavailable as error:
        logger.warning(
            "cognito pool check could not run (%s); it is not retried: run "
            "`python -m app.cli.reconcile --check-pool` once Cognito answers",
            error,
        )
        return
    if check.ok:
        logger.info("%s", check.summary())
    else:
        logger.error("%s", check.summary())


def start_pool_check(cognito: CognitoUserPool, settings: Settings) -> asyncio.Task[None] | None:
    """The startup check as a background task (None when COGNITO_POOL_CHECK is off)."""
    if not settings.cognito_pool_check:
        return None
    return asyncio.create_task(log_pool_check(cognito, settings), name="cognito-pool-check")
