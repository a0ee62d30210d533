"""Drop the NOTIFY triggers on cases: the provinces answer is no longer cached.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

A transaction that sends a notification takes a cluster-wide lock at commit (PostgreSQL
serialises writers to its notification queue), so statement-level NOTIFY triggers on `cases`
would make every case write of phase 3 commit one at a time, for a cache the spec does not ask
for. `GET /reference/provinces` runs its loose index scan on every request instead. The
downgrade puts the triggers of 0003 back as they were, for the release that still reads them.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Deployed before make migrations-check linted migrations (devtools/migrations_check.py).
squawk_exceptions = {
    "ban-drop-function": "only the triggers dropped just before called it; no release calls it, "
    "and the previous release only LISTENs for the notification, which then never comes",
}

# As 0003 created them (migrations stay static: no import of another revision).
_TRIGGERS = {
    "cases_notify_provinces_insert": "INSERT",
    "cases_notify_provinces_update": "UPDATE OF province",
    "cases_notify_provinces_delete": "DELETE",
    "cases_notify_provinces_truncate": "TRUNCATE",
}


def upgrade() -> None:
    for name in reversed(_TRIGGERS):
        op.execute(f"DROP TRIGGER {name} ON cases")
    op.execute("DROP FUNCTION notify_case_provinces_changed()")


def downgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION notify_case_provinces_changed() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('case_provinces_changed', '');
            RETURN NULL;
        END
        $$
        """
    )
    for name, event in _TRIGGERS.items():
        op.execute(
            f"CREATE TRIGGER {name} AFTER {event} ON cases "
            "FOR EACH STATEMENT EXECUTE FUNCTION notify_case_provinces_changed()"
        )
