"""The admin user list: filtered, sorted, paginated, with the total.

Read-only, so it reads through an autocommit session of its own rather than the request's
transaction. The total comes first (from `UserCountCache` while it can vouch for it), so a page
in the back half is read from the other end of the same index: the last page costs what the
first does instead of walking past every row before it.
"""

from __future__ import annotations

import functools
from typing import Any, Final

from pydantic import TypeAdapter
from sqlalchemy import ColumnElement, Select, bindparam, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute

from app.core.db import ReadSessions
from app.models.user import User
from app.schemas.user import UserList, UserListParams, UserResponse, UserSort
from app.services.user_cache import UserCountCache


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _orders(
    key: ColumnElement[Any] | InstrumentedAttribute[Any], descending: bool
) -> tuple[tuple[ColumnElement[Any], ...], tuple[ColumnElement[Any], ...]]:
    """The ORDER BY of a sort, and its reverse (to read a page from the other end).

    The id breaks ties, so a user never shows on two pages or on none.
    """
    ascending_order = (key.asc(), User.id.asc())
    descending_order = (key.desc(), User.id.desc())
    if descending:
        return descending_order, ascending_order
    return ascending_order, descending_order


_SORT_ORDERS: Final = {
    UserSort.CREATED_AT_DESC: _orders(User.created_at, descending=True),
    UserSort.CREATED_AT: _orders(User.created_at, descending=False),
    UserSort.FULL_NAME: _orders(User.full_name, descending=False),
    UserSort.FULL_NAME_DESC: _orders(User.full_name, descending=True),
    # lower(email) is what the unique index holds; emails are stored in lower case anyway.
    UserSort.EMAIL: _orders(func.lower(User.email), descending=False),
    UserSort.EMAIL_DESC: _orders(func.lower(User.email), descending=True),
}

# Every filter is a named bind parameter, so the statements depend only on which filters are
# set, and SQLAlchemy's compiled-statement cache compiles each combination once.
_FILTERS: Final[dict[str, ColumnElement[bool]]] = {
    "role": User.role == bindparam("role"),
    "is_active": User.is_active == bindparam("is_active"),
    "province": User.responsible_province == bindparam("province"),
    "q": or_(
        User.full_name.ilike(bindparam("q"), escape="\\"),
        User.email.ilike(bindparam("q"), escape="\\"),
    ),
}
# Read as plain rows of just the columns a page returns, validated in one call: loading ORM
# objects cost more than the query itself.
_LISTED_COLUMNS: Final = tuple(User.__table__.c[name] for name in UserResponse.model_fields)
_LISTED_USERS: Final = TypeAdapter(list[UserResponse])
_COUNT_USERS: Final = select(func.count()).select_from(User)


def _filter_values(params: UserListParams) -> dict[str, object]:
    """The value of each filter that is set, keyed like `_FILTERS`."""
    values: dict[str, object] = {}
    if params.role is not None:
        values["role"] = params.role
    if params.is_active is not None:
        values["is_active"] = params.is_active
    if params.province is not None:
        values["province"] = params.province
    if params.q is not None:
        values["q"] = f"%{_escape_like(params.q)}%"
    return values


@functools.cache
def _page_query(filters: tuple[str, ...], sort: UserSort, from_the_end: bool) -> Select[Any]:
    forward, reverse = _SORT_ORDERS[sort]
    return (
        select(*_LISTED_COLUMNS)
        .where(*(_FILTERS[name] for name in filters))
        .order_by(*(reverse if from_the_end else forward))
        .limit(bindparam("limit"))
        .offset(bindparam("offset"))
    )


async def list_users(
    sessions: ReadSessions, counts: UserCountCache, params: UserListParams
) -> UserList:
    """One page of users matching the filters, in a stable order, and how many match in all."""
    values = _filter_values(params)
    filters = tuple(values)
    async with sessions() as session:
        connection = await session.connection()

        async def count() -> int:
            statement = _COUNT_USERS.where(*(_FILTERS[name] for name in filters))
            return (await connection.execute(statement, values)).scalar_one()

        key = (params.role, params.is_active, params.province, params.q)
        total = await counts.get_or_count(key, count)
        start = (params.page - 1) * params.page_size
        end = min(start + params.page_size, total)
        rows: list[dict[str, Any]] = []
        if start < end:
            from_the_end = start > total - end
            result = await connection.execute(
                _page_query(filters, params.sort, from_the_end),
                {**values, "limit": end - start, "offset": total - end if from_the_end else start},
            )
            rows = [row._asdict() for row in result]
            if from_the_end:
                rows.reverse()
    return UserList(
        items=_LISTED_USERS.validate_python(rows),
        total=total,
        page=params.page,
        page_size=params.page_size,
    )
