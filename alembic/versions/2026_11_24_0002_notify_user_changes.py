"""Notify listeners of every change to users, so per-instance user caches can evict at once.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24

`NOTIFY users_changed` carries the `cognito_user_id` of each updated or deleted row, or `*` when
a statement changed more rows than are worth naming one by one (and on TRUNCATE). PostgreSQL
delivers notifications when the writing transaction commits, and never for one that rolls back.
Inserts notify too: a new user changes how many users match a filter, which the user list's
count cache keeps (app.services.user_cache). Statement-level triggers with transition tables
fire once per statement, not once per row.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Above 1000 rows in one statement, listeners are told to forget everyone instead.
    op.execute(
        """
        CREATE FUNCTION notify_users_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            -- Separate branches: a TRUNCATE trigger has no transition table to plan against.
            IF TG_OP = 'TRUNCATE' THEN
                PERFORM pg_notify('users_changed', '*');
            ELSIF (SELECT count(*) FROM changed_users) > 1000 THEN
                PERFORM pg_notify('users_changed', '*');
            ELSE
                PERFORM pg_notify('users_changed', cognito_user_id)
                FROM (SELECT DISTINCT cognito_user_id FROM changed_users) AS changed;
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    # A changed cognito_user_id must evict the old one: the OLD rows are what listeners hold.
    op.execute(
        """
        CREATE TRIGGER users_notify_insert AFTER INSERT ON users
        REFERENCING NEW TABLE AS changed_users
        FOR EACH STATEMENT EXECUTE FUNCTION notify_users_changed()
        """
    )
    op.execute(
        """
        CREATE TRIGGER users_notify_update AFTER UPDATE ON users
        REFERENCING OLD TABLE AS changed_users
        FOR EACH STATEMENT EXECUTE FUNCTION notify_users_changed()
        """
    )
    op.execute(
        """
        CREATE TRIGGER users_notify_delete AFTER DELETE ON users
        REFERENCING OLD TABLE AS changed_users
        FOR EACH STATEMENT EXECUTE FUNCTION notify_users_changed()
        """
    )
    op.execute(
        """
        CREATE TRIGGER users_notify_truncate AFTER TRUNCATE ON users
        FOR EACH STATEMENT EXECUTE FUNCTION notify_users_changed()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER users_notify_truncate ON users")
    op.execute("DROP TRIGGER users_notify_delete ON users")
    op.execute("DROP TRIGGER users_notify_update ON users")
    op.execute("DROP TRIGGER users_notify_insert ON users")
    op.execute("DROP FUNCTION notify_users_changed()")
