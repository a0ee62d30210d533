"""Notify listeners whenever a write to cases could change the set of provinces in use.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24

`GET /reference/provinces` is answered from a per-instance cache that must never lag behind the
cases table (app.services.reference.ProvincesCache). Every statement that inserts or deletes
cases, changes a case's province, or truncates the table sends `NOTIFY case_provinces_changed`;
PostgreSQL delivers it when the writing transaction commits, never for one that rolls back, and
sends one notification per transaction however many statements raised it (identical payloads are
folded). Statement-level triggers cost one call per statement, not per row; they do not try to
tell whether the set really changed, which would cost an index probe per written row.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TRIGGERS = {
    "cases_notify_provinces_insert": "INSERT",
    "cases_notify_provinces_update": "UPDATE OF province",
    "cases_notify_provinces_delete": "DELETE",
    "cases_notify_provinces_truncate": "TRUNCATE",
}


def upgrade() -> None:
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


def downgrade() -> None:
    for name in reversed(_TRIGGERS):
        op.execute(f"DROP TRIGGER {name} ON cases")
    op.execute("DROP FUNCTION notify_case_provinces_changed()")
