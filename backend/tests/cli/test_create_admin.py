"""The first-admin command against moto's Cognito and a database of the test's own."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.cli.create_admin import create_admin
from app.core.roles import Role
from app.models.user import User
from tests.support.app_env import cli_environment, run_cli
from tests.support.harness import make_settings
from tests.support.moto_cognito import (
    MotoCognito,
    aws_error_response,
    fail_operation,
    running_moto_cognito,
)


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoCognito]:
    with running_moto_cognito() as running:
        yield running


async def users_with_email(engine: AsyncEngine, email: str) -> list[User]:
    async with AsyncSession(engine) as session:
        result = await session.execute(select(User).where(func.lower(User.email) == email))
        return list(result.scalars())


def new_email() -> str:
    return f"first-admin-{uuid.uuid4().hex[:10]}@example.gov"


def run_command(
    database_url: str, moto: MotoCognito, cwd: Path, *arguments: str
) -> subprocess.CompletedProcess[str]:
    """`python -m app.cli.create_admin ...` with only the environment the API would have."""
    environment = cli_environment(database_url, moto, COGNITO_APP_CLIENT_ID="unused")
    return run_cli("app.cli.create_admin", environment, cwd, *arguments)


async def test_creates_the_admin_on_both_sides_and_a_rerun_changes_nothing(
    fresh_database_url: str, fresh_engine: AsyncEngine, moto: MotoCognito, tmp_path: Path
) -> None:
    email = new_email()
    arguments = ("--email", email.upper(), "--name", "First Admin")
    first = await asyncio.to_thread(run_command, fresh_database_url, moto, tmp_path, *arguments)
    assert first.returncode == 0, first.stderr
    assert f"created ADMIN {email}" in first.stdout
    # The audit line, written once the transaction committed.
    assert "user.create success" in first.stderr
    [user] = await users_with_email(fresh_engine, email)
    assert (user.role, user.full_name, user.is_active) == (Role.ADMIN, "First Admin", True)
    cognito_user = moto.find(email)
    assert cognito_user is not None
    assert cognito_user["attributes"]["sub"] == user.cognito_user_id
    assert moto.groups_of(email) == {"ADMIN"}

    again = await asyncio.to_thread(run_command, fresh_database_url, moto, tmp_path, *arguments)
    assert again.returncode == 0, again.stderr
    assert "already exists" in again.stdout
    assert len(await users_with_email(fresh_engine, email)) == 1
    assert len(moto.users_with_email(email)) == 1


@pytest.mark.parametrize("age", [timedelta(seconds=20), timedelta(minutes=2), timedelta(days=30)])
async def test_an_email_known_only_to_cognito_is_reported_and_fails(
    fresh_database_url: str,
    fresh_engine: AsyncEngine,
    moto: MotoCognito,
    capsys: pytest.CaptureFixture[str],
    age: timedelta,
) -> None:
    """Whatever its age: a user made in the console with a password someone knows never
    becomes an ADMIN by this command."""
    email = new_email()
    sub = moto.create_user(email, password="Known-To-Someone-1!")
    moto.make_older(email, age)
    settings = make_settings(fresh_database_url, cognito_user_pool_id=moto.user_pool_id)
    assert await create_admin(settings, email, "Someone", moto.adapter()) == 1
    assert "disagree" in capsys.readouterr().err
    assert await users_with_email(fresh_engine, email) == []
    assert moto.find(email)["attributes"]["sub"] == sub  # type: ignore[index]
    assert moto.signs_in(email, "Known-To-Someone-1!")
    assert moto.groups_of(email) == set()


async def test_a_failure_half_way_leaves_nothing_behind(
    fresh_database_url: str,
    fresh_engine: AsyncEngine,
    moto: MotoCognito,
    capsys: pytest.CaptureFixture[str],
) -> None:
    email = new_email()
    cognito = moto.adapter()
    fail_operation(
        cognito,
        "AdminAddUserToGroup",
        lambda: aws_error_response(500, "InternalErrorException", "injected"),
    )
    settings = make_settings(fresh_database_url, cognito_user_pool_id=moto.user_pool_id)
    assert await create_admin(settings, email, "Someone", cognito) == 1
    assert "unavailable" in capsys.readouterr().err
    assert await users_with_email(fresh_engine, email) == []
    assert moto.find(email) is None


async def test_an_invalid_email_is_a_usage_error(
    fresh_database_url: str, moto: MotoCognito, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(fresh_database_url, cognito_user_pool_id=moto.user_pool_id)
    assert await create_admin(settings, "not-an-email", "Someone", moto.adapter()) == 2
    assert "invalid email" in capsys.readouterr().err
