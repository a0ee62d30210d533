"""Reference endpoints over HTTP: contents, access per role, the response cache, provinces.

Tests that watch the cache build an app of their own (`fresh_client`), whose cache runs on a
clock the test moves instead of sleeping through the TTL.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.config import Settings
from app.core.roles import Role
from app.main import create_app
from app.models import (
    Case,
    CasePriority,
    RefClosureReason,
    RefComplaintType,
    RefHandler,
    RefServiceType,
    SlaConfig,
)
from app.services.reference import DISTINCT_PROVINCES, ReferenceCache, provinces
from tests.support.harness import (
    ServedApp,
    UserFactory,
    add_user,
    auth_headers,
    client_of,
    make_settings,
    served,
)
from tests.support.jwt_tokens import FakeClock, JWKSServer

BASE = "/api/v1/reference"
SERVICE_TYPES = f"{BASE}/service-types"
COMPLAINT_TYPES = f"{BASE}/complaint-types"
HANDLERS = f"{BASE}/handlers"
CLOSURE_REASONS = f"{BASE}/closure-reasons"
PROVINCES = f"{BASE}/provinces"
SLA_CONFIG = f"{BASE}/sla-config"

CACHED_LISTS = (SERVICE_TYPES, COMPLAINT_TYPES, HANDLERS, CLOSURE_REASONS)
EVERY_ROLE_MAY_READ = (*CACHED_LISTS, PROVINCES)
ALL_PATHS = (*EVERY_ROLE_MAY_READ, SLA_CONFIG)
NOT_ADMIN = (Role.DISPATCHER, Role.OFFICER, Role.EXECUTIVE)

_REFERENCE_TABLE = re.compile(r"\bref_\w+")


@contextmanager
def reference_queries(target: Engine | Connection) -> Iterator[list[str]]:
    """Collect the SQL run on `target` that reads reference tables (so not the auth lookup)."""
    statements: list[str] = []

    def record(_conn: Connection, _cursor: Any, statement: str, *_: Any, **__: Any) -> None:
        if _REFERENCE_TABLE.search(statement):
            statements.append(statement)

    event.listen(target, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(target, "before_cursor_execute", record)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def fresh_app(
    app_settings: Settings, db_session: AsyncSession, clock: FakeClock
) -> AsyncIterator[ServedApp]:
    """A new app on the same database, its reference cache empty and on `clock`."""
    async with served(create_app(app_settings), reference_cache=ReferenceCache(timer=clock)) as app:
        yield app


@pytest.fixture
async def fresh_client(
    fresh_app: ServedApp, db_session: AsyncSession
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `fresh_app`; what the test wrote is committed before each request."""
    async with client_of(fresh_app, before_each_request=db_session.commit) as client:
        yield client


@pytest.fixture
async def dispatcher_headers(make_user: UserFactory) -> dict[str, str]:
    return auth_headers(await make_user(Role.DISPATCHER))


async def add_cases(session: AsyncSession, provinces_of_cases: list[str]) -> None:
    complaint_type = await session.scalar(sa.select(RefComplaintType).limit(1))
    assert complaint_type is not None
    session.add_all(
        Case(
            case_number=f"T-{uuid.uuid4().hex[:12]}",
            priority=CasePriority.LOW,
            service_type_id=complaint_type.service_type_id,
            complaint_type_id=complaint_type.id,
            province=province,
            complainant_name="Test Complainant",
            description="Test case",
        )
        for province in provinces_of_cases
    )
    await session.flush()


async def deactivate(session: AsyncSession, model: type[Any], code: str) -> None:
    await session.execute(sa.update(model).where(model.code == code).values(is_active=False))


async def first_code(session: AsyncSession, model: type[Any]) -> str:
    code = await session.scalar(sa.select(model.code).order_by(model.sort_order).limit(1))
    assert isinstance(code, str)
    return code


async def count(session: AsyncSession, model: type[Any]) -> int:
    total = await session.scalar(sa.select(sa.func.count()).select_from(model))
    assert total is not None
    return total


# --- contents --------------------------------------------------------------------------------


