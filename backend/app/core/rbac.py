"""Who may call: the bearer access token, verified, mapped to an active user, role-checked.

`require_role(*roles)` builds the one dependency a protected route declares: it reads the bearer
token, verifies it (`app.core.tokens`), asks the lifespan's `UserLookup` for the active user
whose Cognito sub it carries, and lets the caller through only with one of `roles` (403 for any
other role). Doing all of it in one callable is both the OpenAPI security scheme (`HTTPBearer`)
and the check, and FastAPI resolves one dependency per request instead of a chain.

Every authentication failure is the same 401 with a `WWW-Authenticate` challenge; the precise
reason goes to the log. The role comes from the user's row (through the lookup), never from the
token. The lookup is given, not imported: the toolkit knows nothing of the users table.
"""

from __future__ import annotations

import logging
from typing import Any, Final, Generic, Protocol, TypeVar, overload

from fastapi import Request
from fastapi.security import HTTPBearer

from app.core.errors import ForbiddenError, NotAuthenticatedError, ServiceUnavailableError
from app.core.jwks import JWKSUnavailableError, TokenError
from app.core.principal import Principal
from app.core.roles import Role
from app.core.state import LifespanItem
from app.core.tokens import AccessTokenVerifier

logger = logging.getLogger(__name__)


class UserLookup(Protocol):
    """The active user a token belongs to, or None: unknown, deactivated, or the token's session
    began (`session_started_at`, seconds since the epoch) before the user's sessions were
    revoked: a refreshed token of an ended session stays refused, however new its `iat`."""

    async def active_user(self, cognito_sub: str, session_started_at: int) -> Principal | None: ...


TOKEN_VERIFIER: Final = LifespanItem[AccessTokenVerifier]("token_verifier")
USER_LOOKUP: Final = LifespanItem[UserLookup]("user_lookup")

# The OpenAPI security scheme every protected operation names.
BEARER_SCHEME_NAME: Final = "HTTPBearer"
# The caller, once authenticated in this request. A route that checks credentials before it
# reads its body (`app.api.routing`) runs this dependency early; the second call reuses the
# answer, so a request is authenticated once.
PRINCIPAL_SCOPE_KEY: Final = "one_system.principal"


PrincipalT = TypeVar("PrincipalT", bound=Principal)


class RoleRequirement(HTTPBearer, Generic[PrincipalT]):
    """The authentication dependency, letting through callers with one of `allowed` roles.

    It returns the principal as the lookup gave it, checked to be a `principal_type`, so a
    route's annotation states what it really receives.
    """

    def __init__(self, allowed: frozenset[Role], principal_type: type[PrincipalT]) -> None:
        super().__init__(
            scheme_name=BEARER_SCHEME_NAME,
            bearerFormat="JWT",
            description="A Cognito **access** token (not the ID token).",
            auto_error=False,
        )
        self.allowed = allowed
        self.principal_type = principal_type
        self._refusal = f"This action requires the role {', '.join(sorted(allowed))}"

    async def __call__(self, request: Request) -> PrincipalT:  # type: ignore[override]
        user: Principal | None = request.scope.get(PRINCIPAL_SCOPE_KEY)
        if user is None:
            user = request.scope[PRINCIPAL_SCOPE_KEY] = await _authenticate(request)
        if not isinstance(user, self.principal_type):
            # A wiring bug (the lookup returns another type), not the caller's fault.
            raise TypeError(f"the user lookup returned a {type(user).__name__}")
        if user.role not in self.allowed:
            raise ForbiddenError(self._refusal)
        return user


async def _authenticate(request: Request) -> Principal:
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        header_sent = "authorization" in request.headers
        if header_sent:
            logger.info("rejected credentials: not a bearer token")
        raise NotAuthenticatedError(token_sent=header_sent)
    try:
        claims = await TOKEN_VERIFIER.of(request).verify(token.strip())
    except JWKSUnavailableError as error:
        logger.warning("cannot verify token: %s", error)
        raise ServiceUnavailableError("Sign-in keys are unavailable; try again shortly") from None
    except TokenError as error:
        logger.info("rejected token: %s", error)
        raise NotAuthenticatedError("Invalid or expired token", token_sent=True) from None
    user = await USER_LOOKUP.of(request).active_user(claims.sub, claims.session_started_at)
    if user is None:
        logger.info("rejected token: no active user", extra={"cognito_sub": claims.sub})
        raise NotAuthenticatedError("Invalid or expired token", token_sent=True)
    return user


@overload
def require_role(*allowed: Role) -> RoleRequirement[Principal]: ...


@overload
def require_role(
    *allowed: Role, principal_type: type[PrincipalT]
) -> RoleRequirement[PrincipalT]: ...


def require_role(
    *allowed: Role, principal_type: type[Principal] = Principal
) -> RoleRequirement[Any]:
    """A dependency that lets through only callers holding one of `allowed` roles (else 403).

    It returns a `principal_type`: `Principal` unless a route needs the app's own subclass.
    """
    if not allowed:
        raise ValueError("require_role needs at least one role")
    return RoleRequirement(frozenset(allowed), principal_type)
