"""Work committed with the change that needs it, carried out later (the transactional outbox).

An entry is a step written in the same transaction as the change, so the change and the promise
to carry it out commit or roll back together, and it is deleted once done (`app.services.outbox`).
`kind` names the handler; `key` orders the work: one key is worked on by one holder at a time
(`OutboxLease`), so the steps of one key (a user, a case) are carried out in order whatever the
number of processes, at least once. `id` never changes across tries: the id a consumer
deduplicates on. What a step means (state to reach, a message to send) is its handler's.
"""

import uuid
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.models.base import Base

KIND_LENGTH = 40
KEY_LENGTH = 320  # an email, for the creation intents
LAST_ERROR_LENGTH = 200


class OutboxEntry(Base):
    __tablename__ = "outbox"
    __table_args__ = (
        # What the worker asks for: due entries, oldest first.
        sa.Index("ix_outbox_next_attempt_at_id", "next_attempt_at", "id"),
        sa.Index("ix_outbox_kind_key", "kind", "key"),
    )

    id: Mapped[int] = mapped_column(sa.BigInteger, sa.Identity(), primary_key=True)
    kind: Mapped[str] = mapped_column(sa.String(KIND_LENGTH))
    key: Mapped[str] = mapped_column(sa.String(KEY_LENGTH))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=sa.text("'{}'"))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    # When the entry is next due: now for a new one (later when recorded with `not_before`),
    # later after a failure (backoff). `attempts` 0 and a time to come: recorded for later.
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=func.now())
    attempts: Mapped[int] = mapped_column(server_default=sa.text("0"))
    last_error: Mapped[str | None] = mapped_column(sa.String(LAST_ERROR_LENGTH))


class OutboxLease(Base):
    """Who works on a key until when: one holder per key; a lease past `expires_at` is free.

    The holder's id fences what it writes: an entry is deleted or put back only by the holder of
    its key's lease, so a worker whose lease ran out (paused, cut off) cannot undo newer work.
    """

    __tablename__ = "outbox_leases"

    kind: Mapped[str] = mapped_column(sa.String(KIND_LENGTH), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(KEY_LENGTH), primary_key=True)
    holder: Mapped[uuid.UUID] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column()
