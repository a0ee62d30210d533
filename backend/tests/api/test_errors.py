"""Every error is JSON with `detail`, a stable `code` and the request id; no traces leak."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import httpx
import pytest
import sqlalchemy.exc
from fastapi import FastAPI
from pydantic import BaseModel

from app.core.config import Settings
from app.core.errors import (
    ConflictError,
    DomainError,
    ForbiddenError,
    InvalidInputError,
    NotAuthenticatedError,
    NotFoundError,
    ServiceUnavailableError,
    TooManyRequestsError,
)
from app.main import create_app
from tests.support.harness import serve


class Payload(BaseModel):
    name: str
    password: str


ERRORS: dict[str, DomainError] = {
    "invalid": InvalidInputError("name is too long"),
    "unauthenticated": NotAuthenticatedError(token_sent=True),
    "forbidden": ForbiddenError("ADMIN role required"),
    "missing": NotFoundError("user not found"),
    "conflict": ConflictError("email already registered"),
    "throttled": TooManyRequestsError("slow down", retry_after=7),
    "down": ServiceUnavailableError("Cognito is unavailable"),
}


@pytest.fixture(scope="module")
def probe_app(app_settings: Settings) -> FastAPI:
    app: FastAPI = create_app(app_settings)

    @app.get("/raise/{kind}")
    async def raise_error(kind: str) -> None:
        if kind == "bug":
            raise RuntimeError("secret internals: password=hunter2")
        if kind == "db-down":
            raise sqlalchemy.exc.OperationalError("SELECT 1", {}, ConnectionRefusedError())
        if kind == "db-bug":
            raise sqlalchemy.exc.ProgrammingError("SELECT nope", {}, Exception("syntax"))
        raise ERRORS[kind]

    @app.post("/echo")
    async def echo(payload: Payload) -> Payload:
        return payload

    return app


@pytest.fixture(scope="module")
async def probe_client(probe_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(probe_app) as client:
        yield client


def answering_bugs(probe_app: FastAPI) -> httpx.AsyncClient:
    """A client of the app (served by `probe_client`, so its lifespan has run) whose transport
    answers a bug's 500 instead of re-raising it."""
    transport = httpx.ASGITransport(app=probe_app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.mark.parametrize("kind", list(ERRORS))
async def test_domain_errors_map_to_status_and_code(
    probe_client: httpx.AsyncClient, kind: str
) -> None:
    error = ERRORS[kind]
    response = await probe_client.get(f"/raise/{kind}", headers={"X-Request-ID": "req-1"})
    assert response.status_code == error.status_code
    assert response.json() == {"detail": error.detail, "code": error.code, "request_id": "req-1"}
    for header, value in error.headers.items():
        assert response.headers[header] == value


async def test_unauthenticated_carries_bearer_challenge(probe_client: httpx.AsyncClient) -> None:
    response = await probe_client.get("/raise/unauthenticated")
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


async def test_unexpected_error_is_a_generic_500_logged_with_request_id(
    probe_client: httpx.AsyncClient, probe_app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError):
        # Starlette re-raises after answering so the server can log it too; over ASGI the
        # test transport sees that re-raise. The response itself is checked below.
        await probe_client.get("/raise/bug", headers={"X-Request-ID": "req-bug"})
    async with answering_bugs(probe_app) as client:
        response = await client.get("/raise/bug", headers={"X-Request-ID": "req-bug"})
    assert response.status_code == 500
    assert response.json() == {
        "detail": "Internal server error",
        "code": "internal_error",
        "request_id": "req-bug",
    }
    assert "hunter2" not in response.text
    assert "Traceback" not in response.text
    logged = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert logged
    assert all(getattr(r, "request_id", None) == "req-bug" for r in logged)


async def test_database_outage_is_503_with_retry_after(probe_client: httpx.AsyncClient) -> None:
    response = await probe_client.get("/raise/db-down")
    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"
    assert int(response.headers["Retry-After"]) > 0


async def test_a_wrong_query_stays_a_500_not_an_outage(
    probe_client: httpx.AsyncClient, probe_app: FastAPI
) -> None:
    async with answering_bugs(probe_app) as client:
        response = await client.get("/raise/db-bug")
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"


async def test_unknown_route_and_method(probe_client: httpx.AsyncClient) -> None:
    missing = await probe_client.get("/no/such/route")
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_found"
    wrong_method = await probe_client.delete("/health/live")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["code"] == "method_not_allowed"


async def test_validation_error_says_what_is_wrong_without_echoing_input(
    probe_client: httpx.AsyncClient,
) -> None:
    response = await probe_client.post("/echo", json={"password": "hunter2"})
    assert response.status_code == 422
    body = response.json()
    assert body["code"] == "validation_error"
    assert body["detail"][0]["loc"] == ["body", "name"]
    assert body["detail"][0]["type"] == "missing"
    assert "hunter2" not in response.text


async def test_malformed_json_is_422(probe_client: httpx.AsyncClient) -> None:
    response = await probe_client.post(
        "/echo", content=b'{"name": "x", "password": ', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"
