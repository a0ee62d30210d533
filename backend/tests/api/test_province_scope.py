"""The province scope (`app.core.scope`) on test-only routes: a list filtered, one item checked.

What phase 3's case routes will do: an OFFICER sees the cases of their province, every other
role all of them; another province's case is a 404, and a page with nothing in scope an empty
list. The routes are added to an app of this module's own, so the shared app's route table (the
RBAC matrix walks it) stays as production has it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.v1.auth import CallerScope
from app.core.config import Settings
from app.core.db import ReadSessionsDep
from app.core.errors import ForbiddenError
from app.core.principal import Principal
from app.core.roles import Role
from app.core.scope import ProvinceScope, normalise_province
from app.main import create_app
from app.models.case import Case, CasePriority
from app.models.reference import RefComplaintType
from tests.support.harness import UserFactory, auth_headers, serve

CASES = "/test-only/cases"


@pytest.fixture(scope="module")
async def scoped_client(app_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(app_settings)

    @app.get(CASES)
    async def list_cases(scope: CallerScope, sessions: ReadSessionsDep) -> list[str]:
        async with sessions() as session:
            query = select(Case.case_number).where(scope.where(Case.province))
            return list(await session.scalars(query.order_by(Case.case_number)))

    @app.get(CASES + "/{case_id}")
    async def read_case(
        case_id: uuid.UUID, scope: CallerScope, sessions: ReadSessionsDep
    ) -> dict[str, str]:
        async with sessions() as session:
            case = await session.get(Case, case_id)
        province = case.province if case is not None else None
        scope.check(province, "case")
        assert case is not None
        return {"case_number": case.case_number}

    async with serve(app) as client:
        yield client


@pytest.fixture
async def cases(db_session: AsyncSession) -> dict[str, uuid.UUID]:
    """One case in each of two provinces; their ids by province."""
    complaint = (await db_session.scalars(select(RefComplaintType).limit(1))).one()
    made = {}
    for number, province in enumerate(("Krabi", "Chiang Mai")):
        case = Case(
            case_number=f"T-{uuid.uuid4().hex[:8]}-{number}",
            priority=CasePriority.MEDIUM,
            service_type_id=complaint.service_type_id,
            complaint_type_id=complaint.id,
            province=province,
            complainant_name="Somchai",
            description="Scope test",
        )
        db_session.add(case)
        made[province] = case
    await db_session.commit()
    return {province: case.id for province, case in made.items()}


async def test_an_officer_lists_their_province_and_other_roles_list_all(
    scoped_client: httpx.AsyncClient, make_user: UserFactory, cases: dict[str, uuid.UUID]
) -> None:
    officer = await make_user(Role.OFFICER, province="Krabi")
    dispatcher = await make_user(Role.DISPATCHER)
    elsewhere = await make_user(Role.OFFICER, province="Phuket")

    own = await scoped_client.get(CASES, headers=auth_headers(officer))
    every = await scoped_client.get(CASES, headers=auth_headers(dispatcher))
    none = await scoped_client.get(CASES, headers=auth_headers(elsewhere))

    assert own.status_code == 200, own.text
    assert len(own.json()) == 1
    assert len(every.json()) == 2
    assert none.status_code == 200
    assert none.json() == []


async def test_a_case_of_another_province_is_answered_as_missing(
    scoped_client: httpx.AsyncClient, make_user: UserFactory, cases: dict[str, uuid.UUID]
) -> None:
    officer = await make_user(Role.OFFICER, province="Krabi")
    executive = await make_user(Role.EXECUTIVE)

    own = await scoped_client.get(f"{CASES}/{cases['Krabi']}", headers=auth_headers(officer))
    other = await scoped_client.get(f"{CASES}/{cases['Chiang Mai']}", headers=auth_headers(officer))
    unknown = await scoped_client.get(f"{CASES}/{uuid.uuid4()}", headers=auth_headers(officer))
    seen = await scoped_client.get(
        f"{CASES}/{cases['Chiang Mai']}", headers=auth_headers(executive)
    )

    assert own.status_code == 200, own.text
    assert other.status_code == unknown.status_code == 404
    assert other.json()["detail"] == unknown.json()["detail"] == "No such case"
    assert seen.status_code == 200


async def test_the_scope_needs_a_signed_in_caller(scoped_client: httpx.AsyncClient) -> None:
    assert (await scoped_client.get(CASES)).status_code == 401


def test_a_scoped_role_without_a_province_sees_nothing_rather_than_everything() -> None:
    officer_without_province = Principal(
        id=uuid.uuid4(), role=Role.OFFICER, responsible_province=None
    )
    with pytest.raises(ForbiddenError):
        ProvinceScope.of(officer_without_province)


@pytest.mark.parametrize(
    "spelling", ["Chiang Mai", " Chiang  Mai ", "Chiang\u00a0Mai", "Chiang\tMai"]
)
async def test_a_province_is_stored_in_one_spelling_and_matches_its_cases(
    scoped_client: httpx.AsyncClient,
    client: httpx.AsyncClient,
    make_user: UserFactory,
    cases: dict[str, uuid.UUID],
    spelling: str,
) -> None:
    admin = await make_user()
    officer = await make_user(Role.OFFICER, province="Krabi")

    moved = await client.put(
        f"/api/v1/users/{officer.id}",
        json={"responsible_province": spelling},
        headers=auth_headers(admin),
    )

    assert moved.status_code == 200, moved.text
    assert moved.json()["responsible_province"] == "Chiang Mai"
    assert normalise_province(spelling) == "Chiang Mai"
    listed = await scoped_client.get(CASES, headers=auth_headers(officer))
    assert len(listed.json()) == 1
    mine = await scoped_client.get(f"{CASES}/{cases['Chiang Mai']}", headers=auth_headers(officer))
    assert mine.status_code == 200
