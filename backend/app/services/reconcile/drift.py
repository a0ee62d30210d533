"""Comparing the two sides: the kinds of drift, the report, and confirming each difference.

Both snapshots take time and requests change users meanwhile, so every difference found is
confirmed on fresh reads of that one user on both sides before it is reported. A user with
outbox work younger than the threshold is in flight, not drifted: the worker is on it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import StrEnum
from typing import Any, Final

from app.core.db import ReadSessions
from app.services.cognito import MAX_PAGE_SIZE, CognitoUserPool
from app.services.reconcile.snapshot import (
    PendingWork,
    PoolUser,
    Row,
    creates_in_flight,
    fresh_pending,
    fresh_pool_user,
    fresh_row,
    read_pending,
    read_pool,
    read_rows,
)

DEFAULT_OUTBOX_THRESHOLD: Final = timedelta(minutes=5)


class DriftKind(StrEnum):
    COGNITO_USER_WITHOUT_ROW = "cognito_user_without_row"
    ROW_WITHOUT_COGNITO_USER = "row_without_cognito_user"
    # The Cognito user enabled, the row deactivated: Cognito is made to match the row.
    ENABLED_MISMATCH = "enabled_mismatch"
    # The Cognito user disabled (e.g. in the console), the row active: disabled wins, the row
    # is deactivated, unless a reactivation waits in the outbox.
    DISABLED_IN_COGNITO = "disabled_in_cognito"
    GROUPS_MISMATCH = "groups_mismatch"
    STALE_OUTBOX = "stale_outbox"


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


def groups_text(groups: frozenset[str]) -> str:
    return "[" + ", ".join(sorted(groups)) + "]"


def _age_text(age: timedelta) -> str:
    return f"{int(age.total_seconds() // 60)} min"


def _mismatches(row: Row, pool_user: PoolUser) -> list[Drift]:
    found = []
    who = (row.id, row.sub, row.email, pool_user.user.username)
    if pool_user.user.enabled and not row.is_active:
        found.append(
            Drift(DriftKind.ENABLED_MISMATCH, "Cognito user enabled, row deactivated", *who)
        )
    if not pool_user.user.enabled and row.is_active:
        found.append(
            Drift(DriftKind.DISABLED_IN_COGNITO, "Cognito user disabled, row active", *who)
        )
    if pool_user.role_groups != {row.role.value}:
        found.append(
            Drift(
                DriftKind.GROUPS_MISMATCH,
                f"Cognito groups {groups_text(pool_user.role_groups)}, row role {row.role.value}",
                *who,
            )
        )
    return found


def compare(
    pool: Mapping[str, PoolUser],
    rows: Mapping[str, Row],
    pending: Mapping[uuid.UUID, PendingWork],
    threshold: timedelta,
    creating: Mapping[str, timedelta] | None = None,
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
            intent_age = (creating or {}).get((user.email or "").lower())
            if intent_age is not None and intent_age <= threshold:
                report.in_flight += 1  # a create the request or the worker is finishing
                continue
            report.drift.append(
                Drift(
                    DriftKind.COGNITO_USER_WITHOUT_ROW,
                    f"no row; Cognito status {user.status}, "
                    f"{'enabled' if user.enabled else 'disabled'}, "
                    f"groups {groups_text(pool_user.role_groups)}",
                    None,
                    sub,
                    user.email,
                    user.username,
                )
            )
    return report


async def _confirmed(
    item: Drift,
    cognito: CognitoUserPool,
    read_sessions: ReadSessions,
    pool: Mapping[str, PoolUser],
    threshold: timedelta,
) -> list[Drift]:
    """`item` as it stands now (row, Cognito user, pending work and create intents read
    afresh): the same, changed, or gone."""
    assert item.sub is not None
    if item.kind is DriftKind.STALE_OUTBOX:
        return [item]  # read from the outbox itself
    row = await fresh_row(read_sessions, item.sub)
    if item.kind is DriftKind.COGNITO_USER_WITHOUT_ROW:
        if row is not None:
            return []
        creating = await creates_in_flight(read_sessions, item.email or "")
        in_flight = any(age <= threshold for age in creating.values())
        return [] if in_flight else [item]
    if row is None:
        return []  # the row went away meanwhile
    snapshot = pool.get(item.sub)
    # By the email the row has now: every kind of pool accepts it (as username or alias).
    pool_user = await fresh_pool_user(
        cognito, snapshot.user.username if snapshot else row.email, item.sub
    )
    if pool_user is None:
        return [item] if item.kind is DriftKind.ROW_WITHOUT_COGNITO_USER else []
    # The pending work as it is now, not the snapshot's: a change recorded since is in flight.
    work = await fresh_pending(read_sessions, row.id)
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
    creating = await creates_in_flight(read_sessions)
    candidates = compare(pool, rows, pending, threshold, creating)
    confirmed: list[Drift] = []
    for item in candidates.drift:
        confirmed += await _confirmed(item, cognito, read_sessions, pool, threshold)
    candidates.drift = confirmed
    return candidates
