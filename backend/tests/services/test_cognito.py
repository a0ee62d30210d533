"""The Cognito adapter against moto's server: calls, and every error turned into a domain error."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from prometheus_client import REGISTRY

from app.core.deadline import within_deadline
from app.core.errors import (
    ConflictError,
    InvalidInputError,
    ServiceUnavailableError,
    TooManyRequestsError,
)
from app.core.roles import Role
from app.schemas.user import PasswordResetOutcome
from app.services.cognito import (
    AnswerLostError,
    CognitoUserPool,
    DirectoryMisconfiguredError,
    DirectoryMismatchError,
    DirectoryTimeoutError,
    EmailTakenError,
    UsernameMode,
)
from tests.support.harness import make_settings
from tests.support.moto_cognito import (
    DUMMY_CREDENTIALS_ENV,
    MotoCognito,
    aws_error_response,
    cognito_client,
    create_pool,
    fail_operation,
    running_moto_cognito,
    silent_endpoint,
    unreachable_endpoint,
)

UNUSED_DATABASE = "postgresql+asyncpg://unused:unused@127.0.0.1:1/unused"


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoCognito]:
    with running_moto_cognito() as running:
        yield running


def new_email() -> str:
    return f"user-{uuid.uuid4().hex[:12]}@example.gov"


async def test_create_user_invites_by_email_and_returns_the_sub(moto: MotoCognito) -> None:
    email = new_email()
    created = await moto.adapter().create_user(email)
    stored = moto.find(email)
    assert stored is not None
    assert created.sub == stored["attributes"]["sub"]
    assert stored["attributes"]["email"] == email
    assert stored["attributes"]["email_verified"] == "true"
    assert stored["UserStatus"] == "FORCE_CHANGE_PASSWORD"


async def test_groups_follow_add_and_remove(moto: MotoCognito) -> None:
    email = new_email()
    cognito = moto.adapter()
    await cognito.create_user(email)
    await cognito.add_to_group(email, Role.OFFICER)
    assert moto.groups_of(email) == {"OFFICER"}
    await cognito.add_to_group(email, Role.ADMIN)
    await cognito.remove_from_group(email, Role.OFFICER)
    assert moto.groups_of(email) == {"ADMIN"}


async def test_disable_and_enable(moto: MotoCognito) -> None:
    email = new_email()
    cognito = moto.adapter()
    await cognito.create_user(email)
    await cognito.disable_user(email)
    await cognito.sign_out_everywhere(email)
    assert moto.find(email)["Enabled"] is False  # type: ignore[index]
    await cognito.enable_user(email)
    assert moto.find(email)["Enabled"] is True  # type: ignore[index]


async def test_existing_username_is_a_conflict(moto: MotoCognito) -> None:
    email = new_email()
    moto.create_user(email)
    with pytest.raises(EmailTakenError) as raised:
        await moto.adapter().create_user(email)
    assert isinstance(raised.value, ConflictError)
    assert raised.value.status_code == 409


async def test_unknown_user_means_the_sides_disagree(moto: MotoCognito) -> None:
    with pytest.raises(DirectoryMismatchError) as raised:
        await moto.adapter().disable_user(new_email())
    assert raised.value.status_code == 409
    assert "not in the user directory" in raised.value.detail


async def test_delete_if_sub_spares_a_user_that_replaced_ours(moto: MotoCognito) -> None:
    email = new_email()
    moto.create_user(email)
    await moto.adapter().delete_user_if_sub(email, sub=str(uuid.uuid4()))
    assert moto.find(email) is not None


@pytest.mark.parametrize("code", ["InvalidParameterException", "InvalidPasswordException"])
async def test_invalid_parameter_is_422_with_cognitos_message(moto: MotoCognito, code: str) -> None:
    cognito = moto.adapter()
    fail_operation(
        cognito, "AdminCreateUser", lambda: aws_error_response(400, code, "Invalid email format.")
    )
    with pytest.raises(InvalidInputError) as raised:
        await cognito.create_user(new_email())
    assert raised.value.status_code == 422
    assert raised.value.detail == "Cognito rejected the request: Invalid email format."


@pytest.mark.parametrize(
    "code", ["TooManyRequestsException", "ThrottlingException", "LimitExceededException"]
)
async def test_throttling_is_429_with_retry_after(moto: MotoCognito, code: str) -> None:
    cognito = moto.adapter()
    fail_operation(cognito, "AdminAddUserToGroup", lambda: aws_error_response(400, code, "slow"))
    with pytest.raises(TooManyRequestsError) as raised:
        await cognito.add_to_group(new_email(), Role.ADMIN)
    assert raised.value.status_code == 429
    assert int(raised.value.headers["Retry-After"]) > 0


async def test_server_error_is_503_after_the_bounded_retries(moto: MotoCognito) -> None:
    cognito = moto.adapter(max_attempts=2)
    calls = fail_operation(
        cognito,
        "AdminDisableUser",
        lambda: aws_error_response(500, "InternalErrorException", "oops"),
    )
    with pytest.raises(ServiceUnavailableError) as raised:
        await cognito.disable_user(new_email())
    assert raised.value.status_code == 503
    assert "Retry-After" in raised.value.headers
    assert len(calls) == 2


def adapter_for_endpoint(
    monkeypatch: pytest.MonkeyPatch, endpoint_url: str, **overrides: object
) -> CognitoUserPool:
    """An adapter built the way the app builds it, with boto3's own endpoint variable."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER", endpoint_url)
    for name, value in DUMMY_CREDENTIALS_ENV.items():
        monkeypatch.setenv(name, value)
    adapter = CognitoUserPool.from_settings(make_settings(UNUSED_DATABASE, **overrides))
    # As the startup check leaves it: these tests are about the calls after DescribeUserPool.
    adapter.username_mode = UsernameMode.EMAIL_IS_USERNAME
    return adapter


