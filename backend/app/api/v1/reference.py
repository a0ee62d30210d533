"""Reference data for every signed-in role; the SLA table for admins.

The pick lists are answered from a per-instance cache as pre-rendered JSON, bypassing response
validation, with an ETag so a client revalidating an unchanged list gets a bodiless 304.
Authentication still runs on every request, hit or not.

The lists without query parameters are what every screen loads, so a hit is kept to the bare
minimum: they authenticate with a direct call to `authenticate` and read `If-None-Match` from
the headers instead of declaring a dependency and a header parameter, whose resolution by FastAPI
cost as much as the rest of a hit (190 → 151 µs per request in process). `openapi_extra`
documents both, so the OpenAPI document and Swagger UI are unchanged; the access matrix test
checks these routes by calling them like every other.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Final, TypeAlias

from fastapi import APIRouter, Query, Request, Response

from app.api.v1.query import refuse_unexpected_query
from app.api.v1.responses import ADMIN_RESPONSES, AUTH_RESPONSES
from app.core.auth import BEARER_SCHEME_NAME, CurrentUser, authenticate
from app.core.db import read_sessions
from app.core.errors import ErrorResponse
from app.core.rbac import AdminUser
from app.schemas.reference import (
    ClosureReasonResponse,
    ComplaintTypeResponse,
    HandlerResponse,
    ServiceTypeResponse,
    SlaConfigResponse,
)
from app.services import reference
from app.services.reference import (
    REFERENCE_TTL_SECONDS,
    ProvincesCache,
    ReferenceCache,
    RenderedJson,
)

# `private`: the lists are the same for everyone, but only signed-in callers may see them, so
# no shared cache (CDN, proxy) may store them.
CACHE_CONTROL: Final = f"private, max-age={REFERENCE_TTL_SECONDS}"
# The provinces change with the cases, so clients revalidate every time (a 304 while unchanged).
PROVINCES_CACHE_CONTROL: Final = "private, no-cache"
# PostgreSQL smallint, the type of the service type id; beyond it no id can exist.
_MAX_SERVICE_TYPE_ID: Final = 32767

_UNKNOWN_QUERY: dict[int | str, dict[str, object]] = {
    422: {"model": ErrorResponse, "description": "Unknown or invalid query parameters"},
}
CACHED_RESPONSES: dict[int | str, dict[str, object]] = {
    **AUTH_RESPONSES,
    **_UNKNOWN_QUERY,
    304: {"description": "Not modified: the `If-None-Match` ETag is still current"},
}


def _cache(request: Request) -> ReferenceCache:
    cache: ReferenceCache = request.state.reference_cache
    return cache


_Endpoint: TypeAlias = Callable[[Request], Awaitable[Response]]
_IF_NONE_MATCH_PARAMETER: Final = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "An ETag from an earlier response, to get 304 if unchanged",
}
# What a dependency and a header parameter would have told OpenAPI (see the module docstring).
_CONDITIONAL_GET: Final = {"parameters": [_IF_NONE_MATCH_PARAMETER]}
_SIGNED_IN_CONDITIONAL_GET: Final = {**_CONDITIONAL_GET, "security": [{BEARER_SCHEME_NAME: []}]}


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    # RFC 9110 §13.1.2: weak comparison, a list of tags, or `*`.
    if if_none_match is None:
        return False
    candidates = (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
    return any(tag in ("*", etag) for tag in candidates)


def _cached_json(
    request: Request, rendered: RenderedJson, cache_control: str = CACHE_CONTROL
) -> Response:
    """The rendered list, or a bodiless 304 when the request's `If-None-Match` still matches."""
    headers = {"Cache-Control": cache_control, "ETag": rendered.etag}
    if _etag_matches(request.headers.get("if-none-match"), rendered.etag):
        return Response(status_code=304, headers=headers)
    return Response(rendered.body, media_type="application/json", headers=headers)


router = APIRouter(prefix="/reference", tags=["reference"])


def _signed_in_list(path: str, item: Any) -> Callable[[_Endpoint], _Endpoint]:
    """The route of a cached list without query parameters (see the module docstring)."""
    return router.get(
        path,
        response_model=list[item],
        responses=CACHED_RESPONSES,
        openapi_extra=_SIGNED_IN_CONDITIONAL_GET,
    )


async def _admit(request: Request) -> None:
    """What a dependency and FastAPI would check for such a list: a signed-in caller, no query."""
    await authenticate(request)
    refuse_unexpected_query(request)


@_signed_in_list("/service-types", ServiceTypeResponse)
async def list_service_types(request: Request) -> Response:
    """Active service types in display order."""
    await _admit(request)
    rendered = await reference.service_types_json(read_sessions(request), _cache(request))
    return _cached_json(request, rendered)


@router.get(
    "/complaint-types",
    response_model=list[ComplaintTypeResponse],
    responses={
        **CACHED_RESPONSES,
        404: {"model": ErrorResponse, "description": "No active service type has this id"},
    },
    openapi_extra=_CONDITIONAL_GET,
)
async def list_complaint_types(
    _: CurrentUser,
    request: Request,
    service_type_id: Annotated[
        int | None,
        Query(ge=1, le=_MAX_SERVICE_TYPE_ID, description="Only this service type's entries"),
    ] = None,
) -> Response:
    """Active complaint types in display order, optionally of one service type (404 if unknown)."""
    refuse_unexpected_query(request, frozenset({"service_type_id"}))
    rendered = await reference.complaint_types_json(
        read_sessions(request), _cache(request), service_type_id
    )
    return _cached_json(request, rendered)


@_signed_in_list("/handlers", HandlerResponse)
async def list_handlers(request: Request) -> Response:
    """Active handling agencies in display order."""
    await _admit(request)
    rendered = await reference.handlers_json(read_sessions(request), _cache(request))
    return _cached_json(request, rendered)


@_signed_in_list("/closure-reasons", ClosureReasonResponse)
async def list_closure_reasons(request: Request) -> Response:
    """Active closure reasons in display order."""
    await _admit(request)
    rendered = await reference.closure_reasons_json(read_sessions(request), _cache(request))
    return _cached_json(request, rendered)


@_signed_in_list("/provinces", str)
async def list_provinces(request: Request) -> Response:
    """Provinces that have cases, sorted; current as of the latest committed case."""
    await _admit(request)
    provinces_cache: ProvincesCache = request.state.provinces_cache
    rendered = await reference.provinces_json(read_sessions(request), provinces_cache)
    return _cached_json(request, rendered, PROVINCES_CACHE_CONTROL)


@router.get(
    "/sla-config",
    response_model=list[SlaConfigResponse],
    responses={**ADMIN_RESPONSES, **_UNKNOWN_QUERY},
)
async def list_sla_config(_: AdminUser, request: Request) -> list[SlaConfigResponse]:
    """SLA response and resolution hours per service type and priority (ADMIN)."""
    refuse_unexpected_query(request)
    rows = await reference.sla_config(read_sessions(request))
    return [SlaConfigResponse.model_validate(row) for row in rows]
