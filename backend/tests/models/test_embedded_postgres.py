"""devtools.postgres: the embedded server the tests and `make run` rely on."""

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from devtools.postgres import EmbeddedPostgres


@pytest.fixture
def server() -> Iterator[EmbeddedPostgres]:
    data_dir = Path(tempfile.mkdtemp(prefix="onesys-test-embedded-"))
    server = EmbeddedPostgres(data_dir, durable=False)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def select_one(url: str) -> int | None:
    engine = create_async_engine(url, poolclass=NullPool, connect_args={"timeout": 5})
    try:
        async with engine.connect() as connection:
            value: int | None = await connection.scalar(sa.text("SELECT 1"))
            return value
    finally:
        await engine.dispose()


async def test_start_stop_start(server: EmbeddedPostgres) -> None:
    server.start()
    server.start()  # already running: a no-op
    assert server.is_running()
    server.create_database("app")
    url = server.url("app")
    assert url.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
    assert await select_one(url) == 1

    server.stop()
    assert not server.is_running()
    with pytest.raises(OSError, match=r"refused|Connect call failed"):
        await select_one(url)

    # A postmaster.pid naming a live process that is not our server (pid reuse after a crash)
    # must not block the start; neither must the data from before.
    (server.pgdata / "postmaster.pid").write_text(f"{os.getpid()}\n{server.pgdata}\n0\n5432\n")
    assert not server.is_running()
    server.start()
    assert server.url("app") == url  # same port again, so a dev server keeps its URL
    assert await select_one(url) == 1
