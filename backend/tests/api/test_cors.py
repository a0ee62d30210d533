"""CORS as the SPA's browser sees it: real preflights from an allowed and from a refused origin.

The test app allows the origin `https://spa.example.gov` (`make_settings`).
"""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from app.core.roles import Role
from tests.support.harness import UserFactory, auth_headers

SPA = "https://spa.example.gov"
STRANGER = "https://evil.example"
USERS = "/api/v1/users"
REQUEST_HEADERS = ("Authorization", "Content-Type", "If-None-Match", "X-Request-ID")


def preflight(origin: str, method: str, headers: str | None = None) -> dict[str, str]:
    sent = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        sent["Access-Control-Request-Headers"] = headers
    return sent


def listed(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",")}


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", f"{USERS}/me"), ("POST", USERS), ("PUT", f"{USERS}/x"), ("GET", "/health")],
)
async def test_the_spa_may_send_every_header_the_api_reads(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.options(
        path, headers=preflight(SPA, method, ", ".join(REQUEST_HEADERS))
    )

    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == SPA
    assert method in listed(response.headers["Access-Control-Allow-Methods"]) | {
        m.upper() for m in listed(response.headers["Access-Control-Allow-Methods"])
    }
    assert {h.lower() for h in REQUEST_HEADERS} <= listed(
        response.headers["Access-Control-Allow-Headers"]
    )


def test_every_header_parameter_the_schema_documents_is_allowed(app: FastAPI) -> None:
    documented = {"authorization"}  # the bearer scheme
    for path_item in app.openapi()["paths"].values():
        for operation in path_item.values():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "header":
                    documented.add(parameter["name"].lower())
    assert documented <= {h.lower() for h in REQUEST_HEADERS}


@pytest.mark.parametrize(
    ("origin", "method", "headers", "refused"),
    [
        (STRANGER, "GET", "Authorization", "origin"),
        (SPA, "DELETE", None, "method"),
        (SPA, "GET", "Authorization, X-Debug", "headers"),
    ],
)
async def test_a_refused_preflight_is_an_error_of_the_api_shape(
    client: httpx.AsyncClient, origin: str, method: str, headers: str | None, refused: str
) -> None:
    response = await client.options(
        f"{USERS}/me", headers={**preflight(origin, method, headers), "X-Request-ID": "cors-1"}
    )

    assert response.status_code == 400
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["code"] == "cors_refused"
    assert refused in body["detail"]
    assert body["request_id"] == "cors-1"
    assert response.headers["X-Request-ID"] == "cors-1"
    # Caches must key a preflight answer on what was asked.
    assert "origin" in listed(response.headers["Vary"])


async def test_a_refused_origin_is_never_allowed(client: httpx.AsyncClient) -> None:
    response = await client.options(f"{USERS}/me", headers=preflight(STRANGER, "GET"))

    assert response.status_code == 400
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_the_spa_may_read_the_headers_it_needs(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    caller = await make_user(Role.DISPATCHER)

    response = await client.get(
        "/api/v1/reference/service-types", headers={"Origin": SPA, **auth_headers(caller)}
    )

    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == SPA
    assert "ETag" in response.headers
    exposed = listed(response.headers["Access-Control-Expose-Headers"])
    assert {"etag", "x-request-id", "location", "retry-after"} <= exposed


async def test_a_stranger_origin_gets_no_cors_grant_on_a_real_request(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/health/live", headers={"Origin": STRANGER})

    assert response.status_code == 200
    assert "Access-Control-Allow-Origin" not in response.headers


@pytest.mark.parametrize("origin", [None, SPA, STRANGER])
async def test_every_answer_says_it_varies_by_origin_once(
    client: httpx.AsyncClient, origin: str | None
) -> None:
    """With an `Origin` or without (a same-origin call, the probe): a cache keys the answer on it,
    so an answer without a grant never reaches a cross-origin caller."""
    headers = {"Origin": origin} if origin else {}
    response = await client.get("/health/live", headers=headers)

    assert response.status_code == 200
    vary = [value for name, value in response.headers.multi_items() if name == "vary"]
    assert [v.strip().lower() for line in vary for v in line.split(",")].count("origin") == 1
    assert ("access-control-allow-origin" in response.headers) == (origin == SPA)