async def test_connection_refused_is_503_within_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    cognito = adapter_for_endpoint(monkeypatch, unreachable_endpoint())
    started = time.monotonic()
    with pytest.raises(ServiceUnavailableError):
        await cognito.create_user(new_email())
    assert time.monotonic() - started < 5


async def test_read_timeout_is_503_and_the_event_loop_keeps_running(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    with silent_endpoint() as endpoint:
        cognito = adapter_for_endpoint(
            monkeypatch, endpoint, aws_read_timeout_seconds=0.5, aws_max_attempts=1
        )
        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        try:
            with pytest.raises(ServiceUnavailableError):
                await cognito.get_user(new_email())
        finally:
            ticker.cancel()
    assert 0.4 < time.monotonic() - started < 5
    # The boto3 call waited in a worker thread; the loop went on serving other tasks.
    assert ticks >= 5


async def test_a_create_whose_answer_never_came_may_have_happened(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A read timeout after the request went out: Cognito may have created the user. The caller
    # must look before it answers (app.services.users), so this is not a plain 503.
    with silent_endpoint() as endpoint:
        cognito = adapter_for_endpoint(
            monkeypatch, endpoint, aws_read_timeout_seconds=0.5, aws_max_attempts=2
        )
        with pytest.raises(AnswerLostError):
            await cognito.create_user(new_email())


async def test_a_create_that_never_connected_did_not_happen() -> None:
    cognito = CognitoUserPool(
        cognito_client(unreachable_endpoint()),
        "ap-southeast-1_x",
        username_mode=UsernameMode.EMAIL_IS_USERNAME,
    )
    with pytest.raises(ServiceUnavailableError) as raised:
        await cognito.create_user(new_email())
    assert not isinstance(raised.value, AnswerLostError)


async def test_the_deadline_cuts_a_call_that_would_wait_longer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with silent_endpoint() as endpoint:
        cognito = adapter_for_endpoint(
            monkeypatch, endpoint, aws_read_timeout_seconds=10, aws_max_attempts=1
        )
        started = time.monotonic()
        with within_deadline(0.5), pytest.raises(DirectoryTimeoutError):
            await cognito.get_user(new_email())
    # A bound for correctness: the call's own timeout (10 s) never came into play.
    assert time.monotonic() - started < 5


async def test_reset_password_of_a_confirmed_user(moto: MotoCognito) -> None:
    email = new_email()
    moto.create_user(email, confirmed=True)
    assert await moto.adapter().reset_password(email) is PasswordResetOutcome.RESET
    assert moto.find(email)["UserStatus"] == "RESET_REQUIRED"  # type: ignore[index]


async def test_reset_password_of_a_user_who_never_signed_in_resends_the_invitation(
    moto: MotoCognito,
) -> None:
    email = new_email()
    sub = moto.create_user(email)
    cognito = moto.adapter()
    resends = 0

    def count_resend(params: dict[str, object], **_: object) -> None:
        nonlocal resends
        if params.get("MessageAction") == "RESEND":
            resends += 1

    cognito._client.meta.events.register(
        "provide-client-params.cognito-idp.AdminCreateUser", count_resend
    )
    assert await cognito.reset_password(email) is PasswordResetOutcome.INVITATION_RESENT
    assert resends == 1
    stored = moto.find(email)
    assert stored is not None
    assert stored["UserStatus"] == "FORCE_CHANGE_PASSWORD"
    assert stored["attributes"]["sub"] == sub


async def test_reset_refused_for_another_reason_is_not_turned_into_a_resend(
    moto: MotoCognito,
) -> None:
    email = new_email()
    moto.create_user(email, confirmed=True)
    moto.client.admin_disable_user(UserPoolId=moto.user_pool_id, Username=email)
    with pytest.raises(DirectoryMismatchError):
        await moto.adapter().reset_password(email)


async def test_no_credentials_is_a_misconfiguration_not_a_lost_answer(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    moto: MotoCognito,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for name in [*DUMMY_CREDENTIALS_ENV, "AWS_PROFILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"]:
        monkeypatch.delenv(name, raising=False)
    # Nowhere to find credentials: no files, and no instance metadata to ask.
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER", moto.endpoint_url)
    # boto3's default session keeps the credentials it found for an earlier client.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    cognito = CognitoUserPool.from_settings(
        make_settings(UNUSED_DATABASE, cognito_user_pool_id=moto.user_pool_id)
    )
    cognito.username_mode = UsernameMode.EMAIL_IS_USERNAME
    with caplog.at_level(logging.ERROR), pytest.raises(DirectoryMisconfiguredError) as raised:
        await cognito.create_user(new_email())
    assert raised.value.code == "directory_misconfigured"
    assert raised.value.headers["Retry-After"] == "60"
    assert "no valid AWS credentials (NoCredentialsError)" in raised.value.hint
    assert [r.levelno for r in caplog.records if "misconfigured" in r.getMessage()] == [
        logging.ERROR
    ]


async def test_a_missing_group_is_a_misconfiguration(moto: MotoCognito) -> None:
    cognito = CognitoUserPool(moto.new_client(), create_pool(moto.client, groups=False))
    email = new_email()
    await cognito.create_user(email)
    with pytest.raises(DirectoryMisconfiguredError) as raised:
        await cognito.add_to_group(email, Role.OFFICER)
    assert "ADMIN, DISPATCHER, OFFICER, EXECUTIVE" in raised.value.hint
    # The detail a client sees names no pool, group or hint.
    assert raised.value.detail == (
        "The user directory (Cognito) is misconfigured; an operator must fix it"
    )


async def test_calls_are_counted_by_operation_and_outcome(moto: MotoCognito) -> None:
    def calls(outcome: str) -> float:
        labels = {"operation": "AdminGetUser", "outcome": outcome}
        return REGISTRY.get_sample_value("one_system_cognito_calls_total", labels) or 0.0

    ok, missing = calls("ok"), calls("UserNotFoundException")
    cognito = moto.adapter()
    email = new_email()
    await cognito.create_user(email)
    await cognito.get_user(email)
    assert await cognito.find_user(new_email()) is None
    assert calls("ok") - ok == 1
    assert calls("UserNotFoundException") - missing == 1
