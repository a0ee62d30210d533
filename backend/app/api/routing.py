"""The route class of the API's routers: credentials are checked before the body is read.

FastAPI reads and parses a request's body before it solves the dependencies, so a body that is
not JSON (or not UTF-8) was a 422 or 400 even for a caller without a token or without the role.
A protected route of this class runs its role requirement (`app.core.rbac`) first: no
credentials is a 401 and the wrong role a 403, whatever the body, and the body of a caller who
may not call the route is never read. The requirement keeps its answer in the request scope, so
the dependency that then runs as usual does not authenticate the request a second time. The
route's OpenAPI operation (security, requestBody) is what FastAPI builds from the endpoint, as
before. An operation that takes no body refuses one (422 `body_not_allowed`), as a body with
unknown fields is refused, rather than ignore what the client meant to say.

An endpoint that takes nothing but its caller (the role requirement's principal) and the
request, and answers with a `Response` itself, is then called directly with them: FastAPI's
request handler would only solve that one dependency again, and its generic work per request
(the dependency solver, its telemetry hooks, the endpoint's error context) cost about 27 µs of a
cached `/users/me`'s 64 in process (docs/performance.md). Every check still runs: the token, the
user and the role in the requirement, the query string in the endpoint. A test that overrides
the requirement gets FastAPI's handler, which runs the override.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Final

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Scope

from app.core.compat import dependency_calls, sole_dependency
from app.core.errors import DomainError
from app.core.principal import Principal
from app.core.rbac import RoleRequirement

Handler = Callable[[Request], Coroutine[Any, Any, Response]]
DirectCall = Callable[[Request, Principal], Coroutine[Any, Any, Response]]


def role_requirements(route: APIRoute) -> Iterator[RoleRequirement[Any]]:
    """The role requirements among a route's dependencies, at any depth."""
    for call in dependency_calls(route):
        if isinstance(call, RoleRequirement):
            yield call


def sends_a_body(request: Request) -> bool:
    """Whether the request carries a body (HTTP/1.1 frames one by either header)."""
    headers = request.headers
    return "transfer-encoding" in headers or headers.get("content-length", "0") != "0"


class BodyNotAllowedError(DomainError):
    """A body sent to an operation that takes none: refused, as unknown fields are."""

    status_code = 422
    code = "body_not_allowed"


def direct_call(route: APIRoute, requirements: list[RoleRequirement[Any]]) -> DirectCall | None:
    """The route's endpoint called with its caller and the request, if that is all it takes
    (its one dependency being its one role requirement) and it answers with a `Response`."""
    sole = sole_dependency(route)
    if sole is None or [sole.call] != requirements:
        return None
    endpoint = route.endpoint
    returns = typing.get_type_hints(endpoint).get("return")
    if not inspect.iscoroutinefunction(endpoint) or not (
        inspect.isclass(returns) and issubclass(returns, Response)
    ):
        return None
    principal_name, request_name = sole.name, sole.request_name

    async def call(request: Request, principal: Principal) -> Response:
        arguments: dict[str, Any] = {principal_name: principal}
        if request_name is not None:
            arguments[request_name] = request
        response: Response = await endpoint(**arguments)
        return response

    return call


class CredentialsFirstRoute(APIRoute):
    """An `APIRoute` that authenticates and authorises its caller before it reads the body,
    and that refuses a body where its operation takes none (after the credentials too)."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        requirements = list(role_requirements(self))
        takes_a_body = self.body_field is not None
        if takes_a_body and not requirements:
            return handler
        call_directly = direct_call(self, requirements)

        async def authorize_then_handle(request: Request) -> Response:
            overrides = request.app.dependency_overrides
            principal: Principal | None = None
            for requirement in requirements:
                # A test that replaced the requirement gets its replacement, run by FastAPI.
                if requirement not in overrides:
                    principal = await requirement(request)
            if not takes_a_body and sends_a_body(request):
                raise BodyNotAllowedError(
                    "This operation takes no body; send the request without one"
                )
            if call_directly is not None and principal is not None:
                return await call_directly(request, principal)
            return await handler(request)

        return authorize_then_handle


API_PREFIX: Final = "/api/v1"


class GatedRouter(APIRouter):
    """An `APIRouter` that says at once that a path outside its `gate` is not its own.

    FastAPI 0.165 matches a request against the app's included routers in turn and tries each
    route of each, about 2 µs a route: a request for the third router's first route paid for
    every route of the two before it. `gate` is the path prefix all of this router's routes are
    served under (the prefix it is included with and its own); any other path skips its routes.
    `tests/api/test_routing.py` checks that every route of the app's routers is inside its gate.
    """

    def __init__(self, *, gate: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = gate

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        path: str = scope.get("path", "")
        if not path.startswith(self.gate):
            return Match.NONE, {}
        return super().matches(scope)
