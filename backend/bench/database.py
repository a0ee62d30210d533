"""The bench's database: a throw-away embedded PostgreSQL, and SQL timed on its own."""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from bench.report import SqlTiming
from bench.servers import REPO_ROOT

PAGE_SIZE = 20


@contextlib.contextmanager
def bench_database(run_root: Path) -> Iterator[str]:
    """A fresh embedded PostgreSQL with a migrated `bench` database; yields its asyncpg DSN."""
    from alembic import command
    from alembic.config import Config

    from devtools.postgres import EmbeddedPostgres

    data_dir = Path(tempfile.mkdtemp(prefix="pg-", dir=run_root))
    server = EmbeddedPostgres(data_dir, durable=False)
    try:
        server.start()
        server.create_database("bench")
        config = Config(str(REPO_ROOT / "alembic.ini"))
        config.set_main_option("sqlalchemy.url", server.url("bench").replace("%", "%%"))
        config.attributes["configure_logger"] = False
        command.upgrade(config, "head")
        yield f"postgresql://postgres@127.0.0.1:{server.port}/bench"
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def time_sql(dsn: str, statement: str, samples: int) -> float:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.fetch(statement)  # warm the buffer cache and the plan
        durations = []
        for _ in range(samples):
            started = time.perf_counter()
            await connection.fetch(statement)
            durations.append((time.perf_counter() - started) * 1000)
    finally:
        await connection.close()
    return statistics.median(durations)


def users_list_sql(users: int) -> list[tuple[str, str]]:
    page = "SELECT * FROM users ORDER BY created_at DESC, id DESC LIMIT 20 OFFSET {}"
    last_offset = (math.ceil(users / PAGE_SIZE) - 1) * PAGE_SIZE
    return [
        ("users count(*)", "SELECT count(*) FROM users"),
        ("users first page", page.format(0)),
        ("users last page", page.format(last_offset)),
    ]


def provinces_sql() -> str:
    from sqlalchemy.dialects import postgresql

    from app.services.reference import DISTINCT_PROVINCES

    compiled = DISTINCT_PROVINCES.compile(
        dialect=postgresql.dialect(),  # type: ignore[no-untyped-call]
        compile_kwargs={"literal_binds": True},
    )
    return str(compiled)


def sql_timings(dsn: str, users: int) -> list[SqlTiming]:
    """The naive DISTINCT beside the loose index scan, and what the user list's pages cost in
    SQL alone: the count every page runs, and the page at the first and the last OFFSET."""
    naive = "SELECT DISTINCT province FROM cases ORDER BY province"
    timed = [("naive DISTINCT", naive, 10), ("loose index scan", provinces_sql(), 200)]
    timed += [(name, statement, 50) for name, statement in users_list_sql(users)]
    return [
        SqlTiming(name, asyncio.run(time_sql(dsn, statement, samples)), samples)
        for name, statement, samples in timed
    ]
