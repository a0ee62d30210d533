"""User accounts: the users table, and the user directory (Cognito) kept in step with it.

The row is what the API enforces (role, active). Cognito is kept in step two ways:

- **Create is synchronous**, with an intent recorded first so its outcome is never lost
  (`app.services.user_creation`).
- **Every later change** (deactivate, reactivate, role) commits an outbox entry with the change
  (`app.services.directory_sync`); the API enforces the row at once and the worker brings
  Cognito in step. A deactivation also revokes the user's sessions: tokens of every session
  begun before it are refused for good, refreshed or not, even after a reactivation; and its
  entry asks Cognito to sign the user out everywhere, retried until done.

No database connection is held while Cognito is called: update calls Cognito not at all. Every
admin action writes one line to the audit trail (`app.services.audit`). The user list is
`app.services.user_list`.
"""

from __future__ import annotations

import logging
import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import ReadSessions
from app.core.errors import ConflictError, InvalidFieldError, NotFoundError
from app.core.roles import Role
from app.core.scope import SCOPED_ROLES, province_problem
from app.models.user import User
from app.schemas.user import PasswordResetOutcome, UserUpdate
from app.services.audit import audit_at_commit, audited
from app.services.cognito import (
    CognitoUserPool,
)
from app.services.directory_sync import DirectoryRecorder

logger = logging.getLogger(__name__)


async def find_user_by_email(session: AsyncSession, email: str) -> User | None:
    result = await session.execute(select(User).where(func.lower(User.email) == email.lower()))
    return result.scalar_one_or_none()


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFoundError("No user with this id")
    return user


# ---------------------------------------------------------------------------------------------
# Update


@dataclass(frozen=True, slots=True)
class UpdatedUser:
    user: User
    # False while Cognito has yet to follow the change (the outbox worker will).
    directory_in_step: bool


def _takes_away_an_admin(user: User, role: Role, is_active: bool) -> bool:
    return user.role is Role.ADMIN and user.is_active and (role is not Role.ADMIN or not is_active)


async def _lock_with_the_active_admins(session: AsyncSession, user_id: uuid.UUID) -> None:
    # A change that can take away an admin locks the admin rows, in id order, so two such
    # changes run one after the other (and cannot deadlock) and the second one counts what the
    # first one left. The changed user's row is locked in the same statement and order:
    # locked afterwards, it deadlocked against a change that had seen it as an admin.
    await session.execute(
        select(User.id)
        .where(or_((User.role == Role.ADMIN) & User.is_active.is_(True), User.id == user_id))
        .order_by(User.id)
        .with_for_update()
    )


async def _count_other_active_admins(session: AsyncSession, user_id: uuid.UUID) -> int:
    result = await session.execute(
        select(func.count())
        .select_from(User)
        .where(User.role == Role.ADMIN, User.is_active.is_(True), User.id != user_id)
    )
    return result.scalar_one()


