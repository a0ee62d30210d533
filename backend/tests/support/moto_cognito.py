"""A Cognito user pool on moto's server, over real HTTP, and helpers to inspect and break it.

A pool is one of three kinds (`PoolKind`), as a real pool's sign-in configuration makes it:
email as username (`UsernameAttributes: [email]`), email as an alias (`AliasAttributes:
[email]`), or neither (the email is a plain username).

The server is the emulator `make run` runs too (`devtools.cognito_emulator`), patched where
moto and the real Cognito differ, so tests and local runs meet the same behaviour.
"""

from __future__ import annotations

import json
import socket
import threading
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
from moto.core import DEFAULT_ACCOUNT_ID

from app.core.roles import Role
from app.services.cognito import CognitoUserPool
from devtools.cognito_emulator import emulator_server
from tests.support.jwt_tokens import TEST_REGION
from tests.support.net import free_port

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
        user = backend.admin_get_user(self.user_pool_id, username)
        user.create_date -= by

    def signs_in(self, username: str, password: str) -> bool:
        """Whether `password` signs the user in (or, for a temporary password, gets the
        NEW_PASSWORD_REQUIRED challenge that follows a correct one)."""
        client_id = self.client.create_user_pool_client(
            UserPoolId=self.user_pool_id,
            ClientName="sign-in-check",
            ExplicitAuthFlows=["ALLOW_ADMIN_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
        )["UserPoolClient"]["ClientId"]
        try:
            self.client.admin_initiate_auth(
                UserPoolId=self.user_pool_id,
                ClientId=client_id,
                AuthFlow="ADMIN_USER_PASSWORD_AUTH",
                AuthParameters={"USERNAME": username, "PASSWORD": password},
            )
        except (
            self.client.exceptions.NotAuthorizedException,
            self.client.exceptions.UserNotFoundException,
        ):
            return False
        return True

    def groups_of(self, username: str) -> set[str]:
        response = self.client.admin_list_groups_for_user(
            UserPoolId=self.user_pool_id, Username=username
        )
        return {group["GroupName"] for group in response["Groups"]}

    def users_with_email(self, email: str) -> list[dict[str, Any]]:
        response = self.client.list_users(UserPoolId=self.user_pool_id, Filter=f'email = "{email}"')
        users: list[dict[str, Any]] = response["Users"]
        return users

    def create_user(
        self,
        email: str,
        *,
        role: Role | None = None,
        confirmed: bool = False,
        password: str | None = None,
    ) -> str:
        """A Cognito user made directly, as if by someone else (in the console, with the
        temporary `password` they chose, when given); returns its sub."""
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
            **({"TemporaryPassword": password} if password else {}),
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
        PoolName=f"one-system-test-{uuid.uuid4().hex[:8]}",
        AdminCreateUserConfig={"AllowAdminCreateUserOnly": True},
        **_POOL_SIGN_IN[kind],
    )
    pool_id: str = pool["UserPool"]["Id"]
    if groups:
        for role in Role:
            client.create_group(UserPoolId=pool_id, GroupName=role.value)
    return pool_id


@contextmanager
def running_moto_cognito(kind: PoolKind = "plain") -> Iterator[MotoCognito]:
    """A moto server on loopback with a fresh user pool of `kind` and one group per role."""
    with emulator_server() as endpoint_url:
        client = cognito_client(endpoint_url)
        yield MotoCognito(endpoint_url, create_pool(client, kind), client, kind)


@contextmanager
def moto_cognito_server() -> Iterator[str]:
    """A moto server on loopback, patched like real Cognito, with no pool yet; its URL."""
    with emulator_server() as endpoint_url:
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
        id(adapter._once_client): adapter._once_client,
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
