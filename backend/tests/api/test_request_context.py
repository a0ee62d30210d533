"""Request ids: taken from the caller or generated, echoed, and stamped on every log line."""

from __future__ import annotations

import json
import logging
import re

import httpx
import pytest

from app.core.config import Settings
from app.core.logging import JsonFormatter
from app.main import create_app
from tests.support.harness import serve


async def test_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/health/live", headers={"X-Request-ID": "abc-123.x"})
    assert response.headers["X-Request-ID"] == "abc-123.x"


async def test_request_id_is_generated_when_absent(client: httpx.AsyncClient) -> None:
    first = await client.get("/health/live")
    second = await client.get("/health/live")
    assert re.fullmatch(r"[0-9a-f]{32}", first.headers["X-Request-ID"])
    assert first.headers["X-Request-ID"] != second.headers["X-Request-ID"]


@pytest.mark.parametrize("unsafe", ["has space", "x" * 200, 'quote"d', "line\\nbreak"])
async def test_untrustworthy_request_id_is_replaced(client: httpx.AsyncClient, unsafe: str) -> None:
    response = await client.get("/health/live", headers={"X-Request-ID": unsafe})
    assert response.headers["X-Request-ID"] != unsafe
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


async def test_every_log_line_of_a_request_carries_its_id(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        await client.get("/health", headers={"X-Request-ID": "trace-me"})
    access = [r for r in caplog.records if r.name == "app.access"]
    assert access, "one access line per request"
    assert {getattr(r, "request_id", None) for r in access} == {"trace-me"}
    line = json.loads(JsonFormatter().format(access[-1]))
    assert line["request_id"] == "trace-me"
    assert line["status"] == 200
    assert line["path"] == "/health"


async def test_cors_preflight_for_the_spa(client: httpx.AsyncClient) -> None:
    allowed = await client.options(
        "/api/v1/users/me",
        headers={
            "Origin": "https://spa.example.gov",
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "Authorization",
        },
    )
    assert allowed.status_code == 200
    assert allowed.headers["Access-Control-Allow-Origin"] == "https://spa.example.gov"
    assert "Access-Control-Allow-Credentials" not in allowed.headers
    refused = await client.options(
        "/api/v1/users/me",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert refused.status_code == 400
    assert "Access-Control-Allow-Origin" not in refused.headers


async def test_access_log_can_be_left_to_the_proxy(
    app_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(app_settings.model_copy(update={"access_log": False}))
    with caplog.at_level(logging.INFO):
        async with serve(app) as quiet_client:
            response = await quiet_client.get("/health/live", headers={"X-Request-ID": "q-1"})
    assert response.headers["X-Request-ID"] == "q-1"
    assert not [r for r in caplog.records if r.name == "app.access"]
