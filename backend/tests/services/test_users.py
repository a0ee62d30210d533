"""User service rules the API cannot reach on its own (its caller is always an active admin)."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import ConflictError, ServiceUnavailableError
from app.core.roles import Role
from app.models.user import User
from app.schemas.user import UserUpdate
from app.services.cognito import CognitoUserPool
from app.services.users import update_user
from tests.support.moto_cognito import cognito_client, unreachable_endpoint


def unused_cognito() -> CognitoUserPool:
    # The rule refuses before Cognito is called; a call would fail loudly with a 503.
    return CognitoUserPool(cognito_client(unreachable_endpoint()), "ap-southeast-1_unused")


async def add_user(session: AsyncSession, role: Role, *, is_active: bool = True) -> User:
    user = User(
        cognito_user_id=str(uuid.uuid4()),
        email=f"{uuid.uuid4().hex[:12]}@example.gov",
        full_name="Test User",
        role=role,
        is_active=is_active,
    )
    session.add(user)
    await session.flush()
    return user


@pytest.mark.parametrize("change", [{"is_active": False}, {"role": "DISPATCHER"}])
async def test_the_last_active_admin_cannot_be_deactivated_or_demoted(
    db_session: AsyncSession, change: dict[str, object]
) -> None:
    # Whatever else the shared database holds, within this transaction there is one admin.
    await db_session.execute(update(User).where(User.role == Role.ADMIN).values(is_active=False))
    last_admin = await add_user(db_session, Role.ADMIN)
    # An actor that is no longer an active admin (deactivated after it authenticated).
    former_admin = await add_user(db_session, Role.ADMIN, is_active=False)
    with pytest.raises(ConflictError, match="last active admin"):
        await update_user(
            db_session,
            unused_cognito(),
            last_admin.id,
            UserUpdate.model_validate(change),
            actor_id=former_admin.id,
        )
    await db_session.refresh(last_admin)
    assert (last_admin.role, last_admin.is_active) == (Role.ADMIN, True)


async def test_with_another_active_admin_the_rule_lets_a_demotion_through(
    db_session: AsyncSession,
) -> None:
    await db_session.execute(update(User).where(User.role == Role.ADMIN).values(is_active=False))
    target = await add_user(db_session, Role.ADMIN)
    actor = await add_user(db_session, Role.ADMIN)
    # Past the rule, the service goes to Cognito: unreachable here, so the refusal is a 503.
    with pytest.raises(ServiceUnavailableError):
        await update_user(
            db_session, unused_cognito(), target.id, UserUpdate(is_active=False), actor_id=actor.id
        )
