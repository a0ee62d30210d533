"""Users addressed by email in every kind of pool: email as username, email as alias, neither.

moto emulates email-as-username pools; email-alias pools behave as real Cognito's only through
the fidelity patches of `tests.support.moto_cognito` (guarded by the first tests here).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from botocore.exceptions import ReadTimeoutError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from app.core.db import create_read_sessionmaker, create_sessionmaker
from app.core.roles import Role
from app.models.user import User
from app.schemas.user import PasswordResetOutcome, UserCreate
from app.services.adoption import ADOPTABLE_AFTER
from app.services.cognito import (
    CognitoUserExistsError,
    CognitoUserPool,
    EmailTakenError,
    UsernameMode,
)
from app.services.directory_sync import match_user
from app.services.user_creation import create_user
from tests.support.moto_cognito import (
    POOL_KINDS,
    MotoCognito,
    PoolKind,
    cognito_client,
    create_pool,
    moto_cognito_server,
)

MODES = {
    "email_username": UsernameMode.EMAIL_IS_USERNAME_ATTRIBUTE,
    "email_alias": UsernameMode.EMAIL_IS_ALIAS,
    "plain": UsernameMode.EMAIL_IS_USERNAME,
}


@pytest.fixture(scope="module")
def pools() -> Iterator[dict[PoolKind, MotoCognito]]:
    with moto_cognito_server() as endpoint_url:
        client = cognito_client(endpoint_url)
        yield {
            kind: MotoCognito(endpoint_url, create_pool(client, kind), client, kind)
            for kind in POOL_KINDS
        }


@pytest.fixture(params=POOL_KINDS)
def pool(request: pytest.FixtureRequest, pools: dict[PoolKind, MotoCognito]) -> MotoCognito:
    return pools[request.param]


def new_email() -> str:
    return f"pooled-{uuid.uuid4().hex[:12]}@example.gov"


# -- the fidelity patches: moto behaves as real Cognito does in an email-alias pool ----------


def test_an_alias_pool_refuses_an_email_shaped_username(pools: dict[PoolKind, MotoCognito]) -> None:
    alias = pools["email_alias"]
    with pytest.raises(alias.client.exceptions.InvalidParameterException, match="email alias"):
        alias.client.admin_create_user(UserPoolId=alias.user_pool_id, Username=new_email())


def test_an_alias_pool_finds_a_user_by_verified_email_only(
    pools: dict[PoolKind, MotoCognito],
) -> None:
    alias = pools["email_alias"]
    verified, unverified = new_email(), new_email()
    alias.create_user(verified)
    alias.client.admin_create_user(
        UserPoolId=alias.user_pool_id,
        Username=str(uuid.uuid4()),
        UserAttributes=[{"Name": "email", "Value": unverified}],
        MessageAction="SUPPRESS",
    )
    assert alias.find(verified) is not None
    assert alias.find(unverified) is None


def test_an_alias_pool_refuses_a_second_user_with_the_same_verified_email(
    pools: dict[PoolKind, MotoCognito],
) -> None:
    alias = pools["email_alias"]
    email = new_email()
    alias.create_user(email)
    with pytest.raises(alias.client.exceptions.AliasExistsException):
        alias.create_user(email)


async def test_resend_gives_a_never_signed_in_user_a_new_temporary_password(
    pool: MotoCognito,
) -> None:
    """As real Cognito does for AdminCreateUser MessageAction=RESEND: the same user, and the
    temporary password someone chose before no longer signs in."""
    email = new_email()
    sub = pool.create_user(email, password="Chosen-By-Someone-1!")
    assert pool.signs_in(email, "Chosen-By-Someone-1!")
    await pool.adapter().resend_invitation(email)
    assert not pool.signs_in(email, "Chosen-By-Someone-1!")
    assert pool.find(email)["attributes"]["sub"] == sub  # type: ignore[index]


def test_resend_is_refused_for_a_user_who_signed_in(pools: dict[PoolKind, MotoCognito]) -> None:
    plain = pools["plain"]
    email = new_email()
    plain.create_user(email, confirmed=True)
    with pytest.raises(plain.client.exceptions.UnsupportedUserStateException):
        plain.client.admin_create_user(
            UserPoolId=plain.user_pool_id, Username=email, MessageAction="RESEND"
        )


# -- the adapter in every kind of pool -------------------------------------------------------


async def test_the_adapter_learns_the_pools_username_mode(pool: MotoCognito) -> None:
    cognito = pool.adapter()
    assert cognito.username_mode is None
    await cognito.create_user(new_email())
    assert cognito.username_mode is MODES[pool.kind]


async def test_a_user_created_by_email_is_addressed_by_email_throughout(
    pool: MotoCognito,
) -> None:
    email = new_email()
    cognito = pool.adapter()
    created = await cognito.create_user(email)
    stored = pool.find(email)
    assert stored is not None
    assert stored["attributes"]["sub"] == created.sub
    assert stored["attributes"]["email"] == email
    assert stored["attributes"]["email_verified"] == "true"
    # What the pool made the real username: the sub, a generated name, or the email itself.
    expected_username = {
        "email_username": created.sub,
        "email_alias": created.username,
        "plain": email,
    }[pool.kind]
    assert stored["Username"] == created.username == expected_username
    if pool.kind == "email_alias":
        assert uuid.UUID(created.username)
        assert created.username != created.sub

    assert (await cognito.get_user(email)).sub == created.sub
    await match_user(cognito, email, Role.OFFICER, is_active=True)
    await match_user(cognito, email, Role.DISPATCHER, is_active=False)
    assert pool.groups_of(email) == {"DISPATCHER"}
    assert pool.find(email)["Enabled"] is False  # type: ignore[index]
    await cognito.enable_user(email)
    # Never signed in: a reset re-sends the invitation, to the same user.
    assert await cognito.reset_password(email) is PasswordResetOutcome.INVITATION_RESENT
    assert pool.find(email)["attributes"]["sub"] == created.sub  # type: ignore[index]
    await cognito.delete_user_if_sub(email, created.sub)
    assert pool.find(email) is None


async def test_a_deactivation_disables_the_user_before_it_signs_them_out(
    pools: dict[PoolKind, MotoCognito],
) -> None:
    """Signed out first, a password sign-in before the disable would get a refresh token the
    sign-out never saw."""
    plain = pools["plain"]
    email = new_email()
    plain.create_user(email, confirmed=True)
    cognito = plain.adapter()
    enabled_at_sign_out: list[bool] = []

    def look(**_: object) -> None:
        enabled_at_sign_out.append(plain.find(email)["Enabled"])  # type: ignore[index]

    cognito._client.meta.events.register("before-call.cognito-idp.AdminUserGlobalSignOut", look)
    await match_user(cognito, email, Role.OFFICER, is_active=False, sign_out=True)
    assert enabled_at_sign_out == [False]
    assert plain.find(email)["Enabled"] is False  # type: ignore[index]


async def test_an_email_taken_in_the_pool_is_a_conflict(pool: MotoCognito) -> None:
    email = new_email()
    pool.create_user(email, confirmed=True)
    with pytest.raises(EmailTakenError):
        await pool.adapter().create_user(email)


# -- the user service's create and its adoption path, in every kind of pool -----------------


async def service_create(engine: AsyncEngine, cognito: CognitoUserPool, email: str) -> User:
    sessions = create_sessionmaker(engine)
    async with sessions() as session, session.begin():
        return await create_user(
            session,
            create_read_sessionmaker(engine),
            cognito,
            UserCreate(email=email, full_name="Pooled User", role=Role.EXECUTIVE),
            actor_id=None,
        )


async def rows_with_email(engine: AsyncEngine, email: str) -> list[User]:
    async with create_read_sessionmaker(engine)() as session:
        return list((await session.scalars(select(User).where(User.email == email))).all())


async def test_create_stores_the_sub_and_the_role_group(
    pool: MotoCognito, fresh_engine: AsyncEngine
) -> None:
    email = new_email()
    user = await service_create(fresh_engine, pool.adapter(), email)
    assert pool.find(email)["attributes"]["sub"] == user.cognito_user_id  # type: ignore[index]
    assert pool.groups_of(email) == {"EXECUTIVE"}


async def test_a_lost_create_answer_adopts_the_user_cognito_made_with_a_new_password(
    pool: MotoCognito, fresh_engine: AsyncEngine
) -> None:
    """Adopted, it gets a new temporary password (a password set before no longer signs in)
    and exactly its role's group."""
    email = new_email()
    cognito = pool.adapter()
    lost: list[int] = []

    def lose_the_answer(**_: object) -> None:
        # Cognito has created the user; someone sets a password they know and a group before
        # the create looks; the answer never arrives.
        lost.append(1)
        pool.client.admin_set_user_password(
            UserPoolId=pool.user_pool_id, Username=email, Password=KNOWN, Permanent=False
        )
        pool.client.admin_add_user_to_group(
            UserPoolId=pool.user_pool_id, Username=email, GroupName="ADMIN"
        )
        raise ReadTimeoutError(endpoint_url=pool.endpoint_url)

    cognito._once_client.meta.events.register(
        "after-call.cognito-idp.AdminCreateUser", lose_the_answer
    )
    assert not pool.signs_in(email, KNOWN)  # no user yet
    user = await service_create(fresh_engine, cognito, email)
    assert lost == [1]
    [stored] = pool.users_with_email(email)
    assert {a["Name"]: a["Value"] for a in stored["Attributes"]}["sub"] == user.cognito_user_id
    assert pool.groups_of(email) == {"EXECUTIVE"}
    assert not pool.signs_in(email, KNOWN)


