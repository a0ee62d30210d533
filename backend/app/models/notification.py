"""In-app notifications shown to a user."""

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.models.base import Base, CreatedAtMixin, uuid_pk
from app.models.case import Case
from app.models.user import User


class Notification(CreatedAtMixin, Base):
    __tablename__ = "notifications"
    # Serves "my unread notifications" (read_at IS NULL) as well as the full inbox.
    __table_args__ = (sa.Index("ix_notifications_user_id_read_at", "user_id", "read_at"),)

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(sa.ForeignKey("users.id", ondelete="CASCADE"))
    case_id: Mapped[uuid.UUID | None] = mapped_column(
        sa.ForeignKey("cases.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(sa.String(50))
    title: Mapped[str] = mapped_column(sa.String(200))
    body: Mapped[str | None] = mapped_column(sa.Text)
    read_at: Mapped[datetime | None]

    user: Mapped[User] = relationship(lazy="raise")
    case: Mapped[Case | None] = relationship(lazy="raise")
