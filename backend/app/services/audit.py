"""The audit trail of admin actions: one line per action on the "app.audit" logger.

Each line names the actor, the action, the target and the outcome, and is written once the
outcome is known, never before:

- `success`: the change is made. A change the request's transaction carries (create, update)
  is made when that transaction commits, so its line is written after the commit
  (`audit_at_commit`): a line written earlier would claim a change that a failed commit then
  took back. An action without a database write (a password reset: the Cognito call is the
  whole action, and nothing a commit does can take it back) is made when its call returns.
- `refused:<code>`: a domain error the caller was told about; nothing was changed.
- `failed`: anything else raised inside the service; its transaction rolls back.
- `dropped:<reason>`: a create whose request ended without an answer, finished by the outbox
  worker with nothing made (no Cognito user appeared, or the one there is someone else's);
  written once the intent's deletion commits.
- `rolled_back`: the service succeeded but its transaction did not commit (the commit failed,
  or something after the service raised); what the action changed outside the database has
  been undone by then.

A commit that fails because the connection was lost while COMMIT was under way cannot tell
whether the server committed; it is written as `rolled_back`, as the request's answer says.
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.compensation import UndoLog, after_commit, undo_on_rollback
from app.core.errors import DomainError

audit_logger = logging.getLogger("app.audit")


@dataclass
class AuditRecord:
    action: str
    actor_id: uuid.UUID | None
    target_id: uuid.UUID | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # Set by `audit_at_commit`: the transaction's end, not the block's, decides the outcome.
    decided_at_commit: bool = field(default=False, init=False)
    written: bool = field(default=False, init=False)

    def emit(self, outcome: str) -> None:
        """Write the action's one line; any later outcome is ignored."""
        if self.written:
            return
        self.written = True
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
def audited(
    action: str, actor_id: uuid.UUID | None, target_id: uuid.UUID | None = None
) -> Iterator[AuditRecord]:
    """Audit the block: a refusal or failure is written when it raises; its success when it
    returns, or, after `audit_at_commit`, when the transaction commits."""
    record = AuditRecord(action, actor_id, target_id)
    try:
        yield record
    except DomainError as error:
        record.emit(f"refused:{error.code}")
        raise
    except BaseException:
        record.emit("failed")
        raise
    if not record.decided_at_commit:
        record.emit("success")


def audit_at_commit(
    session: AsyncSession,
    audit: AuditRecord,
    undo: UndoLog | None = None,
    *,
    outcome: str = "success",
) -> None:
    """Let the session's transaction decide `audit`'s outcome: `outcome` once it has committed;
    otherwise `undo` runs (the action's changes outside the database) and `rolled_back` follows.

    Called last in the audited block, once the service's work has succeeded.
    """
    audit.decided_at_commit = True
    # Registered first, so it runs last: the audit line follows the undo's own log lines.
    audit_log = UndoLog()
    audit_log.add("audit", audit.emit_rolled_back)
    undo_on_rollback(session, audit_log)
    if undo is not None:
        undo_on_rollback(session, undo)
    after_commit(session, functools.partial(audit.emit, outcome))