async def _locked_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    result = await session.execute(
        select(User)
        .where(User.id == user_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    user = result.scalar_one_or_none()
    if user is None:
        raise NotFoundError("No user with this id")
    return user


async def _lock_for(session: AsyncSession, user_id: uuid.UUID, changes: dict[str, Any]) -> User:
    """The user's row, locked; with the active admins' rows too when the user is an active
    admin that the change might take away (only then does the last-admin rule need them)."""
    peek = await session.get(User, user_id)
    if peek is None:
        raise NotFoundError("No user with this id")
    changes_standing = "role" in changes or changes.get("is_active") is False
    if changes_standing and peek.role is Role.ADMIN and peek.is_active:
        await _lock_with_the_active_admins(session, user_id)
        return await _locked_user(session, user_id)
    # In a savepoint: should a promotion have committed since the peek, the row lock is given
    # back and taken again with the admins', in id order, as the other case does (taking the
    # admins' after the row's deadlocked against a change that had seen it as an admin).
    savepoint = await session.begin_nested()
    user = await _locked_user(session, user_id)
    role: Role = changes.get("role", user.role)
    if _takes_away_an_admin(user, role, changes.get("is_active", user.is_active)):
        await savepoint.rollback()
        await _lock_with_the_active_admins(session, user_id)
        return await _locked_user(session, user_id)
    await savepoint.commit()
    return user


def _province_after(user: User, changes: dict[str, Any], role: Role) -> str | None:
    """The province the user has after the change, by the rule of `app.core.scope`."""
    if "responsible_province" in changes:
        province: str | None = changes["responsible_province"]
    else:
        # Leaving a scoped role drops the province; staying keeps it.
        province = user.responsible_province if role in SCOPED_ROLES else None
    problem = province_problem(role, province)
    if problem is not None:
        raise InvalidFieldError("responsible_province", problem)
    return province


# The most Cognito's clock, which stamps a session's `auth_time`, may run ahead of the
# database's: both keep NTP time (AWS's time sync), well within it.
AUTH_TIME_SKEW: Final = timedelta(seconds=1)


async def sessions_revoked_now(session: AsyncSession) -> datetime:
    """The revocation instant, on the database's clock (one clock for every host that writes
    it; `clock_timestamp()`, the time of this call, not of the transaction's start): its next
    whole second, as a token's `auth_time` has whole seconds, plus `AUTH_TIME_SKEW`.

    Every session begun up to now (and every token refreshed from one) has `auth_time` before
    it, even by a Cognito clock `AUTH_TIME_SKEW` ahead; a session begun afterwards (a new
    sign-in, at least 2 s later) does not.
    """
    now: datetime = await session.scalar(select(func.clock_timestamp()))  # type: ignore[assignment]
    return datetime.fromtimestamp(math.floor(now.timestamp()) + 1, UTC) + AUTH_TIME_SKEW


async def update_user(
    session: AsyncSession,
    directory: DirectoryRecorder,
    user_id: uuid.UUID,
    update: UserUpdate,
    *,
    actor_id: uuid.UUID,
) -> UpdatedUser:
    """Change name, role, province or active state; Cognito follows through the outbox."""
    changes = update.model_dump(exclude_unset=True)
    with audited("user.update", actor_id, user_id) as audit:
        audit.details["fields"] = sorted(changes)
        user = await _lock_for(session, user_id, changes)
        role: Role = changes.get("role", user.role)
        is_active: bool = changes.get("is_active", user.is_active)
        province = _province_after(user, changes, role)

        if _takes_away_an_admin(user, role, is_active):
            if user.id == actor_id:
                raise ConflictError("You cannot deactivate or demote yourself")
            if await _count_other_active_admins(session, user.id) == 0:
                raise ConflictError("The last active admin cannot be deactivated or demoted")

        directory_changes = role is not user.role or is_active is not user.is_active
        deactivated = user.is_active and not is_active
        if deactivated:
            user.sessions_revoked_at = await sessions_revoked_now(session)
        user.full_name = changes.get("full_name", user.full_name)
        user.role = role
        user.responsible_province = province
        user.is_active = is_active
        if directory_changes:
            directory.record(session, user.id, sign_out=deactivated)
        await session.flush()
        audit_at_commit(session, audit)
        return UpdatedUser(user, directory_in_step=not directory_changes)


# ---------------------------------------------------------------------------------------------
# Reset password


async def reset_password(
    read_sessions: ReadSessions,
    cognito: CognitoUserPool,
    user_id: uuid.UUID,
    *,
    actor_id: uuid.UUID | None,
) -> PasswordResetOutcome:
    """Have Cognito email a reset code, or a new invitation to a user who never signed in.

    Sessions are not revoked: a reset is for a user who forgot their password; an account that
    may be compromised is deactivated, which revokes them.
    """
    with audited("user.reset_password", actor_id, user_id) as audit:
        async with read_sessions() as session:
            user = await get_user(session, user_id)
        if not user.is_active:
            raise ConflictError("The user is deactivated; reactivate them before a reset")
        with cognito.deadline():
            outcome = await cognito.reset_password(user.email)
        audit.details["result"] = outcome.value
        return outcome
