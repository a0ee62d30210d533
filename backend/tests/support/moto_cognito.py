"""A Cognito user pool on moto's server, over real HTTP, and helpers to inspect and break it.

A pool is one of three kinds (`PoolKind`), as a real pool's sign-in configuration makes it:
email as username (`UsernameAttributes: [email]`), email as an alias (`AliasAttributes:
[email]`), or neither (the email is a plain username).

moto's server emulates Cognito's admin API closely enough for the user service, with these
differences from the real service that matter here and are patched while a server runs
(`_cognito_fidelity_patches`):
- AdminCreateUser checks the username and then stores the user in two steps; with concurrent
  requests (the server is threaded) two creates of one name can both succeed. Real Cognito's
  username uniqueness is atomic, so the patch serialises creates.
- AdminCreateUser with MessageAction=RESEND replaces the user with a new one (new sub, no
  attributes, no groups); real Cognito keeps the user and only sends a new temporary password.
- moto does not emulate email-alias pools at all. Real Cognito, in a pool with
  `AliasAttributes: [email]`:
  - refuses an email-shaped username in AdminCreateUser with InvalidParameterException
    "Username cannot be of email format, since user pool is configured for email alias.";
  - refuses AdminCreateUser with AliasExistsException when `email_verified` is true and
    another user already has that verified email (ForceAliasCreation defaults to false);
  - accepts a user's verified email alias wherever an admin call takes a Username ("it can
    be any of their alias attributes", the AdminGetUser reference); an unverified email is
    no alias.
  The patches make moto do the same; moto's email-as-username pools already behave as real
  ones (the real username is a UUID equal to `sub`, and the email is accepted).
- moto stamps every token with `auth_time` = now, refreshed ones too. Real Cognito's
  `auth_time` is when the user authenticated: tokens minted from a refresh token keep the
  `auth_time` of the sign-in that issued it (only `iat` and `exp` are new). The patch remembers
  each sign-in's time by its `origin_jti` and stamps it on every token of that session.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Literal

import boto3
from botocore.awsrequest import AWSResponse, HTTPHeaders
from botocore.config import Config
from moto.backends import get_backend
from moto.cognitoidp.exceptions import AliasExistsException, InvalidParameterException
from moto.cognitoidp.models import CognitoIdpBackend, CognitoIdpUser, CognitoIdpUserPool
from moto.cognitoidp.utils import flatten_attrs, validate_username_format
from moto.core import DEFAULT_ACCOUNT_ID

from app.core.roles import Role
from app.services.cognito import CognitoUserPool
from tests.support.jwt_tokens import TEST_REGION
from tests.support.net import free_port
from tests.support.servers import moto_server

if TYPE_CHECKING:
    from mypy_boto3_cognito_idp import CognitoIdentityProviderClient

DUMMY_CREDENTIALS_ENV: Final = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
}


def cognito_client(endpoint_url: str, *, max_attempts: int = 1) -> CognitoIdentityProviderClient:
    """A client for `endpoint_url` with dummy credentials and bounded waits."""
    return boto3.client(
        "cognito-idp",
        region_name=TEST_REGION,
        endpoint_url=endpoint_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        aws_session_token="testing",
        config=Config(
            connect_timeout=2,
            read_timeout=5,
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
        ),
    )


PoolKind = Literal["email_username", "email_alias", "plain"]
POOL_KINDS: Final[tuple[PoolKind, ...]] = ("email_username", "email_alias", "plain")
_POOL_SIGN_IN: Final[dict[PoolKind, dict[str, list[str]]]] = {
    "email_username": {"UsernameAttributes": ["email"]},
    "email_alias": {"AliasAttributes": ["email"]},
    "plain": {},
}

_patch_lock = threading.Lock()
_patch_users = 0
_original_admin_create_user = CognitoIdpBackend.admin_create_user
_original_get_user = CognitoIdpUserPool._get_user
_original_create_refresh_token = CognitoIdpUserPool.create_refresh_token
_original_create_jwt = CognitoIdpUserPool.create_jwt


def _email_is_alias(pool: CognitoIdpUserPool) -> bool:
    return "email" in (pool.extended_config.get("AliasAttributes") or [])


def _verified_email_owner(pool: CognitoIdpUserPool, email: str) -> CognitoIdpUser | None:
    for user in pool.users.values():
        lookup = user.attribute_lookup
        if lookup.get("email") == email and lookup.get("email_verified") == "true":
            return user
    return None


def _get_user_like_cognito(self: CognitoIdpUserPool, username: str) -> CognitoIdpUser | None:
    user: CognitoIdpUser | None = _original_get_user(self, username)
    if user is None and _email_is_alias(self):
        user = _verified_email_owner(self, username)
    return user


def _admin_create_user_like_cognito(
    self: CognitoIdpBackend,
    user_pool_id: str,
    username: str,
    message_action: str,
    temporary_password: str,
    attributes: list[dict[str, str]],
) -> Any:
    with _patch_lock:
        if message_action == "RESEND":
            return self.admin_get_user(user_pool_id, username)
        pool = self.describe_user_pool(user_pool_id)
        if _email_is_alias(pool):
            if validate_username_format(username, _format="email"):
                raise InvalidParameterException(
                    "Username cannot be of email format, since user pool is configured for "
                    "email alias."
                )
            wanted = flatten_attrs(attributes or [])
            if (
                wanted.get("email_verified") == "true"
                and _verified_email_owner(pool, wanted.get("email", "")) is not None
            ):
                raise AliasExistsException()
        return _original_admin_create_user(
            self, user_pool_id, username, message_action, temporary_password, attributes
        )


def _session_auth_times(pool: CognitoIdpUserPool) -> dict[str, int]:
    """The sign-in time of each session of `pool`, by the `origin_jti` its tokens carry."""
    times: dict[str, int] = pool.__dict__.setdefault("_session_auth_times", {})
    return times


def _create_refresh_token_remembering_auth_time(
    self: CognitoIdpUserPool, client_id: str, username: str
) -> tuple[str, str]:
    # A refresh token is made at each sign-in (never at a refresh): the session begins here.
    refresh_token, origin_jti = _original_create_refresh_token(self, client_id, username)
    _session_auth_times(self)[origin_jti] = int(time.time())
    return refresh_token, origin_jti


def _create_jwt_keeping_auth_time(
    self: CognitoIdpUserPool,
    client_id: str,
    username: str,
    token_use: str,
    expires_in: int = 60 * 60,
    extra_data: dict[str, Any] | None = None,
) -> tuple[str, int]:
    origin_jti = (extra_data or {}).get("origin_jti")
    auth_time = _session_auth_times(self).get(origin_jti) if origin_jti else None
    if auth_time is not None:
        extra_data = {**(extra_data or {}), "auth_time": auth_time}
    token: tuple[str, int] = _original_create_jwt(
        self, client_id, username, token_use, expires_in, extra_data
    )
    return token


_PATCHES: Final = (
    (CognitoIdpBackend, "admin_create_user", _admin_create_user_like_cognito),
    (CognitoIdpUserPool, "_get_user", _get_user_like_cognito),
    (CognitoIdpUserPool, "create_refresh_token", _create_refresh_token_remembering_auth_time),
    (CognitoIdpUserPool, "create_jwt", _create_jwt_keeping_auth_time),
)
_ORIGINALS: Final = tuple(getattr(owner, name) for owner, name, _ in _PATCHES)


@contextmanager
def _cognito_fidelity_patches() -> Iterator[None]:
    global _patch_users
    with _patch_lock:
        _patch_users += 1
        for owner, name, patched in _PATCHES:
            setattr(owner, name, patched)
    try:
        yield
    finally:
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0:
                for (patched_class, name, _), original in zip(_PATCHES, _ORIGINALS, strict=True):
                    setattr(patched_class, name, original)


class _Body:
    def __init__(self, content: bytes) -> None:
        self._content = content

    def stream(self, **_: object) -> Iterator[bytes]:
        yield self._content


def aws_error_response(status: int, code: str, message: str) -> AWSResponse:
    """An HTTP response as Cognito sends it for an error (JSON protocol)."""
    body = json.dumps({"__type": code, "message": message}).encode()
    headers = HTTPHeaders()
    headers["x-amzn-errortype"] = code
    headers["content-type"] = "application/x-amz-json-1.1"
    return AWSResponse("https://cognito-idp.invalid/", status, headers, _Body(body))


@dataclass
class MotoCognito:
    endpoint_url: str
    user_pool_id: str
    client: Any  # a boto3 cognito-idp client on the moto server, for setup and assertions
    kind: PoolKind = "plain"

    def adapter(self, *, max_attempts: int = 1) -> CognitoUserPool:
        """An adapter with clients of its own, so hooks a test adds stay in that test.

        AdminCreateUser goes through a client of one attempt, as in production.
        """
        return CognitoUserPool(
            self.new_client(max_attempts=max_attempts),
            self.user_pool_id,
            create_client=self.new_client(max_attempts=1),
        )

    def new_client(self, *, max_attempts: int = 1) -> CognitoIdentityProviderClient:
        return cognito_client(self.endpoint_url, max_attempts=max_attempts)

    def find(self, username: str) -> dict[str, Any] | None:
        try:
            user: dict[str, Any] = self.client.admin_get_user(
                UserPoolId=self.user_pool_id, Username=username
            )
        except self.client.exceptions.UserNotFoundException:
            return None
        user["attributes"] = {a["Name"]: a["Value"] for a in user.get("UserAttributes", [])}
        return user

    def make_older(self, username: str, by: timedelta) -> None:
        """Move the user's creation back by `by`, as time passing would (the server runs in
        this process, so its pool is at hand)."""
        backend: Any = get_backend("cognito-idp")[DEFAULT_ACCOUNT_ID][TEST_REGION]
        user = backend.user_pools[self.user_pool_id]._get_user(username)
        user.create_date -= by

    def groups_of(self, username: str) -> set[str]:
        response = self.client.admin_list_groups_for_user(
            UserPoolId=self.user_pool_id, Username=username
        )
        return {group["GroupName"] for group in response["Groups"]}

    def users_with_email(self, email: str) -> list[dict[str, Any]]:
        response = self.client.list_users(UserPoolId=self.user_pool_id, Filter=f'email = "{email}"')
        users: list[dict[str, Any]] = response["Users"]
        return users

    def create_user(self, email: str, *, role: Role | None = None, confirmed: bool = False) -> str:
        """A Cognito user made directly, as if by someone else; returns its sub."""
        # An email-alias pool refuses an email-shaped username, as it does the service's.
        username = str(uuid.uuid4()) if self.kind == "email_alias" else email
        response = self.client.admin_create_user(
            UserPoolId=self.user_pool_id,
            Username=username,
            UserAttributes=[
                {"Name": "email", "Value": email},
                {"Name": "email_verified", "Value": "true"},
            ],
            MessageAction="SUPPRESS",
        )
        if role is not None:
            self.client.admin_add_user_to_group(
                UserPoolId=self.user_pool_id, Username=email, GroupName=role.value
            )
        if confirmed:
            self.client.admin_set_user_password(
                UserPoolId=self.user_pool_id,
                Username=email,
                Password="Correct-Horse-9!",
                Permanent=True,
            )
        attributes = {a["Name"]: a["Value"] for a in response["User"]["Attributes"]}
        return str(attributes["sub"])


def create_pool(client: Any, kind: PoolKind = "plain", *, groups: bool = True) -> str:
    """A fresh user pool of `kind` (with one group per role unless not `groups`); its id."""
    pool = client.create_user_pool(
        PoolName=f"one-system-test-{uuid.uuid4().hex[:8]}", **_POOL_SIGN_IN[kind]
    )
    pool_id: str = pool["UserPool"]["Id"]
    if groups:
        for role in Role:
            client.create_group(UserPoolId=pool_id, GroupName=role.value)
    return pool_id


@contextmanager
def running_moto_cognito(kind: PoolKind = "plain") -> Iterator[MotoCognito]:
    """A moto server on loopback with a fresh user pool of `kind` and one group per role."""
    with moto_server() as endpoint_url, _cognito_fidelity_patches():
        client = cognito_client(endpoint_url)
        yield MotoCognito(endpoint_url, create_pool(client, kind), client, kind)


@contextmanager
def moto_cognito_server() -> Iterator[str]:
    """A moto server on loopback, patched like real Cognito, with no pool yet; its URL."""
    with moto_server() as endpoint_url, _cognito_fidelity_patches():
        yield endpoint_url


def fail_operation(
    adapter: CognitoUserPool,
    operation: str,
    response: Callable[[], AWSResponse],
    *,
    times: int | None = None,
) -> list[int]:
    """Make `operation` calls of `adapter` get `response` instead of reaching moto.

    The first `times` calls (all when None) are intercepted; later ones reach moto. The fake
    answer goes through botocore's parsing and retries, like a real one. Returns a list that
    grows by one per intercepted call.
    """
    calls: list[int] = []

    def intercept(**_: object) -> AWSResponse | None:
        if times is not None and len(calls) >= times:
            return None
        calls.append(1)
        return response()

    for client in {
        id(adapter._client): adapter._client,
        id(adapter._create_client): adapter._create_client,
    }.values():
        client.meta.events.register(f"before-send.cognito-idp.{operation}", intercept)  # type: ignore[arg-type]
    return calls


def unreachable_endpoint() -> str:
    """An endpoint URL on a loopback port nothing listens on (connection refused)."""
    return f"http://127.0.0.1:{free_port()}"


@contextmanager
def silent_endpoint() -> Iterator[str]:
    """An endpoint that accepts connections and never answers (read timeouts)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            accepted.append(connection)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for connection in accepted:
            connection.close()
        listener.close()
