"""`ProvinceScope`: the province a caller's data is limited to, on a test-only route.

Phase 3's case routes filter by it: an OFFICER sees their responsible province only, every
other role sees all (None). The route is added to an app of this module's own, so the shared
app's route table (the RBAC matrix walks it) stays as production has it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest

from app.api.v1.auth import ProvinceScope
from app.core.config import Settings
from app.core.errors import ForbiddenError
from app.core.principal import Principal, scoped_province
from app.core.roles import Role
from app.main import create_app
from tests.api.conftest import UserFactory, auth_headers, serve

SCOPE = "/test-only/province-scope"


@pytest.fixture(scope="module")
async def scoped_client(app_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(app_settings)

    @app.get(SCOPE)
    async def province_scope(province: ProvinceScope) -> dict[str, str | None]:
        return {"province": province}

    async with serve(app) as client:
        yield client


@pytest.mark.parametrize(
    ("role", "province", "scope"),
    [
        (Role.OFFICER, "Krabi", "Krabi"),
        (Role.ADMIN, None, None),
        (Role.DISPATCHER, None, None),
        (Role.EXECUTIVE, None, None),
    ],
)
async def test_an_officer_is_scoped_to_their_province_and_other_roles_see_all(
    scoped_client: httpx.AsyncClient,
    make_user: UserFactory,
    role: Role,
    province: str | None,
    scope: str | None,
) -> None:
    user = await make_user(role, province=province)

    response = await scoped_client.get(SCOPE, headers=auth_headers(user))

    assert response.status_code == 200, response.text
    assert response.json() == {"province": scope}


async def test_the_scope_needs_a_signed_in_caller(scoped_client: httpx.AsyncClient) -> None:
    response = await scoped_client.get(SCOPE)
    assert response.status_code == 401


def test_a_scoped_role_without_a_province_sees_nothing_rather_than_everything() -> None:
    officer_without_province = Principal(
        id=uuid.uuid4(), role=Role.OFFICER, responsible_province=None
    )
    with pytest.raises(ForbiddenError):
        scoped_province(officer_without_province)
