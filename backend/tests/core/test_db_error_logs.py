"""What a database error's log line says: its SQLSTATE, and a slow query apart from an outage.

Real faults on a real server: a statement cut off by the statement timeout (a bug: some query is
too slow), the session's backend terminated by an administrator, and a server that refuses
connections (outages). Each answers 503 with Retry-After; the logs tell them apart.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from app.core.db import SessionDep
from tests.support.harness import LiveApp, live_app, make_settings
from tests.support.net import free_port

ERRORS_LOGGER = "app.core.errors"


def _database_routes(app: FastAPI) -> None:
    @app.get("/test/slow")
    async def slow(session: SessionDep) -> dict[str, Any]:
        await session.execute(text("SELECT pg_sleep(3)"))
        return {"slept": True}

    @app.get("/test/terminated")
    async def terminated(session: SessionDep) -> dict[str, Any]:
        # pg_terminate_backend: what an operator (or a failover) does to a session.
        await session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
        return {"terminated": False}

    @app.get("/test/wrong")
    async def wrong(session: SessionDep) -> dict[str, Any]:
        await session.execute(text("SELECT 1 / 0"))
        return {"divided": True}

    @app.get("/test/query")
    async def query(session: SessionDep) -> dict[str, Any]:
        await session.execute(text("SELECT 1"))
        return {"queried": True}


@pytest.fixture
async def live(fresh_database_url: str) -> AsyncIterator[LiveApp]:
    settings = make_settings(fresh_database_url, db_statement_timeout_seconds=0.2)
    async with live_app(settings, customize=_database_routes) as running:
        yield running


@pytest.fixture
async def unreachable() -> AsyncIterator[LiveApp]:
    """An app whose database address has nothing listening: every connection is refused."""
    nowhere = f"postgresql+asyncpg://nobody@127.0.0.1:{free_port()}/nothing"
    async with live_app(make_settings(nowhere), customize=_database_routes) as running:
        yield running


def assert_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0


def lines_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == logger]


async def test_a_statement_timeout_is_logged_as_a_bug_with_its_sqlstate(
    live: LiveApp, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        response = await live.client.get("/test/slow")
    assert_unavailable(response)
    [line] = lines_of(caplog, ERRORS_LOGGER)
    assert line.levelno == logging.ERROR
    message = line.getMessage()
    assert "SQLSTATE 57014" in message
    assert "statement timeout" in message
    assert "GET /test/slow" in message


async def test_a_terminated_session_is_an_outage_logged_with_its_sqlstate(
    live: LiveApp, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        response = await live.client.get("/test/terminated")
    assert_unavailable(response)
    [line] = lines_of(caplog, ERRORS_LOGGER)
    assert line.levelno == logging.WARNING
    # 57P01 admin_shutdown: "terminating connection due to administrator command".
    assert "SQLSTATE 57P01" in line.getMessage()
    assert "statement timeout" not in line.getMessage()
    # The same app serves again on a fresh connection.
    assert (await live.client.get("/test/query")).status_code == 200


async def test_a_refused_connection_is_an_outage_logged_as_a_connection_error(
    unreachable: LiveApp, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        response = await unreachable.client.get("/test/query")
        health = await unreachable.client.get("/health")
    assert_unavailable(response)
    assert health.status_code == 503
    [line] = lines_of(caplog, ERRORS_LOGGER)
    assert line.levelno == logging.WARNING
    assert "connection error ConnectionRefusedError" in line.getMessage()
    [check] = [r for r in lines_of(caplog, "app.core.db") if "check failed" in r.getMessage()]
    assert check.levelno == logging.WARNING
    assert "connection error ConnectionRefusedError" in check.getMessage()


async def test_a_wrong_query_is_a_500_whose_error_line_names_its_sqlstate(
    live: LiveApp, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        response = await live.client.get("/test/wrong")
    assert response.status_code == 500
    [line] = lines_of(caplog, ERRORS_LOGGER)
    assert line.levelno == logging.ERROR
    # 22012 division_by_zero
    assert "SQLSTATE 22012 (DivisionByZeroError)" in line.getMessage()