KNOWN = "Known-To-Someone-1!"


@pytest.mark.parametrize("age", [timedelta(seconds=5), ADOPTABLE_AFTER * 2, timedelta(days=3)])
async def test_a_user_made_in_the_console_before_the_create_is_a_conflict_whatever_its_age(
    pool: MotoCognito, fresh_engine: AsyncEngine, age: timedelta
) -> None:
    """Never adopted by a create, never changed: an operator's reconcile --adopt takes it."""
    email = new_email()
    sub = pool.create_user(email, role=Role.ADMIN, password=KNOWN)
    pool.make_older(email, age)
    with pytest.raises(CognitoUserExistsError):
        await service_create(fresh_engine, pool.adapter(), email)
    assert await rows_with_email(fresh_engine, email) == []
    assert pool.find(email)["attributes"]["sub"] == sub  # type: ignore[index]
    assert pool.signs_in(email, KNOWN)
    assert pool.groups_of(email) == {"ADMIN"}


# Made in the console while the create is on its way: where the create names its user (an
# alias pool), the name tells it is not the create's; elsewhere only the time can, and the
# create adopts it with a new temporary password.
MADE_DURING_THE_CREATE = {
    "email_alias": "conflict",
    "email_username": "adopted",
    "plain": "adopted",
}


async def test_a_user_made_in_the_console_during_the_create_keeps_no_password_it_had(
    pool: MotoCognito, fresh_engine: AsyncEngine
) -> None:
    email = new_email()
    cognito = pool.adapter()

    def someone_creates_it_first(**_: object) -> None:
        pool.create_user(email, role=Role.ADMIN, password=KNOWN)

    cognito._once_client.meta.events.register(
        "before-call.cognito-idp.AdminCreateUser", someone_creates_it_first
    )
    outcome = "adopted"
    try:
        await service_create(fresh_engine, cognito, email)
    except CognitoUserExistsError:
        outcome = "conflict"
    assert outcome == MADE_DURING_THE_CREATE[pool.kind]
    rows = await rows_with_email(fresh_engine, email)
    assert len(rows) == (1 if outcome == "adopted" else 0)
    assert pool.signs_in(email, KNOWN) is (outcome == "conflict")
    assert pool.groups_of(email) == ({"EXECUTIVE"} if outcome == "adopted" else {"ADMIN"})


async def test_a_user_who_signed_in_is_never_adopted(
    pool: MotoCognito, fresh_engine: AsyncEngine
) -> None:
    email = new_email()
    pool.create_user(email, confirmed=True)
    pool.make_older(email, ADOPTABLE_AFTER * 2)
    with pytest.raises(CognitoUserExistsError):
        await service_create(fresh_engine, pool.adapter(), email)
    assert await rows_with_email(fresh_engine, email) == []
