"""Fixtures of the hardening tests.

They start the app with `tests/support/harness.py` and take `jwks_server` and `moto_cognito`
(a moto server with a user pool, which also serves Secrets Manager) from `tests/conftest.py`.

own_pg          a PostgreSQL server of these tests alone, on a fixed port: they stop it,
                freeze it and change its authentication; never the suite's shared `pg`
own_database    a migrated database on `own_pg`, of the test's own
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.hardening.faults import OwnPostgres
from tests.support.database import cloned_database, run_alembic, unique_database_name
from tests.support.net import free_port


@pytest.fixture(scope="session")
def own_pg() -> Iterator[OwnPostgres]:
    data_dir = Path(tempfile.mkdtemp(prefix="onesys-hardening-pg-"))
    server = OwnPostgres(data_dir, port=free_port(), durable=False)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture(scope="session")
async def own_template(own_pg: OwnPostgres) -> str:
    name = unique_database_name("hardening_template")
    await asyncio.to_thread(own_pg.create_database, name)
    await run_alembic(own_pg.url(name), "upgrade", "head")
    return name


@pytest.fixture
async def own_database(own_pg: OwnPostgres, own_template: str) -> AsyncIterator[str]:
    """URL of a migrated database on the dedicated server, running when the test starts."""
    await asyncio.to_thread(own_pg.start)
    async with cloned_database(own_pg, own_template, "hardening") as url:
        try:
            yield url
        finally:
            # A test that failed halfway may have stopped it.
            await asyncio.to_thread(own_pg.start)
