"""The directory outbox, and when each user's sessions were last revoked.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

`directory_outbox` holds the Cognito work a user change needs, committed with the change and
carried out by the app's worker (app.services.directory_sync). `users.sessions_revoked_at` is
set by a deactivation; access tokens issued before it are refused. Both are additions, so the
previous release runs unchanged against this schema.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("sessions_revoked_at", sa.DateTime(timezone=True)))
    op.create_table(
        "directory_outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_directory_outbox_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_directory_outbox")),
    )
    op.create_index(
        op.f("ix_directory_outbox_next_attempt_at_id"),
        "directory_outbox",
        ["next_attempt_at", "id"],
    )
    op.create_index(op.f("ix_directory_outbox_user_id"), "directory_outbox", ["user_id"])


def downgrade() -> None:
    op.drop_table("directory_outbox")
    op.drop_column("users", "sessions_revoked_at")
