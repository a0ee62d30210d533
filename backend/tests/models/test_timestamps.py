"""`TimestampMixin`: the database's timestamps are readable after a flush, at no extra query."""

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession

from tests.models.test_constraints import make_user


async def test_an_update_returns_the_new_updated_at_in_the_same_statement(
    db_session: AsyncSession,
) -> None:
    user = make_user()
    db_session.add(user)
    await db_session.flush()
    connection = (await db_session.connection()).sync_connection
    assert connection is not None
    statements: list[str] = []

    def record(_: Any, __: Any, statement: str, *rest: Any) -> None:
        statements.append(statement)

    event.listen(connection, "before_cursor_execute", record)
    try:
        user.full_name = "Renamed"
        await db_session.flush()
        # Read without awaiting: a lazy load here would raise MissingGreenlet.
        updated_at = user.updated_at
    finally:
        event.remove(connection, "before_cursor_execute", record)

    assert len(statements) == 1, statements
    assert statements[0].startswith("UPDATE users SET")
    assert "RETURNING users.updated_at" in statements[0]
    assert updated_at is not None
