"""The database roles of docs/operations.md, created by the SQL the docs give, as written.

It runs as a master user that is not a superuser (RDS's master user is not one), on a new
database and on one that master user migrated half-way, as existing deployments did. Then the
migrator migrates to head, and the app's role works with rows and is refused the schema.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from app.core.roles import Role
from app.models.user import User
from devtools.postgres import PsqlAdmin
from tests.support.database import run_alembic, unique_database_name

from .nginx_harness import REPO_ROOT

OPERATIONS = REPO_ROOT / "docs" / "operations.md"
DOC_ROLES = ("one_system_migrator", "one_system_app")


def roles_sql() -> str:
    """The ```sql block of the "Database roles" section."""
    section = OPERATIONS.read_text().split("\n## Database roles\n", 1)[1].split("\n## ", 1)[0]
    (sql,) = re.findall(r"```sql\n(.*?)```", section, re.DOTALL)
    return sql


def as_role(url: str, role: str) -> str:
    return make_url(url).set(username=role, password=None).render_as_string(hide_password=False)


async def execute(url: str, sql: str) -> None:
    connection = await asyncpg.connect(
        make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    )
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@pytest.fixture
async def service_database(pg: PsqlAdmin) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """A database owned by a master user with CREATEROLE and no superuser, as on RDS; its URL
    (as that master user) and the roles' names for this test."""
    suffix = uuid.uuid4().hex[:8]
    master = f"master_{suffix}"
    names = {role: f"{role}_{suffix}" for role in DOC_ROLES}
    name = unique_database_name("roles")
    admin = pg.url("postgres")
    await execute(admin, f"CREATE ROLE {master} LOGIN CREATEROLE NOSUPERUSER")
    await execute(admin, f"CREATE DATABASE {name} OWNER {master}")
    try:
        yield as_role(pg.url(name), master), names
    finally:
        await execute(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        for role in [*names.values(), master]:
            await execute(admin, f"DROP ROLE IF EXISTS {role}")


def for_this_test(sql: str, database: str, names: dict[str, str]) -> str:
    for role, name in names.items():
        sql = re.sub(rf"\b{role}\b", name, sql)
    return re.sub(r"\bDATABASE one_system\b", f"DATABASE {database}", sql)


async def assert_refused(url: str, statement: str) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await execute(url, statement)


@pytest.mark.parametrize("migrated_by_master", [None, "0003"], ids=["new", "half-migrated"])
async def test_the_docs_roles_migrate_and_keep_the_app_to_rows(
    service_database: tuple[str, dict[str, str]], migrated_by_master: str | None
) -> None:
    master_url, names = service_database
    database = str(make_url(master_url).database)
    if migrated_by_master is not None:
        await run_alembic(master_url, "upgrade", migrated_by_master)

    await execute(master_url, for_this_test(roles_sql(), database, names))

    await run_alembic(as_role(master_url, names["one_system_migrator"]), "upgrade", "head")
    app_url = as_role(master_url, names["one_system_app"])
    engine = create_async_engine(app_url)
    try:
        async with engine.begin() as connection:
            sub = str(uuid.uuid4())
            values = {
                "cognito_user_id": sub,
                "email": f"{sub}@example.gov",
                "full_name": "Rho Wonly",
                "role": Role.OFFICER,
                "responsible_province": "Phuket",
            }
            await connection.execute(insert(User).values(**values))
            where = User.cognito_user_id == sub
            await connection.execute(update(User).where(where).values(full_name="Rho W."))
            assert (await connection.execute(select(User.full_name).where(where))).scalar() == (
                "Rho W."
            )
            await connection.execute(delete(User).where(where))
    finally:
        await engine.dispose()
    for statement in [
        "CREATE TABLE intruder (id int)",
        "ALTER TABLE users ADD COLUMN intruder int",
        "DROP TABLE users",
        "TRUNCATE users",
        "CREATE INDEX intruder ON users (email)",
    ]:
        await assert_refused(app_url, statement)


def test_the_sql_is_the_one_section_of_the_docs() -> None:
    """Guards the guard: the statements found are the roles' and their grants."""
    sql = roles_sql()
    for needed in (
        "CREATE ROLE one_system_migrator",
        "CREATE ROLE one_system_app",
        "ALTER DEFAULT PRIVILEGES",
    ):
        assert needed in sql
