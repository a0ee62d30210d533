"""The app's routers: each route is served inside its router's gate (`GatedRouter`)."""

from __future__ import annotations

import httpx
import pytest

from app.api.routing import API_PREFIX, GatedRouter
from app.api.v1 import routers as v1_routers
from app.api.v1.health import router as health_router
from app.core.config import Settings
from app.main import create_app

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
