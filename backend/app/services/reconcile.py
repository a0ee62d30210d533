"""Drift between the user pool (Cognito) and the users table: found, reported, repaired.

The table is what the API enforces and Cognito follows it through the outbox
(`app.services.directory_sync`), so drift means something went wrong outside that path: an
outbox row dropped because Cognito did not know the user, a change made by hand in the AWS
console, a create whose undo failed. This module compares the two sides page by page:

- the pool: ListUsers, and ListUsersInGroup once per role group (not a call per user);
- the table: keyset pages of `users`, and the pending `directory_outbox` rows.

Both snapshots take time and requests change users meanwhile, so every difference is confirmed
on fresh reads of that one user on both sides before it is reported. A user with outbox work
younger than the threshold is in flight, not drifted: the worker is on it.

Repairs (`repair`) do only what is safe:
- enabled ≠ `is_active`, groups ≠ role, stale outbox rows: Cognito is made to match the row, by
  the worker's own code (`DirectorySync.carry_out`);
- a Cognito user without a row that never signed in (FORCE_CHANGE_PASSWORD) and is older than
  any create still in progress (`ADOPTABLE_AFTER`): adopted (a row with the role of its single
  role group) or deleted, as asked; a user who signed in is never deleted or adopted;
- a row without a Cognito user: reported only (someone must decide who that person is).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from app.core.db import ReadSessions, Sessionmaker
from app.core.errors import DomainError
from app.core.roles import Role
from app.models.directory_outbox import DirectoryOutboxEntry
from app.models.user import User
from app.services.adoption import ADOPTABLE_AFTER, sub_is_referenced
from app.services.audit import audited
from app.services.cognito import (
    MAX_PAGE_SIZE,
    NEVER_SIGNED_IN_STATUS,
    ROLE_GROUPS,
    CognitoUser,
    CognitoUserPool,
)
from app.services.directory_sync import DirectorySync
from app.services.users import find_user_by_email

logger = logging.getLogger(__name__)

DEFAULT_OUTBOX_THRESHOLD: Final = timedelta(minutes=5)
TABLE_PAGE_SIZE: Final = 1000


class DriftKind(StrEnum):
    COGNITO_USER_WITHOUT_ROW = "cognito_user_without_row"
    ROW_WITHOUT_COGNITO_USER = "row_without_cognito_user"
    ENABLED_MISMATCH = "enabled_mismatch"
    GROUPS_MISMATCH = "groups_mismatch"
    STALE_OUTBOX = "stale_outbox"


class OrphanAction(StrEnum):
    """What `repair` does with a Cognito user without a row that never signed in."""

    REPORT = "report"
    ADOPT = "adopt"
    REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class Drift:
    kind: DriftKind
    detail: str
    user_id: uuid.UUID | None = None
    sub: str | None = None
    email: str | None = None
    # The Cognito user's real username (a UUID in email-as-username and email-alias pools).
    username: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value,
            "detail": self.detail,
            "user_id": str(self.user_id) if self.user_id else None,
            "sub": self.sub,
            "email": self.email,
            "cognito_username": self.username,
        }

    def line(self) -> str:
        who = " ".join(part for part in (str(self.user_id or ""), self.email or "") if part)
        return f"{self.kind.value}: {who or self.sub}: {self.detail}"


@dataclass
class Report:
    cognito_users: int = 0
    rows: int = 0
    # Users whose outbox work is younger than the threshold: not drift, the worker is on it.
    in_flight: int = 0
    drift: list[Drift] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cognito_users": self.cognito_users,
            "rows": self.rows,
            "in_flight": self.in_flight,
            "drift": [item.as_dict() for item in self.drift],
        }


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


@dataclass
class RepairResult:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"done": self.done, "skipped": self.skipped}


# ---------------------------------------------------------------------------------------------
# Reading both sides


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


async def read_rows(read_sessions: ReadSessions) -> dict[str, Row]:
    """Every users row by sub, read in keyset pages (no long transaction, no OFFSET)."""
    rows: dict[str, Row] = {}
    after: uuid.UUID | None = None
    while True:
        query = select(User.id, User.cognito_user_id, User.email, User.role, User.is_active)
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


async def read_pending(read_sessions: ReadSessions) -> dict[uuid.UUID, PendingWork]:
    """Each user's pending outbox rows, with the age of the oldest (the database's clock)."""
    async with read_sessions() as session:
        result = await session.execute(
            select(
                DirectoryOutboxEntry.user_id,
                DirectoryOutboxEntry.id,
                (func.now() - DirectoryOutboxEntry.created_at).label("age"),
                DirectoryOutboxEntry.attempts,
                DirectoryOutboxEntry.last_error,
            ).order_by(DirectoryOutboxEntry.id)
        )
        entries = result.all()
    pending: dict[uuid.UUID, PendingWork] = {}
    for entry in entries:
        seen = pending.get(entry.user_id)
        if seen is None:
            pending[entry.user_id] = PendingWork(
                (entry.id,), entry.age, entry.attempts, entry.last_error
            )
        else:
            pending[entry.user_id] = PendingWork(
                (*seen.entry_ids, entry.id),
                max(seen.age, entry.age),
                max(seen.attempts, entry.attempts),
                entry.last_error or seen.last_error,
            )
    return pending


# ---------------------------------------------------------------------------------------------
# Comparing


def _groups_text(groups: frozenset[str]) -> str:
    return "[" + ", ".join(sorted(groups)) + "]"


def _age_text(age: timedelta) -> str:
    return f"{int(age.total_seconds() // 60)} min"


def _mismatches(row: Row, pool_user: PoolUser) -> list[Drift]:
    found = []
    if pool_user.user.enabled != row.is_active:
        state = "enabled" if pool_user.user.enabled else "disabled"
        found.append(
            Drift(
                DriftKind.ENABLED_MISMATCH,
                f"Cognito user {state}, row {'active' if row.is_active else 'deactivated'}",
                row.id,
                row.sub,
                row.email,
                pool_user.user.username,
            )
        )
    if pool_user.role_groups != {row.role.value}:
        found.append(
            Drift(
                DriftKind.GROUPS_MISMATCH,
                f"Cognito groups {_groups_text(pool_user.role_groups)}, row role {row.role.value}",
                row.id,
                row.sub,
                row.email,
                pool_user.user.username,
            )
        )
    return found


def compare(
    pool: Mapping[str, PoolUser],
    rows: Mapping[str, Row],
    pending: Mapping[uuid.UUID, PendingWork],
    threshold: timedelta,
) -> Report:
    """The differences between two snapshots (candidates: `find_drift` confirms them)."""
    report = Report(cognito_users=len(pool), rows=len(rows))
    for sub, row in rows.items():
        pool_user = pool.get(sub)
        work = pending.get(row.id)
        if work is not None and work.age > threshold:
            report.drift.append(
                Drift(
                    DriftKind.STALE_OUTBOX,
                    f"{len(work.entry_ids)} outbox row(s) pending for {_age_text(work.age)}, "
                    f"{work.attempts} attempt(s), last error {work.last_error or 'none'}",
                    row.id,
                    row.sub,
                    row.email,
                )
            )
        if pool_user is None:
            report.drift.append(
                Drift(
                    DriftKind.ROW_WITHOUT_COGNITO_USER,
                    "no Cognito user has this row's sub",
                    row.id,
                    row.sub,
                    row.email,
                )
            )
        elif work is not None and work.age <= threshold:
            report.in_flight += 1
        else:
            report.drift.extend(_mismatches(row, pool_user))
    for sub, pool_user in pool.items():
        if sub not in rows:
            user = pool_user.user
            report.drift.append(
                Drift(
                    DriftKind.COGNITO_USER_WITHOUT_ROW,
                    f"no row; Cognito status {user.status}, "
                    f"{'enabled' if user.enabled else 'disabled'}, "
                    f"groups {_groups_text(pool_user.role_groups)}",
                    None,
                    sub,
                    user.email,
                    user.username,
                )
            )
    return report


# ---------------------------------------------------------------------------------------------
# Confirming a candidate on fresh reads of both sides


async def _fresh_row(read_sessions: ReadSessions, sub: str) -> Row | None:
    async with read_sessions() as session:
        row = (
            await session.execute(
                select(User.id, User.cognito_user_id, User.email, User.role, User.is_active).where(
                    User.cognito_user_id == sub
                )
            )
        ).one_or_none()
    if row is None:
        return None
    return Row(row.id, row.cognito_user_id, row.email, row.role, row.is_active)


async def _fresh_pool_user(cognito: CognitoUserPool, username: str, sub: str) -> PoolUser | None:
    found = await cognito.find_user(username)
    if found is None or found.sub != sub:
        return None
    groups = await cognito.groups_of(found.username)
    return PoolUser(found, frozenset(groups & set(ROLE_GROUPS)))


async def _confirmed(
    item: Drift,
    cognito: CognitoUserPool,
    read_sessions: ReadSessions,
    pool: Mapping[str, PoolUser],
    pending: Mapping[uuid.UUID, PendingWork],
    threshold: timedelta,
) -> list[Drift]:
    """`item` as it stands now: the same, changed, or gone."""
    assert item.sub is not None
    if item.kind is DriftKind.STALE_OUTBOX:
        return [item]  # read from the outbox itself
    row = await _fresh_row(read_sessions, item.sub)
    if item.kind is DriftKind.COGNITO_USER_WITHOUT_ROW:
        return [] if row is not None else [item]
    if row is None:
        return []  # the row went away meanwhile
    snapshot = pool.get(item.sub)
    # By the email the row has now: every kind of pool accepts it (as username or alias).
    pool_user = await _fresh_pool_user(
        cognito, snapshot.user.username if snapshot else row.email, item.sub
    )
    if pool_user is None:
        return [item] if item.kind is DriftKind.ROW_WITHOUT_COGNITO_USER else []
    work = pending.get(row.id)
    if work is not None and work.age <= threshold:
        return []
    return [drift for drift in _mismatches(row, pool_user) if drift.kind is item.kind]


async def find_drift(
    cognito: CognitoUserPool,
    read_sessions: ReadSessions,
    *,
    threshold: timedelta = DEFAULT_OUTBOX_THRESHOLD,
    page_size: int = MAX_PAGE_SIZE,
) -> Report:
    """Compare the pool and the table; every difference reported is confirmed on fresh reads.

    Raises the adapter's domain errors (Cognito unreachable, throttled, misconfigured) and the
    database's when a side cannot be read.
    """
    # The pool first: a create makes its Cognito user before its row, so a user created
    # meanwhile is at worst a row whose Cognito user the snapshot missed, and confirmation
    # finds it.
    pool = await read_pool(cognito, page_size)
    rows = await read_rows(read_sessions)
    pending = await read_pending(read_sessions)
    candidates = compare(pool, rows, pending, threshold)
    confirmed: list[Drift] = []
    for item in candidates.drift:
        confirmed += await _confirmed(item, cognito, read_sessions, pool, pending, threshold)
    candidates.drift = confirmed
    return candidates


# ---------------------------------------------------------------------------------------------
# Repairing


async def _adopt(sessions: Sessionmaker, pool_user: PoolUser, email: str) -> tuple[bool, str]:
    """A row for a Cognito user that never signed in: with the role of its one role group."""
    if len(pool_user.role_groups) != 1:
        return False, (
            f"not adopted: in {len(pool_user.role_groups)} role groups "
            f"{_groups_text(pool_user.role_groups)}, so its role is unknown; put it in one "
            "group and run again, or remove it"
        )
    role = Role(next(iter(pool_user.role_groups)))
    if role is Role.OFFICER:
        return False, (
            "not adopted: an OFFICER needs a responsible province, which Cognito does not "
            "know; create the user through the API instead, or remove it"
        )
    user = User(
        cognito_user_id=pool_user.user.sub,
        email=email,
        # Cognito holds no name this system set; an admin renames the user.
        full_name=email,
        role=role,
        responsible_province=None,
        is_active=pool_user.user.enabled,
    )
    try:
        async with sessions() as session, session.begin():
            if await find_user_by_email(session, email) is not None:
                return False, "not adopted: a row with another sub already has this email"
            with audited("user.reconcile_adopt", None) as audit:
                session.add(user)
                await session.flush()
                audit.target_id = user.id
    except IntegrityError:
        return False, "not adopted: a row with this email or sub was written meanwhile"
    return True, f"adopted as {role.value} (row {user.id}; full name set to the email)"


async def _repair_orphan(
    item: Drift,
    pool_user: PoolUser,
    cognito: CognitoUserPool,
    sessions: Sessionmaker,
    read_sessions: ReadSessions,
    orphans: OrphanAction,
) -> tuple[bool, str]:
    user = pool_user.user
    if orphans is OrphanAction.REPORT:
        return False, "reported only (--orphans adopt or remove to act)"
    if user.status != NEVER_SIGNED_IN_STATUS:
        return False, (
            f"left alone: status {user.status}, the user has signed in; add their row by hand "
            "or delete them in Cognito yourself"
        )
    if user.created_at is None or datetime.now(UTC) - user.created_at < ADOPTABLE_AFTER:
        return False, "left alone: created moments ago, a create may still be in progress"
    if await sub_is_referenced(read_sessions, user.sub):
        return False, "left alone: a row refers to it now"
    if orphans is OrphanAction.ADOPT:
        if not user.email:
            return False, "not adopted: the Cognito user has no email"
        return await _adopt(sessions, pool_user, user.email.lower())
    with cognito.deadline():
        await cognito.delete_user_if_sub(user.username, user.sub)
    return True, "removed from Cognito (it never signed in)"


async def repair(
    report: Report,
    cognito: CognitoUserPool,
    directory: DirectorySync,
    sessions: Sessionmaker,
    read_sessions: ReadSessions,
    *,
    orphans: OrphanAction = OrphanAction.REPORT,
) -> RepairResult:
    """Repair what is safe to repair in `report` (see the module docstring)."""
    result = RepairResult()
    pending = await read_pending(read_sessions)
    repaired_users: set[uuid.UUID] = set()
    for item in report.drift:
        label = item.line()
        if item.kind in (
            DriftKind.ENABLED_MISMATCH,
            DriftKind.GROUPS_MISMATCH,
            DriftKind.STALE_OUTBOX,
        ):
            assert item.user_id is not None
            if item.user_id in repaired_users:
                continue
            repaired_users.add(item.user_id)
            work = pending.get(item.user_id)
            # The worker's own step: Cognito made to match the row as it is now, and the
            # user's outbox rows done with.
            if await directory.carry_out(item.user_id, list(work.entry_ids) if work else []):
                result.done.append(f"{label} -> Cognito now matches the row")
            else:
                result.skipped.append(f"{label} -> could not be carried out (see the log)")
        elif item.kind is DriftKind.COGNITO_USER_WITHOUT_ROW:
            assert item.sub is not None
            assert item.username is not None
            found = await cognito.find_user(item.username)
            if found is None or found.sub != item.sub:
                result.skipped.append(f"{label} -> gone from Cognito meanwhile")
                continue
            groups = await cognito.groups_of(found.username)
            pool_user = PoolUser(found, frozenset(groups & set(ROLE_GROUPS)))
            try:
                done, what = await _repair_orphan(
                    item, pool_user, cognito, sessions, read_sessions, orphans
                )
            except DomainError as error:
                done, what = False, f"failed: {error.detail}"
            (result.done if done else result.skipped).append(f"{label} -> {what}")
        else:
            result.skipped.append(
                f"{label} -> reported only: find out who this is; recreate the user through "
                "the API or deactivate the row"
            )
    return result
