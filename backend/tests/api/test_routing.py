"""The app's routers: each route is served inside its router's gate (`GatedRouter`), and an
endpoint that takes only its caller and the request is called directly (`CredentialsFirstRoute`)."""

from __future__ import annotations

from typing import Any

import fastapi.routing
import httpx
import pytest
from fastapi import FastAPI

from app.api.routing import API_PREFIX, GatedRouter
from app.api.v1 import routers as v1_routers
from app.api.v1.auth import get_current_user
from app.api.v1.health import router as health_router
from app.core.config import Settings
from app.core.principal import Principal
from app.core.roles import Role
from app.main import create_app
from tests.support.harness import UserFactory, auth_headers

INCLUDED = [(health_router, ""), *((router, API_PREFIX) for router in v1_routers)]


@pytest.mark.parametrize(("router", "prefix"), INCLUDED)
def test_every_route_of_a_gated_router_is_inside_its_gate(router: GatedRouter, prefix: str) -> None:
    """A route outside its router's gate would never match: each path as the app serves it."""
    assert isinstance(router, GatedRouter)
    paths = [prefix + route.path for route in router.routes]  # type: ignore[attr-defined]
    assert paths
    assert all(path.startswith(router.gate) for path in paths), (router.gate, paths)


def test_every_router_the_app_includes_is_gated(app_settings: Settings) -> None:
    """The app serves exactly the gated routers' operations and its own few (docs, metrics)."""
    app = create_app(app_settings)
    served = set(app.openapi()["paths"])
    gated = {prefix + route.path for router, prefix in INCLUDED for route in router.routes}  # type: ignore[attr-defined]
    assert served == gated


async def test_a_path_beside_a_gate_is_not_found(client: httpx.AsyncClient) -> None:
    """`/api/v1/usersx` shares the users router's gate as a prefix: its routes decide, no match."""
    assert (await client.get(f"{API_PREFIX}/usersx")).status_code == 404
    assert (await client.get("/healthz")).status_code == 404


async def test_an_endpoint_taking_only_its_caller_is_called_without_fastapis_solver(
    client: httpx.AsyncClient, make_user: UserFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot reads (the SPA's `/users/me`, a pick list, the admin's user list) skip FastAPI's
    dependency solving; a route with parameters of its own still goes through it."""
    admin = await make_user(Role.ADMIN)
    solved: list[str] = []
    solve = fastapi.routing.solve_dependencies

    async def counted(**arguments: Any) -> Any:
        solved.append(arguments["request"].url.path)
        return await solve(**arguments)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counted)
    headers = auth_headers(admin)
    for path in ("/me", "?page=1"):
        assert (await client.get(f"{API_PREFIX}/users{path}", headers=headers)).status_code == 200
    service_types = await client.get(f"{API_PREFIX}/reference/service-types", headers=headers)
    assert service_types.status_code == 200
    assert solved == []

    one_user = f"{API_PREFIX}/users/{admin.id}"
    assert (await client.get(one_user, headers=headers)).status_code == 200
    assert solved == [one_user]


async def test_a_replaced_requirement_is_run_by_fastapi_on_a_directly_called_route(
    app: FastAPI, client: httpx.AsyncClient, make_user: UserFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test's override of the caller is honoured: no token, and the override is the caller."""
    officer = await make_user(Role.OFFICER, province="Bangkok")
    caller = Principal(officer.id, Role.OFFICER, "Bangkok")
    monkeypatch.setitem(app.dependency_overrides, get_current_user, lambda: caller)

    response = await client.get(f"{API_PREFIX}/reference/service-types")

    assert response.status_code == 200, response.text
    assert response.json()
