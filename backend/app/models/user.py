"""Staff accounts; identity lives in Cognito, authorisation data lives here."""

import uuid
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import func
from sqlalchemy.orm import Mapped, mapped_column

from app.core.roles import Role
from app.models.base import Base, TimestampMixin, str_enum, uuid_pk

PROVINCE_LENGTH = 100


class User(TimestampMixin, Base):
    __tablename__ = "users"
    __table_args__ = (
        # Exactly the officers carry a province: it scopes their cases, and on anyone else it
        # would be a stale value waiting to be misread.
        sa.CheckConstraint(
            "(role = 'OFFICER') = (responsible_province IS NOT NULL)",
            name="officer_has_province",
        ),
        # Cognito treats emails case-insensitively, so must we.
        sa.Index("uq_users_lower_email", func.lower(sa.text("email")), unique=True),
        # The admin user list: filters on role / is_active / province, newest first.
        sa.Index("ix_users_created_at_id", sa.text("created_at DESC"), sa.text("id DESC")),
        sa.Index("ix_users_role", "role"),
        sa.Index("ix_users_responsible_province", "responsible_province"),
    )

    id: Mapped[uuid.UUID] = uuid_pk()
    cognito_user_id: Mapped[str] = mapped_column(sa.String(128), unique=True)
    email: Mapped[str] = mapped_column(sa.String(320))
    full_name: Mapped[str] = mapped_column(sa.String(200))
    role: Mapped[Role] = mapped_column(str_enum(Role, "role"))
    responsible_province: Mapped[str | None] = mapped_column(sa.String(PROVINCE_LENGTH))
    is_active: Mapped[bool] = mapped_column(server_default=sa.true(), default=True)
    # Access tokens issued before this instant are refused (deactivation revokes them), so a
    # token from before a deactivation does not come back to life with a reactivation.
    sessions_revoked_at: Mapped[datetime | None] = mapped_column()
