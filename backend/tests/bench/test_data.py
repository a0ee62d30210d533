"""The bulk loader at a small scale: the counts asked for, every role, valid rows."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from bench import data


async def test_loads_the_requested_counts_with_every_role(fresh_database_url: str) -> None:
    import asyncpg

    dsn = make_url(fresh_database_url).set(drivername="postgresql").render_as_string(False)
    loaded = await data.load(dsn, users=1000, cases=10_000)
    assert (loaded.users, loaded.cases) == (1000, 10_000)

    connection = await asyncpg.connect(dsn)
    try:
        roles = dict(await connection.fetch("SELECT role, count(*) FROM users GROUP BY role"))
        provinces = await connection.fetchval("SELECT count(DISTINCT province) FROM cases")
        admin = await connection.fetchrow(
            "SELECT role, is_active FROM users WHERE cognito_user_id = $1", loaded.admin_sub
        )
        # The rows satisfy the foreign keys the fast load did not check row by row.
        orphans = await connection.fetchval(
            "SELECT count(*) FROM cases c LEFT JOIN ref_complaint_types t "
            "ON t.id = c.complaint_type_id AND t.service_type_id = c.service_type_id "
            "WHERE t.id IS NULL"
        )
    finally:
        await connection.close()
    assert roles == {"ADMIN": 20, "DISPATCHER": 200, "OFFICER": 700, "EXECUTIVE": 80}
    assert provinces == data.PROVINCE_COUNT
    assert tuple(admin) == ("ADMIN", True)
    assert orphans == 0
    assert [data.role_of(n) for n in (1, 3, 23, 93, 101)] == [
        "ADMIN",
        "DISPATCHER",
        "OFFICER",
        "EXECUTIVE",
        "ADMIN",
    ]
