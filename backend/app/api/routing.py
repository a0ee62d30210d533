"""The route class of the API's routers: credentials are checked before the body is read.

FastAPI reads and parses a request's body before it solves the dependencies, so a body that is
not JSON (or not UTF-8) was a 422 or 400 even for a caller without a token or without the role.
A protected route of this class runs its role requirement (`app.core.rbac`) first: no
credentials is a 401 and the wrong role a 403, whatever the body, and the body of a caller who
may not call the route is never read. The requirement keeps its answer in the request scope, so
the dependency that then runs as usual does not authenticate the request a second time. The
route's OpenAPI operation (security, requestBody) is what FastAPI builds from the endpoint, as
before.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from fastapi import Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from app.core.rbac import RoleRequirement

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def role_requirements(dependant: Dependant) -> Iterator[RoleRequirement[Any]]:
    """The role requirements among a route's dependencies, at any depth."""
    for dependency in dependant.dependencies:
        if isinstance(dependency.call, RoleRequirement):
            yield dependency.call
        yield from role_requirements(dependency)


class CredentialsFirstRoute(APIRoute):
    """An `APIRoute` that authenticates and authorises its caller before it reads the body."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()
        requirements = list(role_requirements(self.dependant))
        if self.body_field is None or not requirements:
            # Without a body, FastAPI already runs the dependencies before anything else.
            return handler

        async def authorize_then_handle(request: Request) -> Response:
            overrides = request.app.dependency_overrides
            for requirement in requirements:
                # A test that replaced the requirement gets its replacement, run by FastAPI.
                if requirement not in overrides:
                    await requirement(request)
            return await handler(request)

        return authorize_then_handle
