"""`/health` reflects the database; `/health/live` never touches it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import httpx
import pytest

from app.main import create_app
from tests.support.harness import make_settings, serve

# Generous bounds: a hang (30-60 s) fails the test, ordinary scheduling noise does not.
PROBE_BOUND_SECONDS = 6


async def test_health_reports_a_reachable_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "db": "ok"}


async def test_liveness_is_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers, like a blackholed database."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield int(listener.getsockname()[1])


@pytest.mark.parametrize("database", ["refusing", "silent"])
async def test_health_is_503_when_the_database_is_unreachable(
    database: str, silent_server: int
) -> None:
    port = closed_port() if database == "refusing" else silent_server
    app = create_app(
        make_settings(
            f"postgresql+asyncpg://api:pw@127.0.0.1:{port}/onesystem",
            db_connect_timeout_seconds=1.0,
            health_timeout_seconds=2.0,
        )
    )
    async with asyncio.timeout(PROBE_BOUND_SECONDS * 2):  # startup check + the probe
        async with serve(app) as client:  # a dead database does not stop startup
            health = await client.get("/health")
            live = await client.get("/health/live")
    assert health.status_code == 503
    assert health.json() == {"status": "error", "db": "error"}
    assert live.status_code == 200
