"""Fixtures of the hardening tests.

jwks_server     the pool's JWKS over real HTTP (the key `harness.bearer` signs with)
moto_cognito    a moto server with a user pool (also serves Secrets Manager)
own_pg          a PostgreSQL server of these tests alone, on a fixed port: they stop it,
                freeze it and change its authentication; never the suite's shared `pg`
own_database    a migrated database on `own_pg`, of the test's own
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from devtools.postgres import EmbeddedPostgres
from tests.conftest import run_alembic, unique_database_name
from tests.hardening.harness import SIGNING_KEY_ID
from tests.support.jwt_tokens import JWKSServer, shared_rsa_key
from tests.support.moto_cognito import MotoCognito, running_moto_cognito
from tests.support.net import free_port


@pytest.fixture(scope="session")
def jwks_server() -> Iterator[JWKSServer]:
    with JWKSServer(shared_rsa_key(SIGNING_KEY_ID)) as server:
        yield server


@pytest.fixture(scope="session")
def moto_cognito() -> Iterator[MotoCognito]:
    with running_moto_cognito() as running:
        yield running


class OwnPostgres(EmbeddedPostgres):
    """The dedicated server, with the faults the tests inflict on it."""

    def postmaster_pid(self) -> int:
        return int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])

    def server_pids(self) -> list[int]:
        """The postmaster and every backend and worker it forked."""
        parent = self.postmaster_pid()
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        return [parent, *map(int, children)]

    def freeze(self) -> list[int]:
        """SIGSTOP every server process: connections hang instead of failing."""
        pids = self.server_pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    @staticmethod
    def thaw(pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def hba_prepend(self, line: str) -> None:
        """Put an authentication rule first in pg_hba.conf and reload the server."""
        hba = self.pgdata / "pg_hba.conf"
        stat = hba.stat()
        hba.write_text(f"{line}\n{hba.read_text()}")
        os.chown(hba, stat.st_uid, stat.st_gid)
        self.execute("SELECT pg_reload_conf()")


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
    name = unique_database_name("hardening")
    await asyncio.to_thread(own_pg.create_database, name, own_template)
    try:
        yield own_pg.url(name)
    finally:
        await asyncio.to_thread(own_pg.start)  # a test that failed halfway may have stopped it
        await asyncio.to_thread(own_pg.drop_database, name)
