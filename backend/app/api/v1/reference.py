"""Reference data for every signed-in role; the SLA table for admins.

The pick lists are answered from a per-instance cache as pre-rendered JSON, bypassing response
validation, with an ETag so a client revalidating an unchanged list gets a bodiless 304.
Authentication still runs on every request, hit or not.
"""

from __future__ import annotations

from typing import Annotated, Final

from fastapi import Query, Request, Response

from app.api.deps import reference_reads
from app.api.routing import API_PREFIX, CredentialsFirstRoute, GatedRouter
from app.api.v1.auth import AdminUser, CurrentUser
from app.api.v1.query import refuse_unexpected_query
from app.api.v1.responses import (
    ADMIN_RESPONSES,
    AUTH_RESPONSES,
    UNKNOWN_QUERY,
    Responses,
    error,
)
from app.core.conditional import ETaggedResponse, if_none_match_parameter
from app.core.db import ReadSessionsDep
from app.schemas.reference import (
    ClosureReasonResponse,
    ComplaintTypeResponse,
    HandlerResponse,
    ServiceTypeResponse,
    SlaConfigResponse,
)
from app.services import reference
from app.services.reference import REFERENCE_TTL_SECONDS, RenderedJson

# `private`: the lists are the same for everyone, but only signed-in callers may see them, so
# no shared cache (CDN, proxy) may store them.
CACHE_CONTROL: Final = f"private, max-age={REFERENCE_TTL_SECONDS}"
# The provinces change with the cases, so clients revalidate every time (a 304 while unchanged).
PROVINCES_CACHE_CONTROL: Final = "private, no-cache"
# PostgreSQL smallint, the type of the service type id; beyond it no id can exist.
_MAX_SERVICE_TYPE_ID: Final = 32767

CACHED_RESPONSES: Responses = {
    **AUTH_RESPONSES,
    **UNKNOWN_QUERY,
    304: {"description": "Not modified: the `If-None-Match` ETag is still current"},
}


def _cached_json(rendered: RenderedJson, cache_control: str = CACHE_CONTROL) -> ETaggedResponse:
    """The rendered list; a bodiless 304 instead when `If-None-Match` still matches its ETag."""
    return ETaggedResponse(rendered.body, etag=rendered.etag, cache_control=cache_control)


router = GatedRouter(
    gate=f"{API_PREFIX}/reference",
    prefix="/reference",
    tags=["reference"],
    route_class=CredentialsFirstRoute,
)


@router.get(
    "/service-types",
    response_model=list[ServiceTypeResponse],
    responses=CACHED_RESPONSES,
    openapi_extra=if_none_match_parameter(),
)
async def list_service_types(
    _: CurrentUser,
    request: Request,
) -> Response:
    """Active service types in display order."""
    refuse_unexpected_query(request)
    return _cached_json(await reference.service_types_json(reference_reads(request)))


@router.get(
    "/complaint-types",
    response_model=list[ComplaintTypeResponse],
    responses={
        **CACHED_RESPONSES,
        **error(404, "No active service type has this id"),
    },
    openapi_extra=if_none_match_parameter(),
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
    rendered = await reference.complaint_types_json(reference_reads(request), service_type_id)
    return _cached_json(rendered)


@router.get(
    "/handlers",
    response_model=list[HandlerResponse],
    responses=CACHED_RESPONSES,
    openapi_extra=if_none_match_parameter(),
)
async def list_handlers(
    _: CurrentUser,
    request: Request,
) -> Response:
    """Active handling agencies in display order."""
    refuse_unexpected_query(request)
    return _cached_json(await reference.handlers_json(reference_reads(request)))


@router.get(
    "/closure-reasons",
    response_model=list[ClosureReasonResponse],
    responses=CACHED_RESPONSES,
    openapi_extra=if_none_match_parameter(),
)
async def list_closure_reasons(
    _: CurrentUser,
    request: Request,
) -> Response:
    """Active closure reasons in display order."""
    refuse_unexpected_query(request)
    return _cached_json(await reference.closure_reasons_json(reference_reads(request)))


@router.get(
    "/provinces",
    response_model=list[str],
    responses=CACHED_RESPONSES,
    openapi_extra=if_none_match_parameter(),
)
async def list_provinces(_: CurrentUser, request: Request, sessions: ReadSessionsDep) -> Response:
    """Provinces that have cases, sorted; current as of the latest committed case."""
    refuse_unexpected_query(request)
    rendered = await reference.provinces_json(sessions)
    return _cached_json(rendered, PROVINCES_CACHE_CONTROL)


@router.get(
    "/sla-config",
    response_model=list[SlaConfigResponse],
    responses={**ADMIN_RESPONSES, **UNKNOWN_QUERY},
)
async def list_sla_config(
    _: AdminUser, request: Request, sessions: ReadSessionsDep
) -> list[SlaConfigResponse]:
    """SLA response and resolution hours per service type and priority (ADMIN)."""
    refuse_unexpected_query(request)
    return [SlaConfigResponse.model_validate(row) for row in await reference.sla_config(sessions)]
