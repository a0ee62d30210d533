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

Every admin action writes one line to the "app.audit" logger: actor, action, target, outcome.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import TypeAdapter
from sqlalchemy import ColumnElement, bindparam, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.core.compensation import UndoLog, undo_on_rollback
from app.core.db import DriverQuery, ReadSessions
from app.core.errors import ConflictError, DomainError, InvalidInputError, NotFoundError
from app.core.roles import Role
from app.models.user import User
from app.schemas.user import (
    PROVINCE_ONLY_FOR_OFFICERS,
    PROVINCE_REQUIRED_FOR_OFFICERS,
    PasswordResetOutcome,
    UserCreate,
    UserList,
    UserListParams,
    UserResponse,
    UserSort,
    UserUpdate,
)
from app.services.cognito import CognitoUserPool, EmailTakenError
from app.services.user_cache import UserCountCache

audit_logger = logging.getLogger("app.audit")

EMAIL_INDEX = "uq_users_lower_email"


async def find_user_by_cognito_id(session: AsyncSession, cognito_user_id: str) -> User | None:
    result = await session.execute(select(User).where(User.cognito_user_id == cognito_user_id))
    return result.scalar_one_or_none()


async def find_user_by_email(session: AsyncSession, email: str) -> User | None:
    result = await session.execute(select(User).where(func.lower(User.email) == email.lower()))
    return result.scalar_one_or_none()


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFoundError("No user with this id")
    return user


# ---------------------------------------------------------------------------------------------
# Audit


@dataclass
class _AuditRecord:
    action: str
    actor_id: uuid.UUID | None
    target_id: uuid.UUID | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def emit(self, outcome: str) -> None:
        audit_logger.info(
            "%s %s",
            self.action,
            outcome,
            extra={
                "actor_id": str(self.actor_id) if self.actor_id else None,
                "action": self.action,
                "target_id": str(self.target_id) if self.target_id else None,
                "outcome": outcome,
                **self.details,
            },
        )

    async def emit_rolled_back(self) -> None:
        self.emit("rolled_back")


@contextmanager
def _audited(
    action: str, actor_id: uuid.UUID | None, target_id: uuid.UUID | None = None
) -> Iterator[_AuditRecord]:
    record = _AuditRecord(action, actor_id, target_id)
    try:
        yield record
    except DomainError as error:
        record.emit(f"refused:{error.code}")
        raise
    except BaseException:
        record.emit("failed")
        raise
    record.emit("success")


def _undo_on_rollback(session: AsyncSession, undo: UndoLog, audit: _AuditRecord) -> None:
    # Registered first, so it runs last: the audit line follows the undo's own log lines.
    audit_log = UndoLog()
    audit_log.add("audit", audit.emit_rolled_back)
    undo_on_rollback(session, audit_log)
    undo_on_rollback(session, undo)


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
    with _audited("user.create", actor_id) as audit:
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
        _undo_on_rollback(session, undo, audit)
        return user


# ---------------------------------------------------------------------------------------------
# List


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _orders(
    key: ColumnElement[Any] | InstrumentedAttribute[Any], descending: bool
) -> tuple[tuple[ColumnElement[Any], ...], tuple[ColumnElement[Any], ...]]:
    """The ORDER BY of a sort, and its reverse (to read a page from the other end).

    The id breaks ties, so a user never shows on two pages or on none.
    """
    ascending_order = (key.asc(), User.id.asc())
    descending_order = (key.desc(), User.id.desc())
    if descending:
        return descending_order, ascending_order
    return ascending_order, descending_order


_SORT_ORDERS: Final = {
    UserSort.CREATED_AT_DESC: _orders(User.created_at, descending=True),
    UserSort.CREATED_AT: _orders(User.created_at, descending=False),
    UserSort.FULL_NAME: _orders(User.full_name, descending=False),
    UserSort.FULL_NAME_DESC: _orders(User.full_name, descending=True),
    # lower(email) is what the unique index holds; emails are stored in lower case anyway.
    UserSort.EMAIL: _orders(func.lower(User.email), descending=False),
    UserSort.EMAIL_DESC: _orders(func.lower(User.email), descending=True),
}

