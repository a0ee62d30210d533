"""User accounts: the users table, and the user directory (Cognito) kept in step with it.

The row is what the API enforces (role, active). Cognito is kept in step two ways:

- **Create is synchronous** (the row stores the sub Cognito returns): check the table for the
  email (a clear 409 before touching Cognito), AdminCreateUser once (never retried: a retry
  after a lost answer would meet the user the first attempt made), AdminAddUserToGroup, then
  insert the row. When AdminCreateUser's answer is lost, or it reports the name taken while no
  row holds the email, the existing Cognito user is adopted if it never signed in
  (FORCE_CHANGE_PASSWORD) and no row references its sub, so a lost answer leaves no orphan
  that blocks the email for ever. A user another request may still be creating is not adopted:
  that request owns it, and may still delete it (the rule, shared with the reconcile command,
  is `app.services.adoption`). A request
  deletes only a Cognito user it saw itself create, and only while no committed row
  references it: when a later step fails, or the commit does (`app.core.compensation`).
- **Every later change** (deactivate, reactivate, role) commits an outbox row with the change
  (`app.services.directory_sync`); the API enforces the row at once and the worker brings
  Cognito in step. A deactivation also revokes the user's sessions: access tokens issued before
  it are refused for good, even after a reactivation.

No database connection is held while Cognito is called: create checks the email with a short
autocommit read, and update calls Cognito not at all. Every admin action writes one line to the
audit trail (`app.services.audit`). The user list is `app.services.user_list`.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.compensation import UndoLog
from app.core.db import ReadSessions
from app.core.errors import ConflictError, InvalidInputError, NotFoundError, ServiceUnavailableError
from app.core.roles import Role
from app.models.user import User
from app.schemas.user import (
    PROVINCE_ONLY_FOR_OFFICERS,
    PROVINCE_REQUIRED_FOR_OFFICERS,
    PasswordResetOutcome,
    UserCreate,
    UserUpdate,
)
from app.services.adoption import adoption_refusal, sub_is_referenced
from app.services.audit import audited, undo_and_audit_on_rollback
from app.services.cognito import (
    AnswerLostError,
    CognitoUser,
    CognitoUserPool,
    EmailTakenError,
)
from app.services.directory_sync import DirectorySync

logger = logging.getLogger(__name__)

EMAIL_INDEX: Final = "uq_users_lower_email"
SUB_INDEX: Final = "uq_users_cognito_user_id"


async def find_user_by_email(session: AsyncSession, email: str) -> User | None:
    result = await session.execute(select(User).where(func.lower(User.email) == email.lower()))
    return result.scalar_one_or_none()


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFoundError("No user with this id")
    return user


# ---------------------------------------------------------------------------------------------
# Create


def _violated_constraint(error: IntegrityError) -> str | None:
    # asyncpg's exception (the DB-API error's cause) names the constraint or index.
    cause = getattr(error.orig, "__cause__", None)
    name = getattr(cause, "constraint_name", None) or getattr(error.orig, "constraint_name", None)
    return str(name) if name else None


async def _delete_unless_referenced(
    read_sessions: ReadSessions, cognito: CognitoUserPool, email: str, sub: str
) -> None:
    """The undo of a create this request made: never when a committed row refers to the user
    (a concurrent request adopted it), nor when that cannot be known (the database is down):
    an unconfirmed user without a row is adopted by the next create of the email."""
    if await sub_is_referenced(read_sessions, sub):
        logger.warning("not deleting the new Cognito user: a row refers to it")
        return
    await cognito.delete_user_if_sub(email, sub)


async def _adoptable(
    read_sessions: ReadSessions, cognito: CognitoUserPool, email: str, *, ours: bool
) -> CognitoUser | None:
    """The existing Cognito user of `email` if it may be adopted (see the module docstring)."""
    existing = await cognito.find_user(email)
    if existing is None or await adoption_refusal(read_sessions, existing, ours=ours):
        return None
    return existing


async def _cognito_user_for(
    read_sessions: ReadSessions, cognito: CognitoUserPool, email: str, undo: UndoLog
) -> CognitoUser:
    """Create the Cognito user, or adopt the one a lost answer or an earlier failure left."""
    try:
        created = await cognito.create_user(email)
    except AnswerLostError:
        adopted = await _adoptable(read_sessions, cognito, email, ours=True)
        if adopted is None:
            raise ServiceUnavailableError(
                "The user directory (Cognito) did not confirm the creation; try again shortly"
            ) from None
        logger.info("adopted the Cognito user whose creation answer was lost")
        return adopted
    except EmailTakenError:
        adopted = await _adoptable(read_sessions, cognito, email, ours=False)
        if adopted is None:
            raise
        logger.info("adopted a Cognito user that never signed in and had no row")
        return adopted
    undo.add(
        "delete the new Cognito user",
        functools.partial(_delete_unless_referenced, read_sessions, cognito, email, created.sub),
    )
    return created


async def create_user(
    session: AsyncSession,
    read_sessions: ReadSessions,
    cognito: CognitoUserPool,
    data: UserCreate,
    *,
    actor_id: uuid.UUID | None,
) -> User:
    """Create the user in Cognito (which emails the invitation) and in the users table."""
    with audited("user.create", actor_id) as audit:
        async with read_sessions() as read:
            if await find_user_by_email(read, data.email) is not None:
                raise EmailTakenError("A user with this email already exists")
        undo = UndoLog()
        try:
            with cognito.deadline():
                cognito_user = await _cognito_user_for(read_sessions, cognito, data.email, undo)
                await cognito.add_to_group(data.email, data.role)
            user = User(
                cognito_user_id=cognito_user.sub,
                email=data.email,
                full_name=data.full_name,
                role=data.role,
                responsible_province=data.responsible_province,
                is_active=True,
            )
            session.add(user)
            try:
                await session.flush()
            except IntegrityError as error:
                if _violated_constraint(error) in (EMAIL_INDEX, SUB_INDEX):
                    raise EmailTakenError("A user with this email already exists") from error
                raise
        except BaseException:
            await undo.undo()
            raise
        audit.target_id = user.id
        undo_and_audit_on_rollback(session, undo, audit)
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
    if "responsible_province" in changes:
        province: str | None = changes["responsible_province"]
        if role is not Role.OFFICER and province is not None:
            raise InvalidInputError(PROVINCE_ONLY_FOR_OFFICERS)
    else:
        # Leaving the OFFICER role drops the province; staying keeps it.
        province = user.responsible_province if role is Role.OFFICER else None
    if role is Role.OFFICER and province is None:
        raise InvalidInputError(PROVINCE_REQUIRED_FOR_OFFICERS)
    return province


def sessions_revoked_now() -> datetime:
    """The revocation instant: the next whole second, as a token's `iat` has whole seconds.

    Every token issued up to now has `iat` before it; one issued afterwards (a new sign-in, at
    least a second later) does not.
    """
    return datetime.fromtimestamp(math.floor(time.time()) + 1, UTC)


async def update_user(
    session: AsyncSession,
    directory: DirectorySync,
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
        if user.is_active and not is_active:
            user.sessions_revoked_at = sessions_revoked_now()
        user.full_name = changes.get("full_name", user.full_name)
        user.role = role
        user.responsible_province = province
        user.is_active = is_active
        if directory_changes:
            directory.record(session, user.id)
        await session.flush()
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
