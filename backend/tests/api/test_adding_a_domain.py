"""A throw-away domain built from docs/architecture.md's "Adding a domain" and nothing more.

Case notes read through the shared pieces: schemas from `PageParams`, `Page` and `SearchText`,
a service over a `PagedQuery` with `read_page`, a `CountCache` and the caller's scope, a router
of `CredentialsFirstRoute` with `require_role`, `CallerScope` and the shared `responses`, mounted
on an app of this module's own. If the page leaves out something a domain needs, this fails.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, Final

import httpx
import pytest
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, TypeAdapter
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.api.routing import CredentialsFirstRoute
from app.api.v1 import API_PREFIX
from app.api.v1.auth import CallerScope
from app.api.v1.query import QueryModel
from app.api.v1.responses import AUTH_RESPONSES, INVALID, error
from app.core.config import Settings
from app.core.db import ReadSessions, ReadSessionsDep
from app.core.errors import NotFoundError
from app.core.pagination import UNWATCHED, CountCache, PagedQuery, escape_like, orders, read_page
from app.core.principal import Principal
from app.core.rbac import require_role
from app.core.roles import Role
from app.core.scope import ProvinceScope
from app.main import create_app
from app.models.case import Case, CasePriority
from app.models.reference import RefComplaintType
from app.schemas.page import Page, PageParams
from app.schemas.text import SearchText
from tests.support.harness import UserFactory, auth_headers, serve

# -- app/schemas/notes.py ---------------------------------------------------------------------


class NoteResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    case_number: str
    province: str


class NoteListParams(PageParams):
    q: SearchText | None = None


class NoteList(Page[NoteResponse]):
    pass


# -- app/services/notes.py --------------------------------------------------------------------

NOTES: Final = PagedQuery(
    name="notes",
    columns=(Case.id, Case.case_number, Case.province),
    source=Case.__table__,
    filters={"q": Case.description.ilike(bindparam("q"), escape="\\")},
    sorts={"case_number": orders(Case.case_number, Case.id, descending=False)},
    province=Case.province,
)
COUNTS: Final = CountCache(UNWATCHED)
_LISTED: Final = TypeAdapter(list[NoteResponse])


async def list_notes(
    sessions: ReadSessions, scope: ProvinceScope, params: NoteListParams
) -> NoteList:
    values = {} if params.q is None else {"q": f"%{escape_like(params.q)}%"}
    async with sessions() as session:
        page = await read_page(
            await session.connection(),
            NOTES,
            COUNTS,
            values,
            sort="case_number",
            page=params.page,
            page_size=params.page_size,
            scope=scope,
        )
    return NoteList(
        items=_LISTED.validate_python(page.rows),
        total=page.total,
        page=params.page,
        page_size=params.page_size,
    )


async def get_note(sessions: ReadSessions, scope: ProvinceScope, note_id: uuid.UUID) -> Case:
    async with sessions() as session:
        case = await session.get(Case, note_id)
    if case is None:
        raise NotFoundError("No such case")
    scope.check(case.province, "case")
    return case


# -- app/api/v1/notes.py ----------------------------------------------------------------------

CaseWorker = Annotated[Principal, Depends(require_role(Role.ADMIN, Role.DISPATCHER, Role.OFFICER))]
router = APIRouter(prefix="/notes", tags=["notes"], route_class=CredentialsFirstRoute)
NOTE_QUERY: Final = QueryModel(NoteListParams)


@router.get(
    "",
    response_model=NoteList,
    responses={**AUTH_RESPONSES, **INVALID},
    openapi_extra=NOTE_QUERY.openapi_extra,
)
async def read_notes(
    _: CaseWorker, scope: CallerScope, request: Request, sessions: ReadSessionsDep
) -> NoteList:
    """Notes in the caller's scope, paginated."""
    return await list_notes(sessions, scope, NOTE_QUERY.parse(request))


@router.get(
    "/{note_id}",
    response_model=NoteResponse,
    responses={**AUTH_RESPONSES, **error(404, "No case with this id in the caller's scope")},
)
async def read_note(
    note_id: uuid.UUID, _: CaseWorker, scope: CallerScope, sessions: ReadSessionsDep
) -> NoteResponse:
    """One note."""
    return NoteResponse.model_validate(await get_note(sessions, scope, note_id))


# -- the tests --------------------------------------------------------------------------------

NOTES_URL = f"{API_PREFIX}/notes"


