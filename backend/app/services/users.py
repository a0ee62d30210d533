"""User accounts: the database side, and Cognito kept in step with it.

All or nothing. A user exists in both the users table and Cognito or in neither, and an update
changes both or neither. Cognito cannot join the database transaction, so every change to it is
paired with an undo action (`app.core.compensation`):

- create: check the table for the email (a clear 409 before touching Cognito), AdminCreateUser
  (Cognito's username uniqueness refuses a concurrent duplicate), AdminAddUserToGroup, insert the
  row and flush (the unique index on lower(email) refuses a duplicate inside the service). A
  failure at any step deletes the Cognito user again, and the exception rolls the row back.
- update: lock and change the row and flush first, then make the Cognito calls; a failing call
  undoes the calls made before it, and the exception rolls the row back.
- Once every step has succeeded the undo log is handed to the session: the request's session
  dependency (or the CLI) runs it if the commit that follows fails, e.g. when the database goes
  away between the flush and the commit.

Every admin action writes one line to the audit trail (`app.services.audit`). The user list is
`app.services.user_list`.
"""

from __future__ import annotations

import functools
import uuid
from typing import Any, Final

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.compensation import UndoLog
from app.core.errors import ConflictError, InvalidInputError, NotFoundError
from app.core.roles import Role
from app.models.user import User
from app.schemas.user import (
    PROVINCE_ONLY_FOR_OFFICERS,
    PROVINCE_REQUIRED_FOR_OFFICERS,
    PasswordResetOutcome,
    UserCreate,
    UserUpdate,
)
from app.services.audit import audited, undo_and_audit_on_rollback
from app.services.cognito import CognitoUserPool, EmailTakenError

EMAIL_INDEX: Final = "uq_users_lower_email"


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


async def create_user(
    session: AsyncSession,
    cognito: CognitoUserPool,
    data: UserCreate,
    *,
    actor_id: uuid.UUID | None,
) -> User:
    """Create the user in Cognito (which emails the invitation) and in the users table."""
    with audited("user.create", actor_id) as audit:
        if await find_user_by_email(session, data.email) is not None:
            raise EmailTakenError("A user with this email already exists")
        undo = UndoLog()
        try:
            cognito_user = await cognito.create_user(data.email)
            undo.add(
                "delete the new Cognito user",
                functools.partial(cognito.delete_user_if_sub, data.email, cognito_user.sub),
            )
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
                if _violated_constraint(error) == EMAIL_INDEX:
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


async def _lock_active_admins(session: AsyncSession, user_id: uuid.UUID) -> None:
    # Every change that can take away an admin locks the admin rows first, in id order, so two
    # such changes run one after the other (and cannot deadlock) and the second one counts
    # what the first one left. The changed user's row is locked in the same statement and
    # order: locked afterwards, it deadlocked against a change that had seen it as an admin.
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


async def _lock_user(session: AsyncSession, user_id: uuid.UUID) -> User:
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


async def update_user(
    session: AsyncSession,
    cognito: CognitoUserPool,
    user_id: uuid.UUID,
    update: UserUpdate,
    *,
    actor_id: uuid.UUID,
) -> User:
    """Change name, role, province or active state, in the table and in Cognito."""
    changes = update.model_dump(exclude_unset=True)
    with audited("user.update", actor_id, user_id) as audit:
        audit.details["fields"] = sorted(changes)
        if "role" in changes or changes.get("is_active") is False:
            await _lock_active_admins(session, user_id)
        user = await _lock_user(session, user_id)
        old_role, was_active = user.role, user.is_active
        role: Role = changes.get("role", old_role)
        is_active: bool = changes.get("is_active", was_active)
        province = _province_after(user, changes, role)

        if old_role is Role.ADMIN and was_active and (role is not Role.ADMIN or not is_active):
            if user.id == actor_id:
                raise ConflictError("You cannot deactivate or demote yourself")
            if await _count_other_active_admins(session, user.id) == 0:
                raise ConflictError("The last active admin cannot be deactivated or demoted")

        user.full_name = changes.get("full_name", user.full_name)
        user.role = role
        user.responsible_province = province
        user.is_active = is_active
        await session.flush()

        undo = UndoLog()
        try:
            await _apply_in_cognito(
                cognito,
                user.email,
                undo,
                old_role=old_role,
                new_role=role,
                was_active=was_active,
                is_active=is_active,
            )
        except BaseException:
            await undo.undo()
            raise
        undo_and_audit_on_rollback(session, undo, audit)
        return user


async def _apply_in_cognito(
    cognito: CognitoUserPool,
    username: str,
    undo: UndoLog,
    *,
    old_role: Role,
    new_role: Role,
    was_active: bool,
    is_active: bool,
) -> None:
    if new_role is not old_role:
        await cognito.remove_from_group(username, old_role)
        undo.add(
            f"put back into group {old_role}",
            functools.partial(cognito.add_to_group, username, old_role),
        )
        await cognito.add_to_group(username, new_role)
        undo.add(
            f"take out of group {new_role}",
            functools.partial(cognito.remove_from_group, username, new_role),
        )
    if is_active and not was_active:
        await cognito.enable_user(username)
        undo.add("disable again", functools.partial(cognito.disable_user, username))
    elif was_active and not is_active:
        await cognito.disable_user(username)
        undo.add("enable again", functools.partial(cognito.enable_user, username))
        # Not undone: if the deactivation is rolled back, the user merely signs in again.
        await cognito.sign_out_everywhere(username)


# ---------------------------------------------------------------------------------------------
# Reset password


async def reset_password(
    session: AsyncSession,
    cognito: CognitoUserPool,
    user_id: uuid.UUID,
    *,
    actor_id: uuid.UUID | None,
) -> PasswordResetOutcome:
    """Have Cognito email a reset code, or a new invitation to a user who never signed in."""
    with audited("user.reset_password", actor_id, user_id) as audit:
        user = await get_user(session, user_id)
        if not user.is_active:
            raise ConflictError("The user is deactivated; reactivate them before a reset")
        outcome = await cognito.reset_password(user.email)
        audit.details["result"] = outcome.value
        return outcome
