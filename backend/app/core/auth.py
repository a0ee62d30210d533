"""Who is calling: the bearer access token, verified, mapped to an active user row.

Every failure is the same 401 to the client (with a `WWW-Authenticate` challenge); the precise
reason goes to the log. The role comes from the database row, never from the token: read per
request, or from the worker's user cache, which a change evicts at once on the worker that made
it and on every other one when PostgreSQL's notification arrives (app.services.user_cache).
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from app.core.db import read_sessions
from app.core.errors import ForbiddenError, NotAuthenticatedError, ServiceUnavailableError
from app.core.roles import Role
from app.core.security import AccessTokenVerifier, JWKSUnavailableError, TokenError
from app.services.user_cache import AuthenticatedUser, UserCache
from app.services.users import find_user_by_cognito_id

logger = logging.getLogger(__name__)


# The OpenAPI security scheme every protected operation names.
BEARER_SCHEME_NAME = "HTTPBearer"


class CognitoBearer(HTTPBearer):
    """The authentication dependency, optionally restricted to some roles.

    One callable does it all (bearer extraction, verification, the user, the role check): it is
    both the OpenAPI security scheme (`HTTPBearer`) and the check, and FastAPI resolves one
    dependency per request instead of a chain of them.
    """

    def __init__(self, allowed_roles: frozenset[Role] | None = None) -> None:
        super().__init__(
            scheme_name=BEARER_SCHEME_NAME,
            bearerFormat="JWT",
            description="A Cognito **access** token (not the ID token).",
            auto_error=False,
        )
        self.allowed_roles = allowed_roles
        self._refusal = (
            f"This action requires the role {', '.join(sorted(allowed_roles))}"
            if allowed_roles
            else ""
        )

    async def __call__(self, request: Request) -> AuthenticatedUser:  # type: ignore[override]
        user = await authenticate(request)
        if self.allowed_roles is not None and user.role not in self.allowed_roles:
            raise ForbiddenError(self._refusal)
        return user


async def authenticate(request: Request) -> AuthenticatedUser:
    """The active user the request's bearer access token belongs to, or NotAuthenticatedError."""
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        header_sent = "authorization" in request.headers
        if header_sent:
            logger.info("rejected credentials: not a bearer token")
        raise NotAuthenticatedError(token_sent=header_sent)
    verifier: AccessTokenVerifier = request.state.token_verifier
    try:
        claims = await verifier.verify(token.strip())
    except JWKSUnavailableError as error:
        logger.warning("cannot verify token: %s", error)
        raise ServiceUnavailableError("Sign-in keys are unavailable; try again shortly") from None
    except TokenError as error:
        logger.info("rejected token: %s", error)
        raise NotAuthenticatedError("Invalid or expired token", token_sent=True) from None
    # The cache holds active users only and drops one when its row changes: at once for a
    # write through this instance, on the commit's NOTIFY for any other (app.services.user_cache).
    cache: UserCache | None = getattr(request.state, "user_cache", None)
    cached = cache.get(claims.sub) if cache is not None else None
    if cached is not None:
        return cached
    ticket = cache.ticket() if cache is not None else None
    async with read_sessions(request)() as session:
        row = await find_user_by_cognito_id(session, claims.sub)
    if row is None or not row.is_active:
        logger.info(
            "rejected token: %s",
            "no such user" if row is None else "user is deactivated",
            extra={"cognito_sub": claims.sub},
        )
        raise NotAuthenticatedError("Invalid or expired token", token_sent=True)
    user = AuthenticatedUser.of(row)
    if cache is not None:
        cache.put(ticket, user)
    return user


def require_role(*allowed: Role) -> CognitoBearer:
    """A dependency that lets through only callers holding one of `allowed` roles (else 403)."""
    if not allowed:
        raise ValueError("require_role needs at least one role")
    return CognitoBearer(frozenset(allowed))


CurrentUser = Annotated[AuthenticatedUser, Depends(CognitoBearer())]
AdminUser = Annotated[AuthenticatedUser, Depends(require_role(Role.ADMIN))]
