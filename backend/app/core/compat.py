"""Every reach into a library's private or undocumented names, each behind one function here.

A release may rename or reshape any of them without notice. `tests/core/test_compat.py` checks
each one's existence and shape against the installed library, so an upgrade fails there, by
name, instead of silently doing something else. Anything else uses public APIs only.

- SQLAlchemy's `QueuePool._queue_class` (2.0, `sqlalchemy/pool/impl.py`): the class
  `QueuePool.__init__` builds its queue of idle connections from
  (`self._pool = self._queue_class(pool_size, use_lifo=use_lifo)`); no public option chooses
  the queue. For `app.core.pool`'s fair queue.
- SQLAlchemy's `Pool._do_get`: one checkout's wait for a connection (from the queue, or a new
  one opened). The pool's events fire after it (`checkout`), none before. For the bench's
  probe only, which times that wait.
- FastAPI's `APIRoute.dependant` and `fastapi.dependencies.models.Dependant` (`.call`,
  `.dependencies`, `.name`, the lists of parameters it reads from the request and the names of
  the special ones): the tree of a route's dependencies and what its endpoint takes, which
  FastAPI builds and uses but does not document. For `app.api.routing`, which finds a route's
  role requirement in it, and calls an endpoint that takes nothing else itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from sqlalchemy.pool import ConnectionPoolEntry, Pool, QueuePool
from sqlalchemy.util.queue import QueueCommon

Checkout = Callable[[], ConnectionPoolEntry]


def set_queue_class(
    pool_class: type[QueuePool], queue_class: type[QueueCommon[ConnectionPoolEntry]]
) -> None:
    """Make `pool_class` keep its idle connections in a `queue_class`."""
    pool_class._queue_class = queue_class


def wrap_checkout(pool: Pool, wrap: Callable[[Checkout], Checkout]) -> None:
    """Replace this pool's wait for a connection with `wrap(the wait)`."""
    pool._do_get = wrap(pool._do_get)  # type: ignore[method-assign]


def dependency_calls(route: APIRoute) -> Iterator[Callable[..., Any]]:
    """The callables of a route's dependencies, at any depth, outermost first."""

    def walk(dependant: Dependant) -> Iterator[Callable[..., Any]]:
        for dependency in dependant.dependencies:
            if dependency.call is not None:
                yield dependency.call
            yield from walk(dependency)

    return walk(route.dependant)


@dataclass(frozen=True, slots=True)
class SoleDependency:
    """What an endpoint takes when it takes one dependency and, at most, the request."""

    name: str  # the endpoint's parameter the dependency's value is passed as
    call: Callable[..., Any]
    request_name: str | None  # the endpoint's `Request` parameter, if it has one


def sole_dependency(route: APIRoute) -> SoleDependency | None:
    """The route's one dependency, when its endpoint takes nothing else but the request: no
    parameter FastAPI reads from the request (path, query, header, cookie, body) and none of
    the special ones FastAPI makes per request (response, background tasks, security scopes)."""
    dependant = route.dependant
    read_from_the_request = (
        dependant.path_params,
        dependant.query_params,
        dependant.header_params,
        dependant.cookie_params,
        dependant.body_params,
    )
    made_per_request = (
        dependant.websocket_param_name,
        dependant.http_connection_param_name,
        dependant.response_param_name,
        dependant.background_tasks_param_name,
        dependant.security_scopes_param_name,
    )
    if any(read_from_the_request) or any(made_per_request) or len(dependant.dependencies) != 1:
        return None
    (dependency,) = dependant.dependencies
    if dependency.call is None or dependency.name is None:
        return None
    return SoleDependency(dependency.name, dependency.call, dependant.request_param_name)