async def test_service_types_are_the_twelve_seeded_in_display_order(
    client: httpx.AsyncClient, db_session: AsyncSession, dispatcher_headers: dict[str, str]
) -> None:
    response = await client.get(SERVICE_TYPES, headers=dispatcher_headers)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert len(body) == 12
    expected = (
        await db_session.execute(
            sa.select(RefServiceType.id, RefServiceType.code, RefServiceType.name).order_by(
                RefServiceType.sort_order
            )
        )
    ).all()
    assert body == [{"id": id_, "code": code, "name": name} for id_, code, name in expected]


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("path", EVERY_ROLE_MAY_READ)
async def test_every_role_reads_the_lists(
    client: httpx.AsyncClient, make_user: UserFactory, role: Role, path: str
) -> None:
    response = await client.get(path, headers=auth_headers(await make_user(role)))

    assert response.status_code == 200
    assert isinstance(response.json(), list)


async def test_handlers_and_closure_reasons_list_the_seeded_rows(
    client: httpx.AsyncClient, db_session: AsyncSession, dispatcher_headers: dict[str, str]
) -> None:
    for path, model in ((HANDLERS, RefHandler), (CLOSURE_REASONS, RefClosureReason)):
        codes = (await db_session.scalars(sa.select(model.code).order_by(model.sort_order))).all()
        response = await client.get(path, headers=dispatcher_headers)
        assert response.status_code == 200
        assert [entry["code"] for entry in response.json()] == list(codes)


async def test_complaint_types_of_one_service_type(
    client: httpx.AsyncClient, db_session: AsyncSession, dispatcher_headers: dict[str, str]
) -> None:
    water = await db_session.scalar(sa.select(RefServiceType).where(RefServiceType.code == "WATER"))
    assert water is not None
    expected = (
        await db_session.scalars(
            sa.select(RefComplaintType.code)
            .where(RefComplaintType.service_type_id == water.id)
            .order_by(RefComplaintType.sort_order)
        )
    ).all()

    response = await client.get(
        COMPLAINT_TYPES, params={"service_type_id": water.id}, headers=dispatcher_headers
    )

    assert response.status_code == 200
    body = response.json()
    assert [entry["code"] for entry in body] == list(expected)
    assert {entry["service_type_id"] for entry in body} == {water.id}


async def test_complaint_types_unfiltered_lists_all_grouped_by_service_type(
    client: httpx.AsyncClient, db_session: AsyncSession, dispatcher_headers: dict[str, str]
) -> None:
    expected = (
        await db_session.scalars(
            sa.select(RefComplaintType.code)
            .join(RefComplaintType.service_type)
            .order_by(RefServiceType.sort_order, RefComplaintType.sort_order)
        )
    ).all()

    response = await client.get(COMPLAINT_TYPES, headers=dispatcher_headers)

    assert response.status_code == 200
    assert [entry["code"] for entry in response.json()] == list(expected)


async def test_complaint_types_of_an_unknown_service_type_is_404(
    client: httpx.AsyncClient, dispatcher_headers: dict[str, str]
) -> None:
    response = await client.get(
        COMPLAINT_TYPES, params={"service_type_id": 999}, headers=dispatcher_headers
    )

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert "999" in response.json()["detail"]


@pytest.mark.parametrize("service_type_id", ["0", "-1", "40000", "water"])
async def test_complaint_types_with_an_impossible_service_type_id_is_422(
    client: httpx.AsyncClient, dispatcher_headers: dict[str, str], service_type_id: str
) -> None:
    response = await client.get(
        COMPLAINT_TYPES, params={"service_type_id": service_type_id}, headers=dispatcher_headers
    )

    assert response.status_code == 422
    assert response.json()["code"] == "validation_error"


async def test_inactive_rows_are_left_out(
    fresh_client: httpx.AsyncClient, db_session: AsyncSession, dispatcher_headers: dict[str, str]
) -> None:
    await deactivate(db_session, RefServiceType, "TAX")
    await deactivate(db_session, RefComplaintType, "WATER_LEAK")
    await deactivate(db_session, RefHandler, (await first_code(db_session, RefHandler)))
    await deactivate(db_session, RefClosureReason, (await first_code(db_session, RefClosureReason)))
    tax_id = await db_session.scalar(
        sa.select(RefServiceType.id).where(RefServiceType.code == "TAX")
    )

    service_types = (await fresh_client.get(SERVICE_TYPES, headers=dispatcher_headers)).json()
    complaint_types = (await fresh_client.get(COMPLAINT_TYPES, headers=dispatcher_headers)).json()
    handlers = (await fresh_client.get(HANDLERS, headers=dispatcher_headers)).json()
    reasons = (await fresh_client.get(CLOSURE_REASONS, headers=dispatcher_headers)).json()
    of_tax = await fresh_client.get(
        COMPLAINT_TYPES, params={"service_type_id": tax_id}, headers=dispatcher_headers
    )

    assert len(service_types) == 11
    assert "TAX" not in {entry["code"] for entry in service_types}
    complaint_codes = {entry["code"] for entry in complaint_types}
    assert "WATER_LEAK" not in complaint_codes
    # Under a deactivated service type nothing can be picked, so its complaint types go too.
    assert not {code for code in complaint_codes if code.startswith("TAX_")}
    assert {entry["service_type_id"] for entry in complaint_types}.isdisjoint({tax_id})
    assert len(handlers) == await count(db_session, RefHandler) - 1
    assert len(reasons) == await count(db_session, RefClosureReason) - 1
    assert of_tax.status_code == 404


