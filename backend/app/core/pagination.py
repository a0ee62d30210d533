"""Lists read a page at a time, with how many items match in all: any domain's list.

A `PagedQuery` names a list's columns, its filters (each a named bind parameter, so the
statements depend only on which filters are set and SQLAlchemy compiles each combination once)
and its orders (each with its reverse). `read_page` counts first (through a `CountCache`, a
`TicketedCache` of counts, which answers while it can vouch for the count), then reads a page
in the back half from the other end of the same index: the last page costs what the first does
instead of walking past every row before it. A page past the end is empty, with the total.

A list of province-scoped items names its province column (`PagedQuery.province`), and
`read_page` then requires the caller's `ProvinceScope` and applies it to the count and the
page alike (`app.core.scope`: another province's items are simply not in the list).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Protocol, TypeVar

from cachetools import TTLCache
from sqlalchemy import ColumnElement, FromClause, Select, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import InstrumentedAttribute

from app.core.flights import Flights
from app.core.scope import ProvinceScope

Order = tuple[ColumnElement[Any], ...]


def orders(
    key: ColumnElement[Any] | InstrumentedAttribute[Any],
    tiebreak: ColumnElement[Any] | InstrumentedAttribute[Any],
    *,
    descending: bool,
) -> tuple[Order, Order]:
    """The ORDER BY of a sort, and its reverse (to read a page from the other end).

    `tiebreak` (a unique column) breaks ties, so an item never shows on two pages or on none.
    """
    ascending_order = (key.asc(), tiebreak.asc())
    descending_order = (key.desc(), tiebreak.desc())
    if descending:
        return descending_order, ascending_order
    return ascending_order, descending_order


def escape_like(text: str) -> str:
    """`text` matched literally inside a LIKE pattern (with `escape="\\"`)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class ChangeTickets(Protocol):
    """Something that knows when what is counted changes: `ticket()` moves on at every change,
    and is None while it cannot vouch for having seen every change."""

    def ticket(self) -> int | None: ...


class _Unwatched:
    def ticket(self) -> int | None:
        return None


# For a list whose changes nothing watches: every page counts afresh.
UNWATCHED: Final[ChangeTickets] = _Unwatched()


V = TypeVar("V")


class TicketedCache(Generic[V]):
    """Values by key (a list's counts, its pages), served while `changes` vouches that nothing
    they were computed from changed since.

    An entry remembers the ticket it was computed under; any change moves the ticket on, so a
    stale value is never served; while `changes` cannot vouch (ticket None) nothing is cached.
    Concurrent misses of one key compute it once (`app.core.flights`): when a page everyone is
    reading expires or changes, the requests that arrive meanwhile wait for the one read
    rather than each running it.
    """

    def __init__(
        self, changes: ChangeTickets, *, ttl_seconds: float = 300.0, max_entries: int = 1024
    ) -> None:
        self._changes = changes
        self._entries: TTLCache[Hashable, tuple[int, V]] = TTLCache(
            maxsize=max_entries, ttl=ttl_seconds
        )
        self._flights = Flights()

    async def get_or_compute(self, key: Hashable, compute: Callable[[], Awaitable[V]]) -> V:
        ticket = self._changes.ticket()
        if ticket is None:
            return await compute()
        entry = self._entries.get(key)
        if entry is not None and entry[0] == ticket:
            return entry[1]
        async with self._flights.one_at_a_time(key):
            ticket = self._changes.ticket()
            entry = self._entries.get(key) if ticket is not None else None
            if entry is not None and entry[0] == ticket:
                return entry[1]
            value = await compute()
            # Kept only if nothing changed while it was computed.
            if ticket is not None and ticket == self._changes.ticket():
                self._entries[key] = (ticket, value)
            return value


CountCache = TicketedCache[int]


@dataclass(frozen=True, eq=False)
class PagedQuery:
    """One list: its name (its counts' key), the columns a page returns, where they come from,
    its filters by name, its orders (`orders(...)`) by name, and the column its items' province
    is in when a caller's scope limits them."""

    name: str
    columns: tuple[ColumnElement[Any], ...]
    source: FromClause
    filters: Mapping[str, ColumnElement[bool]]
    sorts: Mapping[str, tuple[Order, Order]]
    province: ColumnElement[Any] | InstrumentedAttribute[Any] | None = None
    _statements: dict[tuple[Any, ...], Select[Any]] = field(default_factory=dict, repr=False)

    def count_statement(self, filters: tuple[str, ...]) -> Select[Any]:
        return self._statement(
            ("count", filters),
            lambda: (
                select(func.count())
                .select_from(self.source)
                .where(*(self.filters[name] for name in filters))
            ),
        )

    def page_statement(
        self, filters: tuple[str, ...], sort: str, from_the_end: bool
    ) -> Select[Any]:
        forward, reverse = self.sorts[sort]
        return self._statement(
            ("page", filters, sort, from_the_end),
            lambda: (
                select(*self.columns)
                .select_from(self.source)
                .where(*(self.filters[name] for name in filters))
                .order_by(*(reverse if from_the_end else forward))
                .limit(bindparam("limit"))
                .offset(bindparam("offset"))
            ),
        )

    def _statement(self, key: tuple[Any, ...], build: Callable[[], Select[Any]]) -> Select[Any]:
        # Built once per combination: the same object lets SQLAlchemy's cache key stay cheap.
        statement = self._statements.get(key)
        if statement is None:
            statement = self._statements[key] = build()
        return statement


def _scope_condition(query: PagedQuery, scope: ProvinceScope | None) -> ColumnElement[bool] | None:
    if query.province is None:
        return None
    if scope is None:
        # A wiring bug, not the caller's: a scoped list read without a scope would show all.
        raise TypeError(f"the {query.name} list is province-scoped: pass the caller's scope")
    return scope.where(query.province)


def _within(statement: Select[Any], condition: ColumnElement[bool] | None) -> Select[Any]:
    return statement if condition is None else statement.where(condition)


@dataclass(frozen=True, slots=True)
class PageSlice:
    """One page's rows (as column-name dicts, in the sort's order) and the total."""

    rows: list[dict[str, Any]]
    total: int


async def read_page(
    connection: AsyncConnection,
    query: PagedQuery,
    counts: CountCache,
    values: Mapping[str, object],
    *,
    sort: str,
    page: int,
    page_size: int,
    scope: ProvinceScope | None = None,
) -> PageSlice:
    """Page `page` (from 1) of `query` filtered by `values` (keyed like its filters), limited
    to `scope` (required when the query's items have a province)."""
    filters = tuple(sorted(values))
    in_scope = _scope_condition(query, scope)

    async def count() -> int:
        statement = _within(query.count_statement(filters), in_scope)
        return int((await connection.execute(statement, dict(values))).scalar_one())

    province = None if scope is None else scope.province
    key = (query.name, province, filters, tuple(values[name] for name in filters))
    total = await counts.get_or_compute(key, count)
    start = (page - 1) * page_size
    end = min(start + page_size, total)
    if start >= end:
        return PageSlice([], total)
    from_the_end = start > total - end
    result = await connection.execute(
        _within(query.page_statement(filters, sort, from_the_end), in_scope),
        {**values, "limit": end - start, "offset": total - end if from_the_end else start},
    )
    rows = [dict(row) for row in result.mappings()]
    if from_the_end:
        rows.reverse()
    return PageSlice(rows, total)
