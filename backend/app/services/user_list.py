"""The admin user list: filtered, sorted, paginated, with the total (`app.core.pagination`).

Read-only, so it reads through an autocommit session of its own rather than the request's
transaction; its counts, and its pages as sent, are cached while the user cache vouches for them
(`UserListCache`): the first page an admin opens again costs what `/users/me` does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from pydantic import TypeAdapter
from sqlalchemy import ColumnElement, bindparam, func, or_

from app.core.db import ReadSessions
from app.core.encoding import ReusedBody
from app.core.pagination import CountCache, Order, PagedQuery, escape_like, orders, read_page
from app.models.user import User
from app.schemas.user import UserList, UserListParams, UserResponse, UserSort
from app.services.user_cache import UserCountCache, UserPageCache

_SORT_ORDERS: Final[dict[str, tuple[Order, Order]]] = {
    UserSort.CREATED_AT_DESC: orders(User.created_at, User.id, descending=True),
    UserSort.CREATED_AT: orders(User.created_at, User.id, descending=False),
    UserSort.FULL_NAME: orders(User.full_name, User.id, descending=False),
    UserSort.FULL_NAME_DESC: orders(User.full_name, User.id, descending=True),
    # lower(email) is what the unique index holds; emails are stored in lower case anyway.
    UserSort.EMAIL: orders(func.lower(User.email), User.id, descending=False),
    UserSort.EMAIL_DESC: orders(func.lower(User.email), User.id, descending=True),
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
_LISTED_USERS: Final = TypeAdapter(list[UserResponse])
USERS: Final = PagedQuery(
    name="users",
    columns=tuple(User.__table__.c[name] for name in UserResponse.model_fields),
    source=User.__table__,
    filters=_FILTERS,
    sorts=_SORT_ORDERS,
)


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
        values["q"] = f"%{escape_like(params.q)}%"
    return values


async def list_users(
    sessions: ReadSessions, counts: CountCache, params: UserListParams
) -> UserList:
    """One page of users matching the filters, in a stable order, and how many match in all."""
    async with sessions() as session:
        page = await read_page(
            await session.connection(),
            USERS,
            counts,
            _filter_values(params),
            sort=params.sort,
            page=params.page,
            page_size=params.page_size,
        )
    return UserList(
        items=_LISTED_USERS.validate_python(page.rows),
        total=page.total,
        page=params.page,
        page_size=params.page_size,
    )


@dataclass(frozen=True, slots=True)
class UserListReads:
    """What the user list reads with: the read sessions and its two caches."""

    sessions: ReadSessions
    counts: UserCountCache
    pages: UserPageCache


async def user_list_answer(
    reads: UserListReads, query_string: bytes, params: Callable[[], UserListParams]
) -> ReusedBody:
    """`list_users` as the JSON the route sends, from the page cache while it can vouch.

    Cached by the query string as sent, read into `params()` only for a page not cached: the
    same string always reads as the same parameters (or is always refused, and a refusal is
    never cached), so a page asked for again costs no parsing at all.
    """

    async def answer() -> ReusedBody:
        listed = await list_users(reads.sessions, reads.counts, params())
        return ReusedBody(listed.model_dump_json().encode())

    return await reads.pages.get_or_compute(query_string, answer)