# Every filter is a named bind parameter, so the statements depend only on which filters are
# set: a page's SQL is compiled once per combination and run on the driver (`DriverQuery`).
_FILTERS: Final[dict[str, ColumnElement[bool]]] = {
    "role": User.role == bindparam("role"),
    "is_active": User.is_active == bindparam("is_active"),
    "province": User.responsible_province == bindparam("province"),
    "q": or_(
        User.full_name.ilike(bindparam("q"), escape="\\"),
        User.email.ilike(bindparam("q"), escape="\\"),
    ),
}
# Read as plain rows of just the columns a page returns, validated in one call: loading ORM
# objects cost more than the query itself.
_LISTED_COLUMNS: Final = tuple(User.__table__.c[name] for name in UserResponse.model_fields)
_LISTED_USERS: Final = TypeAdapter(list[UserResponse])
_COUNT_USERS: Final = select(func.count()).select_from(User)


def _filter_values(params: UserListParams) -> dict[str, object]:
    """The value of each filter that is set, as the driver takes it, keyed like `_FILTERS`."""
    values: dict[str, object] = {}
    if params.role is not None:
        values["role"] = params.role.value
    if params.is_active is not None:
        values["is_active"] = params.is_active
    if params.province is not None:
        values["province"] = params.province
    if params.q is not None:
        values["q"] = f"%{_escape_like(params.q)}%"
    return values


@functools.cache
def _page_query(filters: tuple[str, ...], sort: UserSort, from_the_end: bool) -> DriverQuery:
    forward, reverse = _SORT_ORDERS[sort]
    return DriverQuery.of(
        select(*_LISTED_COLUMNS)
        .where(*(_FILTERS[name] for name in filters))
        .order_by(*(reverse if from_the_end else forward))
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
    )


async def list_users(
    sessions: ReadSessions, params: UserListParams, counts: UserCountCache | None = None
) -> UserList:
    """One page of users matching the filters, in a stable order, and how many match in all.

    Read-only, so it reads through an autocommit session of its own rather than the request's
    transaction: no BEGIN and COMMIT round trips.

    The total is counted first (from `counts` while it can vouch for it), so a page in the back
    half is read from the other end of the same index: the last page costs what the first does
    instead of walking past every row before it.
    """
    async with sessions() as session:
        return await _list_users(await session.connection(), params, counts)


async def _list_users(
    connection: AsyncConnection, params: UserListParams, counts: UserCountCache | None
) -> UserList:
    values = _filter_values(params)
    filters = tuple(values)

    async def count() -> int:
        statement = _COUNT_USERS.where(*(_FILTERS[name] for name in filters))
        return (await connection.execute(statement, values)).scalar_one()

    key = (params.role, params.is_active, params.province, params.q)
    total = await count() if counts is None else await counts.get_or_count(key, count)
    start = (params.page - 1) * params.page_size
    end = min(start + params.page_size, total)
    items: list[UserResponse] = []
    if start < end:
        from_the_end = start > total - end
        page = _page_query(filters, params.sort, from_the_end)
        rows = await page.fetch(
            connection,
            **values,
            limit=end - start,
            offset=total - end if from_the_end else start,
        )
        if from_the_end:
            rows.reverse()
        items = _LISTED_USERS.validate_python([dict(row) for row in rows])
    return UserList(items=items, total=total, page=params.page, page_size=params.page_size)


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
    with _audited("user.update", actor_id, user_id) as audit:
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
        _undo_on_rollback(session, undo, audit)
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
    with _audited("user.reset_password", actor_id, user_id) as audit:
        user = await get_user(session, user_id)
        if not user.is_active:
            raise ConflictError("The user is deactivated; reactivate them before a reset")
        outcome = await cognito.reset_password(user.email)
        audit.details["result"] = outcome.value
        return outcome
