"""Who may call each route (the README's Endpoints table), checked against every registered route.

A route the app registers without a row here fails `test_every_route_has_a_row`, so nobody can
add an endpoint without deciding who may call it.
"""

from __future__ import annotations

import uuid

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts

from app.core.roles import Role
from tests.support.harness import UserFactory, auth_headers

PUBLIC = "public"
ANY_ROLE = frozenset(Role)
ADMIN_ONLY = frozenset({Role.ADMIN})

MATRIX: dict[tuple[str, str], frozenset[Role] | str] = {
    ("GET", "/health"): PUBLIC,
    ("GET", "/health/live"): PUBLIC,
    # The instance's metrics, for the host's agent: Nginx never routes them from the ALB.
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("GET", "/docs"): PUBLIC,
    ("GET", "/docs/static/{name}"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/api/v1/users/me"): ANY_ROLE,
    ("POST", "/api/v1/users"): ADMIN_ONLY,
    ("GET", "/api/v1/users"): ADMIN_ONLY,
    ("GET", "/api/v1/users/{user_id}"): ADMIN_ONLY,
    ("PUT", "/api/v1/users/{user_id}"): ADMIN_ONLY,
    ("POST", "/api/v1/users/{user_id}/reset-password"): ADMIN_ONLY,
    ("GET", "/api/v1/reference/service-types"): ANY_ROLE,
    ("GET", "/api/v1/reference/complaint-types"): ANY_ROLE,
    ("GET", "/api/v1/reference/handlers"): ANY_ROLE,
    ("GET", "/api/v1/reference/closure-reasons"): ANY_ROLE,
    ("GET", "/api/v1/reference/provinces"): ANY_ROLE,
    ("GET", "/api/v1/reference/sla-config"): ADMIN_ONLY,
}

# Path parameters that exist nowhere: allowed callers get past authorisation to a 404.
PATH_VALUES = {"user_id": str(uuid.uuid4()), "name": "no-such-asset.js"}


def registered_operations(app: FastAPI) -> set[tuple[str, str]]:
    # Included routers appear in app.routes as one entry each; FastAPI's own walker (the one
    # that builds the OpenAPI document) yields every route with its effective path.
    operations: set[tuple[str, str]] = set()
    for route in iter_route_contexts(app.routes):
        for method in route.methods or ():
            if method != "HEAD" and route.path is not None:
                operations.add((method, route.path))
    return operations


def test_every_route_has_a_row(app: FastAPI) -> None:
    registered = registered_operations(app)
    assert registered - MATRIX.keys() == set(), "routes without an access decision"
    assert MATRIX.keys() - registered == set(), "rows for routes that no longer exist"


def protected_rows() -> list[tuple[str, str]]:
    return [operation for operation, access in MATRIX.items() if access != PUBLIC]


@pytest.mark.parametrize(("method", "path"), protected_rows())
async def test_anonymous_callers_get_401(client: httpx.AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, path.format(**PATH_VALUES), json={})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize(("method", "path"), protected_rows())
async def test_each_role_is_let_through_or_refused_as_the_matrix_says(
    client: httpx.AsyncClient, make_user: UserFactory, method: str, path: str, role: Role
) -> None:
    caller = await make_user(role)
    response = await client.request(
        method, path.format(**PATH_VALUES), json={}, headers=auth_headers(caller)
    )
    allowed = MATRIX[(method, path)]
    assert isinstance(allowed, frozenset)
    if role in allowed:
        assert response.status_code not in (401, 403), response.text
    else:
        assert response.status_code == 403, response.text
        assert response.json()["code"] == "forbidden"


@pytest.mark.parametrize(("method", "path"), [op for op, a in MATRIX.items() if a == PUBLIC])
async def test_public_routes_need_no_token(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path.format(**PATH_VALUES))
    assert response.status_code not in (401, 403)


def test_openapi_marks_every_protected_operation(app: FastAPI) -> None:
    schema = app.openapi()
    for (method, path), access in MATRIX.items():
        operation = schema["paths"].get(path, {}).get(method.lower())
        if operation is None:
            continue  # not in the schema (the docs pages)
        if access == PUBLIC:
            assert "security" not in operation, path
            continue
        assert {"HTTPBearer": []} in operation["security"], path
        assert "401" in operation["responses"], path
        if access != ANY_ROLE:
            assert "403" in operation["responses"], path