@pytest.fixture(scope="module")
async def notes_client(app_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(app_settings)
    app.include_router(router, prefix=API_PREFIX)
    async with serve(app) as client:
        yield client


@pytest.fixture
async def notes(db_session: AsyncSession) -> dict[str, list[uuid.UUID]]:
    """Five cases in Krabi, two in Chiang Mai; their ids by province, in case-number order."""
    complaint = (await db_session.scalars(select(RefComplaintType).limit(1))).one()
    made: dict[str, list[Case]] = {"Krabi": [], "Chiang Mai": []}
    for number, province in enumerate(["Krabi"] * 5 + ["Chiang Mai"] * 2):
        case = Case(
            case_number=f"N-{number:02d}",
            priority=CasePriority.LOW,
            service_type_id=complaint.service_type_id,
            complaint_type_id=complaint.id,
            province=province,
            complainant_name="Somchai",
            description="street light out" if number % 2 else "pothole",
        )
        db_session.add(case)
        made[province].append(case)
    await db_session.commit()
    return {province: [case.id for case in cases] for province, cases in made.items()}


async def pages(client: httpx.AsyncClient, headers: dict[str, str], **query: Any) -> list[Any]:
    answers = []
    for page in (1, 2, 3, 4):
        response = await client.get(
            NOTES_URL, params={"page": page, "page_size": 2, **query}, headers=headers
        )
        assert response.status_code == 200, response.text
        answers.append(response.json())
    return answers


async def test_an_officer_pages_through_their_province_with_its_count(
    notes_client: httpx.AsyncClient, make_user: UserFactory, notes: dict[str, list[uuid.UUID]]
) -> None:
    officer = auth_headers(await make_user(Role.OFFICER, province="Krabi"))

    answers = await pages(notes_client, officer)

    assert [answer["total"] for answer in answers] == [5, 5, 5, 5]
    assert [len(answer["items"]) for answer in answers] == [2, 2, 1, 0]
    listed = [item["id"] for answer in answers for item in answer["items"]]
    assert listed == [str(note) for note in notes["Krabi"]]


async def test_other_roles_list_every_province_and_a_filter_counts_what_it_keeps(
    notes_client: httpx.AsyncClient, make_user: UserFactory, notes: dict[str, list[uuid.UUID]]
) -> None:
    dispatcher = auth_headers(await make_user(Role.DISPATCHER))
    officer = auth_headers(await make_user(Role.OFFICER, province="Krabi"))

    everything = (await pages(notes_client, dispatcher))[0]
    lights = (await pages(notes_client, dispatcher, q="LIGHT"))[0]
    own_lights = (await pages(notes_client, officer, q="light"))[0]
    blank = await notes_client.get(NOTES_URL, params={"q": " "}, headers=dispatcher)

    assert everything["total"] == 7
    assert lights["total"] == 3  # N-01, N-03, N-05
    assert own_lights["total"] == 2  # N-01, N-03: N-05 is in Chiang Mai
    assert blank.status_code == 422


async def test_another_provinces_item_is_answered_as_missing(
    notes_client: httpx.AsyncClient, make_user: UserFactory, notes: dict[str, list[uuid.UUID]]
) -> None:
    officer = auth_headers(await make_user(Role.OFFICER, province="Krabi"))
    elsewhere = auth_headers(await make_user(Role.OFFICER, province="Phuket"))

    own = await notes_client.get(f"{NOTES_URL}/{notes['Krabi'][0]}", headers=officer)
    other = await notes_client.get(f"{NOTES_URL}/{notes['Chiang Mai'][0]}", headers=officer)
    unknown = await notes_client.get(f"{NOTES_URL}/{uuid.uuid4()}", headers=officer)
    nothing = (await pages(notes_client, elsewhere))[0]

    assert own.status_code == 200, own.text
    assert own.json()["province"] == "Krabi"
    assert other.status_code == unknown.status_code == 404
    assert other.json() == {**unknown.json(), "request_id": other.json()["request_id"]}
    assert (nothing["total"], nothing["items"]) == (0, [])


async def test_a_role_the_router_does_not_name_is_refused(
    notes_client: httpx.AsyncClient, make_user: UserFactory, notes: dict[str, list[uuid.UUID]]
) -> None:
    executive = auth_headers(await make_user(Role.EXECUTIVE))

    listed = await notes_client.get(NOTES_URL, headers=executive)
    one = await notes_client.get(f"{NOTES_URL}/{notes['Krabi'][0]}", headers=executive)
    anonymous = await notes_client.get(NOTES_URL)
    misspelt = await notes_client.get(
        NOTES_URL, params={"pagesize": 2}, headers=auth_headers(await make_user(Role.ADMIN))
    )

    assert listed.status_code == one.status_code == 403
    assert anonymous.status_code == 401
    assert misspelt.status_code == 422


async def test_the_list_documents_its_query(app_settings: Settings) -> None:
    app = create_app(app_settings)
    app.include_router(router, prefix=API_PREFIX)
    operation = app.openapi()["paths"][NOTES_URL]["get"]
    assert [parameter["name"] for parameter in operation["parameters"]] == [
        "page",
        "page_size",
        "q",
    ]


def test_every_file_the_section_names_exists() -> None:
    root = Path(__file__).resolve().parents[3]
    page = (root / "docs" / "architecture.md").read_text()
    section = page.split("## Adding a domain", 1)[1].split("\n## ", 1)[0]
    named = {path for path in re.findall(r"`([\w/]+\.py)`", section) if "/" in path}
    assert len(named) >= 10, named

    def exists(path: str) -> bool:
        return any(
            (base / path).is_file() for base in (root, root / "backend", root / "backend/app")
        )

    assert sorted(path for path in named if not exists(path)) == []
