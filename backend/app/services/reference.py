"""Reference data: the cached lists every client loads, the provinces in use, the SLA table.

The four pick lists are read on nearly every screen and change rarely, so each is cached per
app instance as ready-to-send JSON for `REFERENCE_TTL_SECONDS`. A cached answer costs no SQL
and no serialisation; an admin's edit shows up within that TTL (plus the client's own cache).

The provinces in use are not cached: they change with every case in a new province, and a
loose index scan answers them in about the time of a cache miss.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias, TypeVar

import sqlalchemy as sa
from cachetools import TTLCache
from pydantic import TypeAdapter
from sqlalchemy import func, select
from sqlalchemy.orm import contains_eager

from app.core.db import ReadSessions
from app.core.errors import NotFoundError
from app.core.flights import Flights
from app.models.case import Case, CasePriority
from app.models.reference import (
    RefClosureReason,
    RefComplaintType,
    ReferenceMixin,
    RefHandler,
    RefServiceType,
)
from app.models.sla import SlaConfig
from app.schemas.reference import (
    ClosureReasonResponse,
    ComplaintTypeResponse,
    HandlerResponse,
    ServiceTypeResponse,
)

REFERENCE_TTL_SECONDS: Final = 300
# Keys are (endpoint, filter); only valid filters are ever stored, so a few dozen at most.
_MAX_ENTRIES: Final = 256

CacheKey: TypeAlias = tuple[str, int | None]
Timer: TypeAlias = Callable[[], float]


@dataclass(frozen=True, slots=True)
class RenderedJson:
    """A response body rendered once, with the strong ETag that identifies exactly these bytes."""

    body: bytes
    etag: str

    @classmethod
    def of(cls, body: bytes) -> RenderedJson:
        # A hash of the content, not a version counter, so every instance of the fleet and every
        # refresh of unchanged data yields the same ETag and clients keep getting 304s.
        digest = hashlib.blake2b(body, digest_size=16).hexdigest()
        return cls(body=body, etag=f'"{digest}"')


class ReferenceCache:
    """A TTL cache of rendered responses whose concurrent misses on a key run one load.

    One per app instance (built in the lifespan). `timer` is injectable so tests can move time
    instead of sleeping.
    """

    def __init__(
        self,
        *,
        ttl_seconds: float = REFERENCE_TTL_SECONDS,
        max_entries: int = _MAX_ENTRIES,
        timer: Timer = time.monotonic,
    ) -> None:
        self._entries: TTLCache[CacheKey, RenderedJson] = TTLCache(
            maxsize=max_entries, ttl=ttl_seconds, timer=timer
        )
        self._flights = Flights()

    async def get_or_load(
        self, key: CacheKey, load: Callable[[], Awaitable[RenderedJson]]
    ) -> RenderedJson:
        """The cached value of `key`, or the result of `load()`, run once however many wait.

        Waiters queue behind the first (`app.core.flights`); errors are never cached.
        """
        rendered = self._entries.get(key)
        if rendered is not None:
            return rendered
        async with self._flights.one_at_a_time(key):
            rendered = self._entries.get(key)
            if rendered is None:
                rendered = await load()
                self._entries[key] = rendered
            return rendered

    def clear(self) -> None:
        """Forget every entry, e.g. after reference data was edited in this instance."""
        self._entries.clear()


@dataclass(frozen=True, slots=True)
class ReferenceReads:
    """What the cached lists read from: the read sessions, and the cache of rendered lists."""

    sessions: ReadSessions
    cache: ReferenceCache


_ReferenceT = TypeVar("_ReferenceT", bound=ReferenceMixin)
_RowT = TypeVar("_RowT")

_SERVICE_TYPES = TypeAdapter(list[ServiceTypeResponse])
_COMPLAINT_TYPES = TypeAdapter(list[ComplaintTypeResponse])
_HANDLERS = TypeAdapter(list[HandlerResponse])
_CLOSURE_REASONS = TypeAdapter(list[ClosureReasonResponse])


def _render(adapter: TypeAdapter[list[Any]], rows: Sequence[object]) -> RenderedJson:
    return RenderedJson.of(adapter.dump_json(adapter.validate_python(rows, from_attributes=True)))


def _active_in_display_order(model: type[_ReferenceT]) -> sa.Select[_ReferenceT]:
    # `code` breaks ties so equal sort_orders still list the same way on every call.
    return select(model).where(model.is_active).order_by(model.sort_order, model.code)


async def _all(sessions: ReadSessions, statement: sa.Select[_RowT]) -> Sequence[_RowT]:
    async with sessions() as session:
        return (await session.scalars(statement)).all()


async def service_types_json(reads: ReferenceReads) -> RenderedJson:
    async def load() -> RenderedJson:
        rows = await _all(reads.sessions, _active_in_display_order(RefServiceType))
        return _render(_SERVICE_TYPES, rows)

    return await reads.cache.get_or_load(("service-types", None), load)


async def complaint_types_json(
    reads: ReferenceReads, service_type_id: int | None = None
) -> RenderedJson:
    """Active complaint types of active service types, grouped by service type in its order.

    A complaint type under a deactivated service type is left out: nobody can pick its parent.
    With `service_type_id`, only that type's entries; an id that is unknown or inactive raises
    `NotFoundError` (an empty list would hide a client bug), while an active type without
    complaint types gives an empty list.
    """

    async def load() -> RenderedJson:
        if service_type_id is not None:
            async with reads.sessions() as session:
                found = await session.scalar(
                    select(RefServiceType.id).where(
                        RefServiceType.id == service_type_id, RefServiceType.is_active
                    )
                )
            if found is None:
                raise NotFoundError(f"Service type {service_type_id} does not exist or is inactive")
        statement = (
            select(RefComplaintType)
            .join(RefComplaintType.service_type)
            .where(RefComplaintType.is_active, RefServiceType.is_active)
            .order_by(
                RefServiceType.sort_order,
                RefServiceType.code,
                RefComplaintType.sort_order,
                RefComplaintType.code,
            )
        )
        if service_type_id is not None:
            statement = statement.where(RefComplaintType.service_type_id == service_type_id)
        return _render(_COMPLAINT_TYPES, await _all(reads.sessions, statement))

    return await reads.cache.get_or_load(("complaint-types", service_type_id), load)


async def handlers_json(reads: ReferenceReads) -> RenderedJson:
    async def load() -> RenderedJson:
        rows = await _all(reads.sessions, _active_in_display_order(RefHandler))
        return _render(_HANDLERS, rows)

    return await reads.cache.get_or_load(("handlers", None), load)


async def closure_reasons_json(reads: ReferenceReads) -> RenderedJson:
    async def load() -> RenderedJson:
        rows = await _all(reads.sessions, _active_in_display_order(RefClosureReason))
        return _render(_CLOSURE_REASONS, rows)

    return await reads.cache.get_or_load(("closure-reasons", None), load)


def _distinct_provinces() -> sa.Select[str]:
    """Every province in `cases`, sorted, as a loose index scan over `ix_cases_province`.

    A plain DISTINCT reads every case; this walks the btree instead: start at the smallest
    province, then repeatedly ask for the smallest one greater than the last. Each step is one
    index probe, so the cost grows with the number of provinces (dozens), not of cases (millions).
    """
    step = select(func.min(Case.province).label("province")).cte("provinces", recursive=True)
    next_province = (
        select(func.min(Case.province)).where(Case.province > step.c.province).scalar_subquery()
    )
    step = step.union_all(select(next_province).where(step.c.province.is_not(None)))
    # The walk already ascends; ORDER BY makes that a guarantee and sorts only the few results.
    return select(step.c.province).where(step.c.province.is_not(None)).order_by(step.c.province)


DISTINCT_PROVINCES: Final = _distinct_provinces()


_PROVINCES: Final = TypeAdapter(list[str])


async def provinces(sessions: ReadSessions) -> list[str]:
    """Provinces that have at least one case, sorted."""
    return list(await _all(sessions, DISTINCT_PROVINCES))


async def provinces_json(sessions: ReadSessions) -> RenderedJson:
    """The provinces as JSON, with an ETag so an unchanged answer can be a bodiless 304."""
    return RenderedJson.of(_PROVINCES.dump_json(await provinces(sessions)))


_PRIORITY_RANK: Final = sa.case(
    {priority: rank for rank, priority in enumerate(CasePriority)}, value=SlaConfig.priority
)


async def sla_config(sessions: ReadSessions) -> Sequence[SlaConfig]:
    """Every SLA row (deactivated service types included: admins still maintain them), in the
    service types' display order and from the lowest priority to the highest."""
    return await _all(
        sessions,
        select(SlaConfig)
        .join(SlaConfig.service_type)
        .options(contains_eager(SlaConfig.service_type))
        .order_by(RefServiceType.sort_order, RefServiceType.code, _PRIORITY_RANK),
    )
