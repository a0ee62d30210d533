"""User management (ADMIN) and the caller's own profile (any role)."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from app.api.deps import CognitoDep, UserCountsDep
from app.api.routing import CredentialsFirstRoute
from app.api.v1.auth import AdminUser, CurrentUser
from app.api.v1.query import refuse_unexpected_query
from app.api.v1.responses import ADMIN_RESPONSES, AUTH_RESPONSES
from app.core.db import ReadSessionsDep, SessionDep
from app.core.errors import ErrorResponse
from app.schemas.user import (
    PasswordResetResponse,
    UserCreate,
    UserList,
    UserListParams,
    UserResponse,
    UserUpdate,
)
from app.services import user_list, users

Responses = dict[int | str, dict[str, object]]

_INVALID: Responses = {422: {"model": ErrorResponse, "description": "Invalid parameters or body"}}
# FastAPI's answer to a body that is not text at all (invalid UTF-8), before any validation.
_UNREADABLE: Responses = {400: {"model": ErrorResponse, "description": "The body cannot be read"}}
_NOT_FOUND: Responses = {404: {"model": ErrorResponse, "description": "No user with this id"}}
_THROTTLED: Responses = {
    429: {"model": ErrorResponse, "description": "Cognito is throttling; see Retry-After"}
}
CREATE_RESPONSES: Responses = {
    **ADMIN_RESPONSES,
    **_UNREADABLE,
    **_INVALID,
    **_THROTTLED,
    409: {"model": ErrorResponse, "description": "A user with this email already exists"},
}
READ_RESPONSES: Responses = {**ADMIN_RESPONSES, **_INVALID, **_NOT_FOUND}
UPDATE_RESPONSES: Responses = {
    **READ_RESPONSES,
    **_UNREADABLE,
    **_THROTTLED,
    409: {
        "model": ErrorResponse,
        "description": "Refused: self-deactivation or demotion, the last admin, "
        "or Cognito and the database disagree",
    },
}
RESET_RESPONSES: Responses = {
    **READ_RESPONSES,
    **_THROTTLED,
    409: {
        "model": ErrorResponse,
        "description": "The user is deactivated, or Cognito and the database disagree",
    },
}

router = APIRouter(prefix="/users", tags=["users"], route_class=CredentialsFirstRoute)


# Declared before /{user_id}, so "me" is never read as an id.
@router.get("/me", response_model=UserResponse, responses=AUTH_RESPONSES)
async def read_own_profile(user: CurrentUser) -> UserResponse:
    """The signed-in user's own profile."""
    return UserResponse.model_validate(user)


@router.post(
    "",
    response_model=UserResponse,
    status_code=status.HTTP_201_CREATED,
    responses=CREATE_RESPONSES,
)
async def create_user(
    data: UserCreate,
    admin: AdminUser,
    session: SessionDep,
    cognito: CognitoDep,
    request: Request,
    response: Response,
) -> UserResponse:
    """Create a user in Cognito (who is emailed an invitation) and in the database."""
    user = await users.create_user(session, cognito, data, actor_id=admin.id)
    response.headers["Location"] = request.app.url_path_for("read_user", user_id=str(user.id))
    return UserResponse.model_validate(user)


@router.get("", response_model=UserList, responses=READ_RESPONSES)
async def list_users(
    params: Annotated[UserListParams, Query()],
    _: AdminUser,
    request: Request,
    sessions: ReadSessionsDep,
    counts: UserCountsDep,
) -> UserList:
    """Users, filtered, sorted and paginated."""
    refuse_unexpected_query(request, UserListParams.model_fields)
    return await user_list.list_users(sessions, counts, params)


@router.get("/{user_id}", response_model=UserResponse, responses=READ_RESPONSES)
async def read_user(user_id: uuid.UUID, _: AdminUser, session: SessionDep) -> UserResponse:
    """One user."""
    return UserResponse.model_validate(await users.get_user(session, user_id))


@router.put("/{user_id}", response_model=UserResponse, responses=UPDATE_RESPONSES)
async def update_user(
    user_id: uuid.UUID,
    update: UserUpdate,
    admin: AdminUser,
    session: SessionDep,
    cognito: CognitoDep,
) -> UserResponse:
    """Change a user's name, role, province or active state (in Cognito too)."""
    user = await users.update_user(session, cognito, user_id, update, actor_id=admin.id)
    return UserResponse.model_validate(user)


@router.post(
    "/{user_id}/reset-password",
    response_model=PasswordResetResponse,
    status_code=status.HTTP_202_ACCEPTED,
    responses=RESET_RESPONSES,
)
async def reset_password(
    user_id: uuid.UUID, admin: AdminUser, session: SessionDep, cognito: CognitoDep
) -> PasswordResetResponse:
    """Email the user a password-reset code, or a new invitation if they never signed in."""
    outcome = await users.reset_password(session, cognito, user_id, actor_id=admin.id)
    return PasswordResetResponse(outcome=outcome)