async def test_an_active_service_type_without_complaint_types_gives_an_empty_list(
    fresh_client: httpx.AsyncClient, db_session: AsyncSession, dispatcher_headers: dict[str, str]
) -> None:
    # Emptied by deactivation, not by inserting a new type: the seed is restored after each
    # test, but identity values taken are not given back and would shift the ids of new rows.
    water_id = await db_session.scalar(
        sa.select(RefServiceType.id).where(RefServiceType.code == "WATER")
    )
    await db_session.execute(
        sa.update(RefComplaintType)
        .where(RefComplaintType.service_type_id == water_id)
        .values(is_active=False)
    )

    response = await fresh_client.get(
        COMPLAINT_TYPES, params={"service_type_id": water_id}, headers=dispatcher_headers
    )

    assert response.status_code == 200
    assert response.json() == []


# --- cache -----------------------------------------------------------------------------------


async def test_a_cache_hit_runs_no_reference_query_until_the_entry_expires(
    fresh_app: ServedApp,
    fresh_client: httpx.AsyncClient,
    clock: FakeClock,
    dispatcher_headers: dict[str, str],
) -> None:
    with reference_queries(fresh_app.state["engine"].sync_engine) as statements:
        miss = await fresh_client.get(SERVICE_TYPES, headers=dispatcher_headers)
        assert len(statements) == 1

        hit = await fresh_client.get(SERVICE_TYPES, headers=dispatcher_headers)
        clock.advance(299)
        still_fresh = await fresh_client.get(SERVICE_TYPES, headers=dispatcher_headers)
        assert len(statements) == 1

        clock.advance(2)
        expired = await fresh_client.get(SERVICE_TYPES, headers=dispatcher_headers)
        assert len(statements) == 2

    assert miss.status_code == hit.status_code == still_fresh.status_code == 200
    assert miss.content == hit.content == still_fresh.content == expired.content


