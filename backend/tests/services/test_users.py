"""User service rules the API cannot reach on its own (its caller is always an active admin)."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from app.core.errors import ConflictError
from app.core.roles import Role
from app.models.outbox import OutboxEntry
from app.models.user import User
from app.schemas.user import UserUpdate
from app.services.directory_sync import DirectoryRecorder
from app.services.users import AUTH_TIME_SKEW, sessions_revoked_now, update_user


def directory(db_session: AsyncSession) -> DirectoryRecorder:
    """The web process's recorder: these tests look at what a change records."""
    return DirectoryRecorder(async_sessionmaker(bind=db_session.bind))


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
            directory(db_session),
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
    changed = await update_user(
        db_session, directory(db_session), target.id, UserUpdate(is_active=False), actor_id=actor.id
    )
    assert changed.user.is_active is False
    assert changed.directory_in_step is False
    # The promise to Cognito is in the same transaction as the change.
    recorded = await db_session.execute(
        select(OutboxEntry.kind, OutboxEntry.payload).where(OutboxEntry.key == str(target.id))
    )
    # A deactivation also promises a global sign-out, retried until Cognito carries it out.
    assert [tuple(row) for row in recorded] == [("directory", {"sign_out": True})]


async def test_a_deactivation_revokes_every_token_issued_until_now_and_no_later_one(
    db_session: AsyncSession,
) -> None:
    target = await add_user(db_session, Role.DISPATCHER)
    actor = await add_user(db_session, Role.ADMIN)
    before = time.time()
    await update_user(
        db_session, directory(db_session), target.id, UserUpdate(is_active=False), actor_id=actor.id
    )
    revoked_at = target.sessions_revoked_at
    assert revoked_at is not None
    # A token's iat has whole seconds: each one issued so far is before the revocation, even
    # stamped by a Cognito clock AUTH_TIME_SKEW ahead; a sign-in 2 s later is after it.
    skew = AUTH_TIME_SKEW.total_seconds()
    assert int(before) + skew < revoked_at.timestamp() <= int(time.time()) + 1 + skew
    assert revoked_at.timestamp() == int(revoked_at.timestamp())
    assert await sessions_revoked_now(db_session) >= revoked_at


async def test_revocation_is_judged_on_the_database_clock_not_the_web_hosts(
    db_session: AsyncSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A web host whose clock runs an hour behind must not revoke only the sessions of an hour
    ago."""
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600)
    target = await add_user(db_session, Role.DISPATCHER)
    actor = await add_user(db_session, Role.ADMIN)
    await update_user(
        db_session, directory(db_session), target.id, UserUpdate(is_active=False), actor_id=actor.id
    )
    monkeypatch.undo()
    revoked_at = target.sessions_revoked_at
    assert revoked_at is not None
    assert revoked_at.timestamp() > time.time()


async def test_a_rename_records_no_directory_work(db_session: AsyncSession) -> None:
    target = await add_user(db_session, Role.DISPATCHER)
    actor = await add_user(db_session, Role.ADMIN)
    changed = await update_user(
        db_session,
        directory(db_session),
        target.id,
        UserUpdate(full_name="Renamed"),
        actor_id=actor.id,
    )
    assert changed.directory_in_step is True
    assert target.sessions_revoked_at is None
