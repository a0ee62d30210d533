"""Directory work committed with the user change that needs it (the transactional outbox).

A row says "make the user directory (Cognito) match this user's row": enabled as `is_active`,
in the group of its `role`, signed out when deactivated. It is written in the same transaction
as the change, so the change and the promise to carry it out commit or roll back together, and
it is deleted once done (`app.services.directory_sync`). Rows are state to reach, not steps
to replay, so several rows of one user are carried out as one.
"""

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import func
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base

LAST_ERROR_LENGTH = 200


class DirectoryOutboxEntry(Base):
    __tablename__ = "directory_outbox"
    __table_args__ = (
        # What the worker asks for: due rows, oldest first.
        sa.Index("ix_directory_outbox_next_attempt_at_id", "next_attempt_at", "id"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(
        sa.ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    # When the row is next due: now for a new row; later after a failure (backoff), or while a
    # worker holds it (its lease).
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=func.now())
    attempts: Mapped[int] = mapped_column(server_default=sa.text("0"))
    last_error: Mapped[str | None] = mapped_column(sa.String(LAST_ERROR_LENGTH))
