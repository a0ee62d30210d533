"""Who is calling: the bearer access token, verified, mapped to an active user row.

Every failure is the same 401 to the client (with a `WWW-Authenticate` challenge); the precise
reason goes to the log. The role comes from the database row, never from the token, so a role
change or a deactivation applies on the caller's very next request.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.core.db import SessionDep
from app.core.errors import NotAuthenticatedError, ServiceUnavailableError
from app.core.security import AccessTokenVerifier, JWKSUnavailableError, TokenError
from app.models.user import User
from app.services.user_cache import UserCache, get_user_cache
from app.services.users import find_user_by_cognito_id

logger = logging.getLogger(__name__)

bearer_scheme = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    description="A Cognito **access** token (not the ID token).",
)


async def get_current_user(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    cache: Annotated[UserCache | None, Depends(get_user_cache)],
) -> User:
    if credentials is None:
        header_sent = "authorization" in request.headers
        if header_sent:
            logger.info("rejected credentials: not a bearer token")
        raise NotAuthenticatedError(token_sent=header_sent)
    verifier: AccessTokenVerifier = request.state.token_verifier
    try:
        claims = await verifier.verify(credentials.credentials)
    except JWKSUnavailableError as error:
        logger.warning("cannot verify token: %s", error)
        raise ServiceUnavailableError("Sign-in keys are unavailable; try again shortly") from None
    except TokenError as error:
        logger.info("rejected token: %s", error)
        raise NotAuthenticatedError("Invalid or expired token", token_sent=True) from None
    # The cache holds active users only and drops one when its row changes: at once for a
    # write through this instance, on the commit's NOTIFY for any other (app.services.user_cache).
    cached = cache.get(claims.sub) if cache is not None else None
    if cached is not None:
        return cached
    ticket = cache.ticket() if cache is not None else None
    user = await find_user_by_cognito_id(session, claims.sub)
    if user is None or not user.is_active:
        logger.info(
            "rejected token: %s",
            "no such user" if user is None else "user is deactivated",
            extra={"cognito_sub": claims.sub},
        )
        raise NotAuthenticatedError("Invalid or expired token", token_sent=True)
    if cache is not None:
        cache.put(ticket, user)
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]
