"""One kind-neutral outbox with per-key leases, in place of the directory outbox.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

`outbox` holds work of any kind (`kind` names the handler, `key` orders it: the directory's key
is the user id); `outbox_leases` gives one holder per key at a time and fences what it writes
(app.services.outbox). Pending directory work is carried over, so nothing promised is lost.
The previous release reads `directory_outbox`: stop its workers before upgrading (the deploy
script migrates before it starts the new release).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Deployed before make migrations-check existed (devtools/migrations_check.py), with the previous
# release's workers stopped first. Not a pattern: today the table would be dropped a release
# after the code stopped writing it (docs/operations.md, expand and contract).
squawk_exceptions = {
    "ban-drop-table": "deployed with the previous release's workers stopped first; its web "
    "processes still wrote directory_outbox until the new release replaced them",
}
previous_release_exception = (
    "the previous release writes directory_outbox, which this migration drops; deployed with "
    "its workers stopped, before deploys ran the releases side by side"
)


def _now() -> sa.TextClause:
    return sa.text("now()")


def upgrade() -> None:
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=320), nullable=False),
        sa.Column(
            "payload",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.Column(
            "next_attempt_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False
        ),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.String(length=200), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
    )
    op.create_index(op.f("ix_outbox_next_attempt_at_id"), "outbox", ["next_attempt_at", "id"])
    op.create_index(op.f("ix_outbox_kind_key"), "outbox", ["kind", "key"])
    op.create_table(
        "outbox_leases",
        sa.Column("kind", sa.String(length=40), nullable=False),
        sa.Column("key", sa.String(length=320), nullable=False),
        sa.Column("holder", sa.Uuid(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("kind", "key", name=op.f("pk_outbox_leases")),
    )
    op.execute(
        "INSERT INTO outbox (kind, key, created_at, next_attempt_at, attempts, last_error)"
        " SELECT 'directory', user_id::text, created_at, now(), attempts, last_error"
        " FROM directory_outbox ORDER BY id"
    )
    op.drop_table("directory_outbox")


def downgrade() -> None:
    op.create_table(
        "directory_outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False),
        sa.Column(
            "next_attempt_at", sa.DateTime(timezone=True), server_default=_now(), nullable=False
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
    # Directory work goes back; creation intents have no place in the old schema (the old
    # release adopts what they leave, as it did before them).
    op.execute(
        "INSERT INTO directory_outbox (user_id, created_at, attempts, last_error)"
        " SELECT DISTINCT ON (key) key::uuid, created_at, attempts, last_error FROM outbox"
        " WHERE kind = 'directory' AND key::uuid IN (SELECT id FROM users) ORDER BY key, id"
    )
    op.drop_table("outbox_leases")
    op.drop_table("outbox")
