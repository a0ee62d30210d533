"""Bulk data for the benchmark: users of every role and cases across 77 provinces.

Rows are made by PostgreSQL itself (`INSERT ... SELECT generate_series`), not by the ORM: a
million cases load in seconds instead of minutes. Every value is a pure function of the row
number, so two loads of the same size hold the same data and a benchmark run can name its
users (`bench_sub(n)`) without reading them back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import asyncpg

PROVINCE_COUNT: Final = 77
# Of every 100 users: 2 admins, 20 dispatchers, 70 officers, 8 executives. Row 1 is an admin.
ROLE_SHARES: Final = (("ADMIN", 2), ("DISPATCHER", 20), ("OFFICER", 70), ("EXECUTIVE", 8))
# One user in this many is deactivated (never row 1, the benchmark's admin).
INACTIVE_EVERY: Final = 25


def province_name(number: int) -> str:
    """The name of province `number` (1-based), as stored in users and cases."""
    return f"Province {number:02d}"


def bench_sub(number: int) -> str:
    """The Cognito sub of user row `number` (1-based)."""
    return f"bench-user-{number:08d}"


def role_of(number: int) -> str:
    """The role of user row `number`, matching the SQL of `load_users`."""
    bucket = (number - 1) % 100
    for role, share in ROLE_SHARES:
        if bucket < share:
            return role
        bucket -= share
    raise AssertionError("shares add up to 100")


def _role_sql() -> str:
    # The same buckets as role_of, in SQL: CASE over (g - 1) % 100.
    branches, upper = [], 0
    for role, share in ROLE_SHARES:
        upper += share
        branches.append(f"WHEN (g - 1) % 100 < {upper} THEN '{role}'")
    return "CASE " + " ".join(branches) + " END"


USERS_SQL: Final = f"""
INSERT INTO users (cognito_user_id, email, full_name, role, responsible_province, is_active,
                   created_at, updated_at)
SELECT 'bench-user-' || lpad(g::text, 8, '0'),
       'user' || g || '@bench.example.gov',
       'Bench User ' || g,
       r.role,
       CASE WHEN r.role = 'OFFICER'
            THEN 'Province ' || lpad((1 + g % {PROVINCE_COUNT})::text, 2, '0') END,
       g = 1 OR g % {INACTIVE_EVERY} <> 0,
       now() - g * interval '1 minute',
       now() - g * interval '1 minute'
FROM generate_series(1, $1::int) AS g,
     LATERAL (SELECT {_role_sql()} AS role) AS r
"""  # noqa: S608 - every interpolated value is a constant of this module

# Complaint types are picked by row number among the seeded ones, each with its own service
# type, so every foreign key holds; the server checks nothing row by row meanwhile (replica
# role), which is what makes the load fast.
CASES_SQL: Final = f"""
WITH types AS (
    SELECT array_agg(id ORDER BY id) AS ids,
           array_agg(service_type_id ORDER BY id) AS service_types,
           count(*)::int AS n
    FROM ref_complaint_types
)
INSERT INTO cases (case_number, status, priority, service_type_id, complaint_type_id, province,
                   district, complainant_name, complainant_phone, description,
                   created_at, updated_at)
SELECT 'C' || lpad(g::text, 10, '0'),
       (ARRAY['NEW','ASSIGNED','IN_PROGRESS','RESOLVED','CLOSED','CANCELLED'])[1 + g % 6],
       (ARRAY['LOW','MEDIUM','HIGH','URGENT'])[1 + g % 4],
       types.service_types[1 + g % types.n],
       types.ids[1 + g % types.n],
       'Province ' || lpad((1 + g % {PROVINCE_COUNT})::text, 2, '0'),
       'District ' || (g % 20),
       'Complainant ' || g,
       '+66' || lpad((g % 100000000)::text, 9, '0'),
       'Benchmark case ' || g,
       now() - g * interval '30 seconds',
       now() - g * interval '30 seconds'
FROM types, generate_series(1, $1::int) AS g
"""  # noqa: S608 - every interpolated value is a constant of this module


@dataclass(frozen=True, slots=True)
class LoadedData:
    users: int
    cases: int
    admin_sub: str


async def load(dsn: str, *, users: int, cases: int) -> LoadedData:
    """Fill an empty, migrated database with `users` users and `cases` cases, then analyse it."""
    if users < 1:
        raise ValueError("at least one user (the benchmark's admin) is needed")
    connection = await asyncpg.connect(dsn)
    try:
        async with connection.transaction():
            await connection.execute("SET LOCAL session_replication_role = replica")
            await connection.execute(USERS_SQL, users)
            await connection.execute(CASES_SQL, cases)
        # VACUUM sets the visibility map, so index-only scans (the province walk, counts) work
        # as they do on a long-lived table; ANALYZE gives the planner real statistics.
        await connection.execute("VACUUM (ANALYZE) users")
        await connection.execute("VACUUM (ANALYZE) cases")
        loaded_users = await connection.fetchval("SELECT count(*) FROM users")
        loaded_cases = await connection.fetchval("SELECT count(*) FROM cases")
    finally:
        await connection.close()
    return LoadedData(users=loaded_users, cases=loaded_cases, admin_sub=bench_sub(1))
