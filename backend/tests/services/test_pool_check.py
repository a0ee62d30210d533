"""The pool check against moto pools: what it finds, and what the app logs at startup."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest

from app.core.roles import Role
from app.main import create_app
from app.services.cognito import CognitoUserPool, UsernameMode
from app.services.pool_check import PoolCheckUnavailable, check_pool
from tests.support.harness import make_settings
from tests.support.logs import recorded_logs
from tests.support.moto_cognito import (
    DUMMY_CREDENTIALS_ENV,
    POOL_KINDS,
    PoolKind,
    aws_error_response,
    cognito_client,
    create_pool,
    fail_operation,
    moto_cognito_server,
    silent_endpoint,
    unreachable_endpoint,
)

SPA_FLOWS = ["ALLOW_USER_SRP_AUTH", "ALLOW_REFRESH_TOKEN_AUTH", "ALLOW_USER_PASSWORD_AUTH"]


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_cognito_server() as url:
        yield url


@pytest.fixture(scope="module")
def client(endpoint: str) -> Any:
    return cognito_client(endpoint)


def spa_client(client: Any, pool_id: str, **overrides: Any) -> str:
    settings: dict[str, Any] = {"ExplicitAuthFlows": SPA_FLOWS, **overrides}
    created = client.create_user_pool_client(
        UserPoolId=pool_id, ClientName=f"spa-{uuid.uuid4().hex[:6]}", **settings
    )
    return str(created["UserPoolClient"]["ClientId"])


def adapter(endpoint: str, pool_id: str) -> CognitoUserPool:
    return CognitoUserPool(cognito_client(endpoint), pool_id)


@pytest.mark.parametrize("kind", POOL_KINDS)
async def test_a_pool_as_needed_passes_and_says_how_users_are_addressed(
    endpoint: str, client: Any, kind: PoolKind
) -> None:
    pool_id = create_pool(client, kind)
    client_id = spa_client(
        client, pool_id, AccessTokenValidity=30, TokenValidityUnits={"AccessToken": "minutes"}
    )
    cognito = adapter(endpoint, pool_id)
    check = await check_pool(cognito, client_id)
    assert check.problems == []
    assert check.ok
    expected = {
        "email_username": UsernameMode.EMAIL_IS_USERNAME_ATTRIBUTE,
        "email_alias": UsernameMode.EMAIL_IS_ALIAS,
        "plain": UsernameMode.EMAIL_IS_USERNAME,
    }[kind]
    assert check.username_mode is expected
    # The adapter learnt it too: the first create needs no DescribeUserPool of its own.
    assert cognito.username_mode is expected
    assert check.client_has_secret is False
    assert check.token_validity["AccessToken"] == "30 minutes"
    assert "passed" in check.summary()


async def test_missing_groups_are_named_with_how_to_create_them(endpoint: str, client: Any) -> None:
    pool_id = create_pool(client, "email_username", groups=False)
    client.create_group(UserPoolId=pool_id, GroupName=Role.ADMIN.value)
    client.create_group(UserPoolId=pool_id, GroupName="SOMETHING_ELSE")
    check = await check_pool(adapter(endpoint, pool_id), spa_client(client, pool_id))
    assert len(check.problems) == 3
    for missing in ("DISPATCHER", "OFFICER", "EXECUTIVE"):
        assert any(
            f"group {missing} is missing" in p and f"--group-name {missing}" in p
            for p in check.problems
        ), check.problems


def pool_open_to_sign_up(client: Any, admin_create_user_config: dict[str, Any] | None) -> str:
    """A pool as needed but for who may create users (None: Cognito's default, unset)."""
    settings: dict[str, Any] = {"UsernameAttributes": ["email"]}
    if admin_create_user_config is not None:
        settings["AdminCreateUserConfig"] = admin_create_user_config
    created = client.create_user_pool(PoolName=f"sign-up-{uuid.uuid4().hex[:6]}", **settings)
    pool_id = str(created["UserPool"]["Id"])
    for role in Role:
        client.create_group(UserPoolId=pool_id, GroupName=role.value)
    return pool_id


@pytest.mark.parametrize(
    "config", [{"AllowAdminCreateUserOnly": False}, None], ids=["false", "unset"]
)
async def test_self_sign_up_is_a_problem_saying_to_allow_admins_only(
    endpoint: str, client: Any, config: dict[str, Any] | None
) -> None:
    pool_id = pool_open_to_sign_up(client, config)
    check = await check_pool(adapter(endpoint, pool_id), spa_client(client, pool_id))
    assert not check.ok
    [problem] = check.problems
    assert "self sign-up is enabled" in problem
    assert "set AllowAdminCreateUserOnly to true" in problem


async def test_a_client_with_a_secret_is_a_problem_and_the_secret_is_never_shown(
    endpoint: str, client: Any
) -> None:
    pool_id = create_pool(client, "email_username")
    created = client.create_user_pool_client(
        UserPoolId=pool_id,
        ClientName="with-secret",
        GenerateSecret=True,
        ExplicitAuthFlows=SPA_FLOWS,
    )["UserPoolClient"]
    secret = created["ClientSecret"]
    check = await check_pool(adapter(endpoint, pool_id), created["ClientId"])
    assert check.client_has_secret is True
    [problem] = check.problems
    assert "client secret" in problem
    assert "GenerateSecret false" in problem
    assert secret not in repr(check.as_dict()) + check.summary()


async def test_a_client_the_spa_cannot_sign_in_with_is_a_problem(
    endpoint: str, client: Any
) -> None:
    pool_id = create_pool(client, "email_username")
    password_only = spa_client(client, pool_id, ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH"])
    check = await check_pool(adapter(endpoint, pool_id), password_only, hosted_ui=True)
    assert any("no way to sign in" in p for p in check.problems), check.problems
    assert any("COGNITO_DOMAIN" in p for p in check.problems), check.problems
    # The Hosted UI's code flow is a way in.
    hosted = spa_client(
        client,
        pool_id,
        ExplicitAuthFlows=["ALLOW_REFRESH_TOKEN_AUTH"],
        AllowedOAuthFlows=["code"],
        AllowedOAuthFlowsUserPoolClient=True,
        AllowedOAuthScopes=["openid"],
        CallbackURLs=["https://spa.example.gov/callback"],
        SupportedIdentityProviders=["COGNITO"],
    )
    assert (await check_pool(adapter(endpoint, pool_id), hosted, hosted_ui=True)).ok


async def test_an_unknown_client_or_pool_is_named(endpoint: str, client: Any) -> None:
    pool_id = create_pool(client, "email_username")
    check = await check_pool(adapter(endpoint, pool_id), "nosuchclient")
    [problem] = check.problems
    assert "COGNITO_APP_CLIENT_ID (nosuchclient) is not an app client" in problem

    check = await check_pool(adapter(endpoint, "ap-southeast-1_NoSuchPool"), "any")
    [problem] = check.problems
    assert "COGNITO_USER_POOL_ID (ap-southeast-1_NoSuchPool)" in problem
    assert check.username_mode is None


async def test_access_denied_names_the_action_and_the_policy(endpoint: str, client: Any) -> None:
    pool_id = create_pool(client, "email_alias")
    cognito = adapter(endpoint, pool_id)
    fail_operation(
        cognito, "ListGroups", lambda: aws_error_response(400, "AccessDeniedException", "no")
    )
    check = await check_pool(cognito, spa_client(client, pool_id))
    [problem] = check.problems
    assert "cognito-idp:ListGroups" in problem
    assert "deploy/iam/instance-role-policy.json" in problem


async def test_an_unreachable_cognito_cannot_be_checked() -> None:
    cognito = CognitoUserPool(cognito_client(unreachable_endpoint()), "ap-southeast-1_x")
    with pytest.raises(PoolCheckUnavailable):
        await check_pool(cognito, "any")


# -- at startup ------------------------------------------------------------------------------


def point_boto3_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER", endpoint)
    for name, value in DUMMY_CREDENTIALS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)


@dataclass
class Startup:
    check_lines: list[logging.LogRecord]  # what the pool check logged
    errors: list[logging.LogRecord]  # every ERROR line of the start
    served_before_the_check: bool


async def start_app(database_url: str, pool_id: str, client_id: str, **overrides: Any) -> Startup:
    """Start the app with the check on; wait until the check has said something."""
    settings = make_settings(
        database_url,
        cognito_user_pool_id=pool_id,
        cognito_app_client_id=client_id,
        cognito_pool_check=True,
        **overrides,
    )
    app = create_app(settings)

    def check_lines() -> list[logging.LogRecord]:
        return [r for r in logs.records if r.name == "app.services.pool_check"]

    with recorded_logs() as logs:
        async with app.router.lifespan_context(app):
            served_before_the_check = not check_lines()
            async with asyncio.timeout(15):
                while not check_lines():  # noqa: ASYNC110 - a log, not an event
                    await asyncio.sleep(0.05)
    return Startup(check_lines(), logs.at_least(logging.ERROR), served_before_the_check)


async def test_startup_logs_a_passed_check_once_at_info(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, client: Any, fresh_database_url: str
) -> None:
    point_boto3_at(monkeypatch, endpoint)
    pool_id = create_pool(client, "email_alias")
    [line] = (await start_app(fresh_database_url, pool_id, spa_client(client, pool_id))).check_lines
    assert line.levelno == logging.INFO
    assert "cognito pool check passed" in line.getMessage()
    assert "email as alias" in line.getMessage()


async def test_startup_logs_every_problem_once_at_error(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, client: Any, fresh_database_url: str
) -> None:
    point_boto3_at(monkeypatch, endpoint)
    pool_id = create_pool(client, "email_username", groups=False)
    started = await start_app(fresh_database_url, pool_id, "nosuchclient")
    [line] = started.check_lines
    assert line.levelno == logging.ERROR
    message = line.getMessage()
    for named in ("group ADMIN", "group OFFICER", "COGNITO_APP_CLIENT_ID (nosuchclient)"):
        assert named in message
    # Said once: the adapter does not log the same misconfiguration again.
    assert started.errors == [line]


async def test_startup_logs_self_sign_up_at_error(
    monkeypatch: pytest.MonkeyPatch, endpoint: str, client: Any, fresh_database_url: str
) -> None:
    point_boto3_at(monkeypatch, endpoint)
    pool_id = pool_open_to_sign_up(client, {"AllowAdminCreateUserOnly": False})
    started = await start_app(fresh_database_url, pool_id, spa_client(client, pool_id))
    [line] = started.check_lines
    assert line.levelno == logging.ERROR
    assert "self sign-up is enabled" in line.getMessage()
    assert "AllowAdminCreateUserOnly to true" in line.getMessage()


async def test_startup_does_not_wait_for_a_cognito_that_does_not_answer(
    monkeypatch: pytest.MonkeyPatch, fresh_database_url: str
) -> None:
    with silent_endpoint() as silent:
        point_boto3_at(monkeypatch, silent)
        started = await start_app(
            fresh_database_url,
            "ap-southeast-1_Silent",
            "any",
            cognito_deadline_seconds=3.0,
            aws_read_timeout_seconds=30.0,
        )
    [line] = started.check_lines
    assert started.served_before_the_check
    assert line.levelno == logging.WARNING
    assert "could not run" in line.getMessage()
    assert "--check-pool" in line.getMessage()
