"""The audit trail of admin actions: one line per action on the "app.audit" logger.

Each line names the actor, the action, the target and the outcome: `success`, `refused:<code>`
(a domain error the caller was told about), `failed` (anything else), or `rolled_back` when the
action succeeded in the service but its transaction did not commit.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from app.core.compensation import UndoLog, undo_on_rollback
from app.core.errors import DomainError

audit_logger = logging.getLogger("app.audit")


@dataclass
class AuditRecord:
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
def audited(
    action: str, actor_id: uuid.UUID | None, target_id: uuid.UUID | None = None
) -> Iterator[AuditRecord]:
    """Audit the block: the outcome is written when it ends, however it ends."""
    record = AuditRecord(action, actor_id, target_id)
    try:
        yield record
    except DomainError as error:
        record.emit(f"refused:{error.code}")
        raise
    except BaseException:
        record.emit("failed")
        raise
    record.emit("success")


def undo_and_audit_on_rollback(session: AsyncSession, undo: UndoLog, audit: AuditRecord) -> None:
    """Run `undo` and write a `rolled_back` line if the session's transaction does not commit."""
    # Registered first, so it runs last: the audit line follows the undo's own log lines.
    audit_log = UndoLog()
    audit_log.add("audit", audit.emit_rolled_back)
    undo_on_rollback(session, audit_log)
    undo_on_rollback(session, undo)
