"""405 answers name every method of the resource (RFC 9110 §15.5.6), on every registered path.

Starlette's router answers a wrong method from the first route whose path matched, so
`/api/v1/users` (GET and POST are two routes) said `Allow: GET` only.
"""

from __future__ import annotations

from collections import defaultdict

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts

from app.core.roles import Role
from tests.support.harness import UserFactory, auth_headers

# Fixed, not random: parametrized ids must be the same in every pytest-xdist worker.
SOME_USER_ID = "5f0c3d8e-2b1a-4c6d-9e7f-0a1b2c3d4e5f"
PATH_VALUES = {"user_id": SOME_USER_ID, "name": "swagger-ui.css"}
UNUSED_METHOD = "DELETE"  # no route of the API serves it


def methods_by_path(app: FastAPI) -> dict[str, set[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for route in iter_route_contexts(app.routes):
        if route.path is not None:
            found[route.path] |= route.methods or set()
    return dict(found)


def test_the_walk_finds_every_path(app: FastAPI) -> None:
    paths = methods_by_path(app)
    assert paths["/api/v1/users"] == {"GET", "POST"}
    assert paths["/api/v1/users/{user_id}"] == {"GET", "PUT"}
    assert all(UNUSED_METHOD not in methods for methods in paths.values())


def served_at(app: FastAPI, concrete_path: str) -> set[str]:
    """The methods of every route whose path template matches `concrete_path`."""
    methods: set[str] = set()
    for route in iter_route_contexts(app.routes):
        if route.path_regex.match(concrete_path):
            methods |= route.methods or set()
    return methods


async def test_every_path_lists_all_its_methods_in_allow(
    app: FastAPI, client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    headers = auth_headers(await make_user(Role.ADMIN))
    allow = {}
    for path in methods_by_path(app):
        concrete = path.format(**PATH_VALUES)
        response = await client.request(UNUSED_METHOD, concrete, headers=headers)
        assert response.status_code == 405, path
        assert response.json()["code"] == "method_not_allowed", path
        assert set(response.headers["Allow"].split(", ")) == served_at(app, concrete), path
        allow[path] = response.headers["Allow"]
    assert allow["/api/v1/users"] == "GET, POST"
    assert allow["/api/v1/users/{user_id}"] == "GET, PUT"
    assert allow["/api/v1/reference/sla-config"] == "GET"
    # PUT /users/me is routed to PUT /users/{user_id} (and answered 422: "me" is not an id).
    assert allow["/api/v1/users/me"] == "GET, PUT"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PATCH", "/api/v1/users", "GET, POST"),
        ("DELETE", f"/api/v1/users/{SOME_USER_ID}", "GET, PUT"),
        ("GET", f"/api/v1/users/{SOME_USER_ID}/reset-password", "POST"),
        ("PUT", "/health/live", "GET"),
    ],
)
async def test_a_wrong_method_is_405_before_authentication(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    response = await client.request(method, path)

    assert response.status_code == 405
    assert response.headers["Allow"] == allow
    assert response.json()["request_id"] == response.headers["X-Request-ID"]
