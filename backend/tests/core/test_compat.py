"""The library internals `app.core.compat` reaches into are still there, in the shape it uses.

Each test names the library and the name; when an upgrade renames or reshapes one, it fails
here, saying which, rather than the app silently losing what the reach gave it.
"""

from __future__ import annotations

import inspect
import sqlite3
from typing import Annotated

from fastapi import Depends, FastAPI, Query, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry, Pool, QueuePool
from sqlalchemy.util.queue import AsyncAdaptedQueue, QueueCommon

from app.core.compat import (
    Checkout,
    SoleDependency,
    dependency_calls,
    sole_dependency,
    wrap_checkout,
)
from app.core.pool import FairAsyncQueue, FairAsyncQueuePool


def test_sqlalchemy_builds_a_pools_queue_from_its_queue_class() -> None:
    assert inspect.getattr_static(AsyncAdaptedQueuePool, "_queue_class") is AsyncAdaptedQueue
    assert "self._queue_class(pool_size, use_lifo=use_lifo)" in inspect.getsource(
        QueuePool.__init__
    )
    assert list(inspect.signature(AsyncAdaptedQueue).parameters)[:2] == ["maxsize", "use_lifo"]
    # Built without a database: the pool connects only at its first checkout.
    pool = FairAsyncQueuePool(lambda: None, pool_size=3)  # type: ignore[arg-type,return-value]
    queues = [value for value in vars(pool).values() if isinstance(value, QueueCommon)]
    assert [(type(queue), queue.maxsize) for queue in queues] == [(FairAsyncQueue, 3)]


def test_sqlalchemy_waits_for_a_connection_in_do_get() -> None:
    assert list(inspect.signature(Pool._do_get).parameters) == ["self"]
    pool = QueuePool(lambda: sqlite3.connect(":memory:"), pool_size=1)
    waits: list[ConnectionPoolEntry] = []

    def counted(checkout: Checkout) -> Checkout:
        def counted_checkout() -> ConnectionPoolEntry:
            waits.append(checkout())
            return waits[-1]

        return counted_checkout

    wrap_checkout(pool, counted)
    connection = pool.connect()
    try:
        assert connection.execute("SELECT 1").fetchone() == (1,)  # type: ignore[attr-defined]
    finally:
        connection.close()
    assert len(waits) == 1
    pool.dispose()


def inner() -> int:
    return 1


def outer(value: Annotated[int, Depends(inner)]) -> int:
    return value


def probe(value: Annotated[int, Depends(outer)]) -> int:
    return value


def test_fastapi_keeps_a_routes_dependency_tree_in_its_dependant() -> None:
    fields = {field.name for field in Dependant.__dataclass_fields__.values()}
    assert {"call", "dependencies"} <= fields
    app = FastAPI()
    app.get("/probe")(probe)

    (route,) = [route for route in app.routes if isinstance(route, APIRoute)]
    assert list(dependency_calls(route)) == [outer, inner]


async def caller_and_request(value: Annotated[int, Depends(inner)], request: Request) -> Response:
    return Response()


async def caller_only(value: Annotated[int, Depends(inner)]) -> Response:
    return Response()


async def caller_and_query(
    value: Annotated[int, Depends(inner)], page: Annotated[int, Query()] = 1
) -> Response:
    return Response()


async def caller_and_response(value: Annotated[int, Depends(inner)], response: Response) -> int:
    return value


def _route(endpoint: object) -> APIRoute:
    app = FastAPI()
    app.get("/probe")(endpoint)
    (route,) = [route for route in app.routes if isinstance(route, APIRoute)]
    return route


def test_fastapi_says_what_an_endpoint_takes_in_its_dependant() -> None:
    assert sole_dependency(_route(caller_and_request)) == SoleDependency("value", inner, "request")
    assert sole_dependency(_route(caller_only)) == SoleDependency("value", inner, None)
    assert sole_dependency(_route(probe)) == SoleDependency("value", outer, None)
    assert sole_dependency(_route(caller_and_query)) is None
    assert sole_dependency(_route(caller_and_response)) is None
    assert sole_dependency(_route(inner)) is None