async def test_cache_is_keyed_by_parameters_not_by_caller(
    fresh_app: ServedApp, fresh_client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    first = auth_headers(await make_user(Role.DISPATCHER))
    second = auth_headers(await make_user(Role.OFFICER))
    with reference_queries(fresh_app.state["engine"].sync_engine) as statements:
        all_types = await fresh_client.get(COMPLAINT_TYPES, headers=first)
        await fresh_client.get(COMPLAINT_TYPES, headers=second)
        assert len(statements) == 1

        of_one = await fresh_client.get(
            COMPLAINT_TYPES, params={"service_type_id": 1}, headers=second
        )
        # The filtered list is a different entry: its own existence check and list query.
        assert len(statements) == 3

    assert len(of_one.json()) < len(all_types.json())


async def test_cached_lists_carry_cache_control_and_an_etag(
    fresh_client: httpx.AsyncClient, dispatcher_headers: dict[str, str]
) -> None:
    for path in CACHED_LISTS:
        response = await fresh_client.get(path, headers=dispatcher_headers)
        assert response.headers["cache-control"] == "private, max-age=300"
        assert re.fullmatch(r'"[0-9a-f]{32}"', response.headers["etag"])


async def test_a_current_etag_gets_304_without_a_body(
    fresh_client: httpx.AsyncClient, dispatcher_headers: dict[str, str]
) -> None:
    first = await fresh_client.get(SERVICE_TYPES, headers=dispatcher_headers)
    etag = first.headers["etag"]

    for if_none_match in (etag, f"W/{etag}", f'"stale", {etag}', "*"):
        response = await fresh_client.get(
            SERVICE_TYPES, headers={**dispatcher_headers, "If-None-Match": if_none_match}
        )
        assert response.status_code == 304, if_none_match
        assert response.content == b""
        assert response.headers["etag"] == etag
        assert response.headers["cache-control"] == "private, max-age=300"


async def test_an_if_none_match_split_over_two_field_lines_is_one_list(
    fresh_client: httpx.AsyncClient, dispatcher_headers: dict[str, str]
) -> None:
    etag = (await fresh_client.get(HANDLERS, headers=dispatcher_headers)).headers["etag"]

    response = await fresh_client.get(
        HANDLERS,
        headers=[
            *dispatcher_headers.items(),
            ("If-None-Match", '"stale"'),
            ("If-None-Match", etag),
        ],
    )

    assert response.status_code == 304
    assert response.headers["etag"] == etag


async def test_a_stale_etag_gets_the_list(
    fresh_client: httpx.AsyncClient, dispatcher_headers: dict[str, str]
) -> None:
    response = await fresh_client.get(
        SERVICE_TYPES, headers={**dispatcher_headers, "If-None-Match": '"0123456789abcdef"'}
    )

    assert response.status_code == 200
    assert len(response.json()) == 12


async def test_a_cache_hit_still_requires_a_valid_token(
    fresh_client: httpx.AsyncClient, dispatcher_headers: dict[str, str]
) -> None:
    warm = await fresh_client.get(SERVICE_TYPES, headers=dispatcher_headers)
    assert warm.status_code == 200

    anonymous = await fresh_client.get(SERVICE_TYPES, headers={"If-None-Match": "*"})

    assert anonymous.status_code == 401


async def test_concurrent_misses_run_one_query(
    fresh_database_url: str, jwks_server: JWKSServer, clock: FakeClock
) -> None:
    # Concurrent requests need sessions of their own, so real commits in a database of this
    # test rather than the shared test transaction.
    headers = auth_headers(await add_user(fresh_database_url, Role.DISPATCHER))
    settings = make_settings(fresh_database_url, cognito_jwks_url=jwks_server.url, db_pool_size=25)
    cache = ReferenceCache(timer=clock)

    app = create_app(settings)
    async with served(app, reference_cache=cache) as asgi, client_of(asgi) as client:
        with reference_queries(asgi.state["engine"].sync_engine) as statements:
            responses = await asyncio.gather(
                *(client.get(SERVICE_TYPES, headers=headers) for _ in range(20))
            )

    assert [response.status_code for response in responses] == [200] * 20
    assert len({response.content for response in responses}) == 1
    assert len(statements) == 1


# --- provinces -------------------------------------------------------------------------------


async def test_provinces_are_distinct_and_sorted(
    client: httpx.AsyncClient, db_session: AsyncSession, dispatcher_headers: dict[str, str]
) -> None:
    await add_cases(db_session, ["Phuket", "Bangkok", "Chiang Mai", "Bangkok", "Phuket"])

    response = await client.get(PROVINCES, headers=dispatcher_headers)

    assert response.status_code == 200
    assert response.json() == ["Bangkok", "Chiang Mai", "Phuket"]


async def test_a_new_province_shows_on_the_next_request(
    client: httpx.AsyncClient, db_session: AsyncSession, dispatcher_headers: dict[str, str]
) -> None:
    await add_cases(db_session, ["Bangkok"])
    assert (await client.get(PROVINCES, headers=dispatcher_headers)).json() == ["Bangkok"]

    await add_cases(db_session, ["Krabi"])

    assert (await client.get(PROVINCES, headers=dispatcher_headers)).json() == ["Bangkok", "Krabi"]


async def test_provinces_carry_an_etag_and_must_be_revalidated(
    client: httpx.AsyncClient, db_session: AsyncSession, dispatcher_headers: dict[str, str]
) -> None:
    await add_cases(db_session, ["Bangkok"])
    first = await client.get(PROVINCES, headers=dispatcher_headers)
    assert first.headers["cache-control"] == "private, no-cache"

    unchanged = await client.get(
        PROVINCES, headers={**dispatcher_headers, "If-None-Match": first.headers["etag"]}
    )
    await add_cases(db_session, ["Krabi"])
    changed = await client.get(
        PROVINCES, headers={**dispatcher_headers, "If-None-Match": first.headers["etag"]}
    )

    assert (unchanged.status_code, unchanged.content) == (304, b"")
    assert changed.status_code == 200
    assert changed.json() == ["Bangkok", "Krabi"]


async def test_no_cases_means_no_provinces(
    client: httpx.AsyncClient, dispatcher_headers: dict[str, str]
) -> None:
    response = await client.get(PROVINCES, headers=dispatcher_headers)

    assert response.status_code == 200
    assert response.json() == []


async def test_provinces_walk_the_province_index_instead_of_reading_every_case(
    served_app: ServedApp, db_session: AsyncSession
) -> None:
    complaint_type = await db_session.scalar(sa.select(RefComplaintType).limit(1))
    assert complaint_type is not None
    await db_session.execute(
        sa.text(
            "INSERT INTO cases (case_number, priority, service_type_id, complaint_type_id,"
            " province, complainant_name, description)"
            " SELECT 'BULK-' || n, 'LOW', :service_type_id, :complaint_type_id,"
            " 'Province ' || lpad((n % 50)::text, 2, '0'), 'Bulk Complainant', 'Bulk case'"
            " FROM generate_series(1, 20000) AS n"
        ),
        {
            "service_type_id": complaint_type.service_type_id,
            "complaint_type_id": complaint_type.id,
        },
    )
    await db_session.commit()
    await db_session.execute(sa.text("ANALYZE cases"))
    sql = str(DISTINCT_PROVINCES.compile(dialect=(await db_session.connection()).dialect))

    # ANALYZE and VERBOSE: without both PostgreSQL does not print the recursive step's subplan.
    explain = sa.text(f"EXPLAIN (ANALYZE, VERBOSE, COSTS OFF) {sql}")
    plan = "\n".join((await db_session.scalars(explain)).all())

    # One probe for the smallest province, one per step for the next greater one.
    index_scans = re.findall(r"Index (?:Only )?Scan using ix_cases_province on public\.cases", plan)
    assert len(index_scans) == 2, plan
    assert re.search(r"Index Cond: .*\bcases\.province > provinces\w*\.province", plan), plan
    assert "Seq Scan" not in plan, plan
    assert await provinces(served_app.state["read_sessionmaker"]) == [
        f"Province {n:02d}" for n in range(50)
    ]


# --- access ----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ALL_PATHS)
async def test_every_endpoint_is_401_without_a_token(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["code"] == "not_authenticated"


@pytest.mark.parametrize("role", NOT_ADMIN)
async def test_sla_config_is_403_for_other_roles(
    client: httpx.AsyncClient, make_user: UserFactory, role: Role
) -> None:
    response = await client.get(SLA_CONFIG, headers=auth_headers(await make_user(role)))

    assert response.status_code == 403
    assert response.json()["code"] == "forbidden"


async def test_sla_config_for_admin_lists_every_row_with_its_service_type(
    client: httpx.AsyncClient, db_session: AsyncSession, make_user: UserFactory
) -> None:
    response = await client.get(SLA_CONFIG, headers=auth_headers(await make_user(Role.ADMIN)))

    assert response.status_code == 200
    body = response.json()
    assert len(body) == await count(db_session, SlaConfig)
    first_type = await db_session.scalar(
        sa.select(RefServiceType).order_by(RefServiceType.sort_order).limit(1)
    )
    assert first_type is not None
    assert body[0]["service_type"] == {
        "id": first_type.id,
        "code": first_type.code,
        "name": first_type.name,
    }
    assert [row["priority"] for row in body[:4]] == [priority.value for priority in CasePriority]
    assert set(body[0]) == {"id", "service_type", "priority", "response_hours", "resolution_hours"}


@pytest.mark.parametrize(
    "path",
    [SERVICE_TYPES, "/api/v1/reference/complaint-types", PROVINCES, "/api/v1/reference/handlers"],
)
async def test_a_misspelt_query_parameter_is_refused(
    client: httpx.AsyncClient, dispatcher_headers: dict[str, str], path: str
) -> None:
    response = await client.get(f"{path}?servce_type_id=3", headers=dispatcher_headers)
    assert response.status_code == 422
    assert "servce_type_id" in response.json()["detail"]


async def test_openapi_documents_the_bearer_token_and_if_none_match_of_every_list(
    client: httpx.AsyncClient,
) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]

    for path in EVERY_ROLE_MAY_READ:
        operation = paths[path]["get"]
        assert operation["security"] == [{"HTTPBearer": []}], path
        headers = [p["name"] for p in operation.get("parameters", []) if p["in"] == "header"]
        assert headers == ["If-None-Match"], path
        assert {"200", "304", "401", "422"} <= set(operation["responses"]), path
