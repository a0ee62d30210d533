"""Repairing the drift a report found, only where the repair cannot widen anyone's access.

- Cognito enabled while the row is deactivated, groups ≠ role, stale outbox entries: Cognito is
  made to match the row, by the worker's own step (`directory_sync.carry_out_now`).
- Cognito disabled while the row is active: disabled wins. The row is deactivated and its
  sessions revoked, as a deactivation through the API does, unless directory work for the user
  is pending (a reactivation the worker will carry out). Nothing else is repaired for that user
  in the run, so no step re-enables the Cognito user on the way.
- A Cognito user without a row: adopted with the role the operator names, removed if asked,
  otherwise reported (`app.services.reconcile.orphans`).
- A row without a Cognito user: reported only (someone must decide who that person is).
Every repair reads the user afresh right before it acts.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import select

from app.core.db import ReadSessions, Sessionmaker
from app.core.errors import ConflictError, DomainError
from app.models.user import User
from app.schemas.user import UserCreate
from app.services.audit import audited
from app.services.cognito import CognitoUserPool
from app.services.directory_sync import carry_out_now, record_directory_pass
from app.services.outbox import OutboxWorker
from app.services.reconcile.drift import Drift, DriftKind, Report
from app.services.reconcile.orphans import OrphanAction, names, repair_orphan
from app.services.reconcile.snapshot import (
    directory_work_pending,
    fresh_cognito_user,
    fresh_pending,
    fresh_row,
)
from app.services.users import sessions_revoked_now

_COGNITO_FOLLOWS_THE_ROW = (
    DriftKind.ENABLED_MISMATCH,
    DriftKind.GROUPS_MISMATCH,
    DriftKind.STALE_OUTBOX,
)


@dataclass
class RepairResult:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"done": self.done, "skipped": self.skipped}

    def add(self, item: Drift | str, done: bool, what: str) -> None:
        label = item.line() if isinstance(item, Drift) else item
        (self.done if done else self.skipped).append(f"{label} -> {what}")


async def deactivate_row(
    item: Drift, cognito: CognitoUserPool, sessions: Sessionmaker
) -> tuple[bool, str]:
    """The row of a user disabled in Cognito deactivated, unless a reactivation is pending."""
    assert item.user_id is not None
    assert item.sub is not None
    assert item.username is not None
    found = await fresh_cognito_user(cognito, item.username, item.sub)
    if found is None:
        return False, "gone from Cognito meanwhile"
    if found.enabled:
        return False, "enabled in Cognito meanwhile"
    try:
        with audited("user.reconcile_deactivate", None, item.user_id):
            async with sessions() as session, session.begin():
                # Locked as an update through the API locks it, so a reactivation committed
                # before this is seen (its outbox entry), and one after it comes after it.
                user = await session.scalar(
                    select(User).where(User.id == item.user_id).with_for_update()
                )
                if user is None or user.cognito_user_id != item.sub:
                    raise ConflictError("the row changed meanwhile")
                if not user.is_active:
                    raise ConflictError("deactivated meanwhile")
                if await directory_work_pending(session, user.id):
                    raise ConflictError(
                        "a reactivation is pending in the outbox; the worker will enable "
                        "the Cognito user"
                    )
                user.is_active = False
                user.sessions_revoked_at = await sessions_revoked_now(session)
                # As any deactivation: the worker signs the user out everywhere.
                record_directory_pass(session, user.id, sign_out=True)
    except ConflictError as error:
        return False, f"left alone: {error.detail}"
    return True, "row deactivated (disabled in Cognito wins) and its sessions revoked"


async def _enabled_in_cognito_if_active(
    item: Drift, cognito: CognitoUserPool, read_sessions: ReadSessions
) -> bool:
    """Whether carrying out the row leaves Cognito's enabled flag as it is or narrows it."""
    assert item.sub is not None
    row = await fresh_row(read_sessions, item.sub)
    if row is None or not row.is_active:
        return True
    # A stale outbox item names no Cognito username; the row's email finds the user in every
    # kind of pool.
    found = await fresh_cognito_user(cognito, item.username or row.email, item.sub)
    return found is None or found.enabled


async def _carry_out(
    item: Drift,
    cognito: CognitoUserPool,
    worker: OutboxWorker,
    read_sessions: ReadSessions,
) -> tuple[bool, str]:
    assert item.user_id is not None
    # As it is now: an earlier repair of this run may have recorded work for the user.
    work = await fresh_pending(read_sessions, item.user_id)
    # Without pending work, making Cognito match an active row would enable a user someone
    # disabled in Cognito since the report: that one is the next run's disabled_in_cognito.
    if work is None and not await _enabled_in_cognito_if_active(item, cognito, read_sessions):
        return False, "left alone: disabled in Cognito meanwhile (disabled wins; run again)"
    # The worker's own step: Cognito made to match the row as it is now, and the user's
    # outbox entries done with.
    if await carry_out_now(worker, item.user_id):
        return True, "Cognito now matches the row"
    return False, "could not be carried out (see the log)"


# A row whose Cognito user is gone: not this command's to recreate.
_REPORTED_ONLY: Final = (
    "reported only: find out who this is; recreate the user through the API or deactivate the row"
)


async def repair(
    report: Report,
    cognito: CognitoUserPool,
    worker: OutboxWorker,
    sessions: Sessionmaker,
    read_sessions: ReadSessions,
    *,
    orphans: OrphanAction = OrphanAction.REPORT,
    adoption: UserCreate | None = None,
) -> RepairResult:
    """Repair what is safe to repair in `report` (see the module docstring).

    `adoption`: the one Cognito user without a row to adopt (by its email), with its role;
    `worker`: an outbox worker (never started) whose directory step carries a user out.
    """
    result = RepairResult()
    disabled = {item.user_id for item in report.drift if item.kind is DriftKind.DISABLED_IN_COGNITO}
    repaired_users: set[uuid.UUID] = set()
    adopted = False
    for item in report.drift:
        try:
            if item.kind is DriftKind.DISABLED_IN_COGNITO:
                result.add(item, *await deactivate_row(item, cognito, sessions))
            elif item.kind in _COGNITO_FOLLOWS_THE_ROW:
                assert item.user_id is not None
                if item.user_id in disabled:
                    result.add(
                        item,
                        False,
                        "left alone: disabled in Cognito (its disabled_in_cognito item)",
                    )
                elif item.user_id not in repaired_users:
                    repaired_users.add(item.user_id)
                    result.add(item, *await _carry_out(item, cognito, worker, read_sessions))
            elif item.kind is DriftKind.COGNITO_USER_WITHOUT_ROW:
                done, what = await repair_orphan(
                    item,
                    cognito,
                    sessions,
                    read_sessions,
                    orphans=orphans,
                    adoption=adoption,
                )
                adopted |= names(adoption, item)
                result.add(item, done, what)
            else:
                result.add(item, False, _REPORTED_ONLY)
        except DomainError as error:
            result.add(item, False, f"failed: {error.detail}")
    if adoption is not None and not adopted:
        result.add(
            f"adopt {adoption.email}",
            False,
            "not adopted: no Cognito user without a row has this email",
        )
    return result
