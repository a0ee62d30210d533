"""Reading both sides: the pool (Cognito) and the table, whole or one user at a time.

Whole: ListUsers, and ListUsersInGroup once per role group (not a call per user); `users` in
keyset pages; the pending directory entries and create intents of the outbox. One user: the
fresh reads that confirm a difference and that every repair makes right before it acts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import ReadSessions
from app.core.roles import Role
from app.models.outbox import OutboxEntry
from app.models.user import User
from app.services.adoption import CREATION_KIND
from app.services.cognito import MAX_PAGE_SIZE, ROLE_GROUPS, CognitoUser, CognitoUserPool
from app.services.directory_sync import pending_work

TABLE_PAGE_SIZE: Final = 1000


@dataclass(frozen=True, slots=True)
class PoolUser:
    user: CognitoUser
    role_groups: frozenset[str]


@dataclass(frozen=True, slots=True)
class Row:
    id: uuid.UUID
    sub: str
    email: str
    role: Role
    is_active: bool


@dataclass(frozen=True, slots=True)
class PendingWork:
    entry_ids: tuple[int, ...]
    age: timedelta
    attempts: int
    last_error: str | None


async def read_pool(
    cognito: CognitoUserPool, page_size: int = MAX_PAGE_SIZE
) -> dict[str, PoolUser]:
    """Every user of the pool by sub, with their role groups."""
    users: dict[str, CognitoUser] = {}
    token: str | None = None
    while True:
        page, token = await cognito.users_page(token, limit=page_size)
        users.update((user.sub, user) for user in page)
        if token is None:
            break
    groups: dict[str, set[str]] = {}
    for role in Role:
        token = None
        while True:
            members, token = await cognito.group_members_page(role, token, limit=page_size)
            for member in members:
                groups.setdefault(member.sub, set()).add(role.value)
            if token is None:
                break
    return {sub: PoolUser(user, frozenset(groups.get(sub, ()))) for sub, user in users.items()}


_ROW_COLUMNS: Final = (User.id, User.cognito_user_id, User.email, User.role, User.is_active)


async def read_rows(read_sessions: ReadSessions) -> dict[str, Row]:
    """Every users row by sub, read in keyset pages (no long transaction, no OFFSET)."""
    rows: dict[str, Row] = {}
    after: uuid.UUID | None = None
    while True:
        query = select(*_ROW_COLUMNS)
        if after is not None:
            query = query.where(User.id > after)
        async with read_sessions() as session:
            page = (await session.execute(query.order_by(User.id).limit(TABLE_PAGE_SIZE))).all()
        for row in page:
            rows[row.cognito_user_id] = Row(
                row.id, row.cognito_user_id, row.email, row.role, row.is_active
            )
        if len(page) < TABLE_PAGE_SIZE:
            return rows
        after = page[-1].id


async def read_pending(
    read_sessions: ReadSessions, user_id: uuid.UUID | None = None
) -> dict[uuid.UUID, PendingWork]:
    """Each user's pending outbox entries (or `user_id`'s, as they are now), with the age of the
    oldest (the database's clock)."""
    async with read_sessions() as session:
        result = await session.execute(
            select(
                OutboxEntry.key,
                OutboxEntry.id,
                (func.now() - OutboxEntry.created_at).label("age"),
                OutboxEntry.attempts,
                OutboxEntry.last_error,
            )
            # A read-back still due counts: a late landing it will put right is not drift.
            .where(*pending_work(user_id, confirmations=True))
            .order_by(OutboxEntry.id)
        )
        entries = result.all()
    pending: dict[uuid.UUID, PendingWork] = {}
    for entry in entries:
        user_id = uuid.UUID(entry.key)
        seen = pending.get(user_id)
        if seen is None:
            pending[user_id] = PendingWork((entry.id,), entry.age, entry.attempts, entry.last_error)
        else:
            pending[user_id] = PendingWork(
                (*seen.entry_ids, entry.id),
                max(seen.age, entry.age),
                max(seen.attempts, entry.attempts),
                entry.last_error or seen.last_error,
            )
    return pending


async def fresh_pending(read_sessions: ReadSessions, user_id: uuid.UUID) -> PendingWork | None:
    """The user's pending directory work as it is now (after any repair made meanwhile)."""
    return (await read_pending(read_sessions, user_id)).get(user_id)


async def creates_in_flight(
    read_sessions: ReadSessions, email: str | None = None
) -> dict[str, timedelta]:
    """The emails (lower-cased) whose create intent is pending, with its age (the database's
    clock): a Cognito user of such an email without a row is a create still being finished."""
    query = select(
        OutboxEntry.key, func.max(func.now() - OutboxEntry.created_at).label("age")
    ).where(OutboxEntry.kind == CREATION_KIND, OutboxEntry.payload.has_key("began"))
    if email is not None:
        query = query.where(OutboxEntry.key == email.lower())
    async with read_sessions() as session:
        found = (await session.execute(query.group_by(OutboxEntry.key))).all()
    return {row.key: row.age for row in found}


async def directory_work_pending(session: AsyncSession, user_id: uuid.UUID) -> bool:
    """Whether Cognito has yet to follow a change of the user (an outbox entry waits).

    For an active row whose Cognito user is disabled, that change is a reactivation (or one
    made while active): the worker will enable the Cognito user.
    """
    found = await session.scalar(
        select(OutboxEntry.id).where(*pending_work(user_id, confirmations=True)).limit(1)
    )
    return found is not None


async def fresh_row(read_sessions: ReadSessions, sub: str) -> Row | None:
    """The row with this sub as it is now."""
    async with read_sessions() as session:
        row = (
            await session.execute(select(*_ROW_COLUMNS).where(User.cognito_user_id == sub))
        ).one_or_none()
    if row is None:
        return None
    return Row(row.id, row.cognito_user_id, row.email, row.role, row.is_active)


async def fresh_cognito_user(
    cognito: CognitoUserPool, username: str, sub: str
) -> CognitoUser | None:
    """The Cognito user `username` as it is now, if it is still the one with id `sub`."""
    found = await cognito.find_user(username)
    if found is None or found.sub != sub:
        return None
    return found


async def fresh_pool_user(cognito: CognitoUserPool, username: str, sub: str) -> PoolUser | None:
    """The Cognito user and its role groups as they are now (None: gone, or another user)."""
    found = await fresh_cognito_user(cognito, username, sub)
    if found is None:
        return None
    groups = await cognito.groups_of(found.username)
    return PoolUser(found, frozenset(groups & set(ROLE_GROUPS)))
