"""User management (ADMIN) and the caller's own profile (any role)."""

import uuid
from typing import Final

from fastapi import Request, Response, status

from app.api.deps import CognitoDep, DirectoryRecorderDep, user_list_reads
from app.api.routing import API_PREFIX, CredentialsFirstRoute, GatedRouter
from app.api.v1.auth import AdminUser, CurrentProfile
from app.api.v1.query import QueryModel
from app.api.v1.responses import (
    ADMIN_RESPONSES,
    AUTH_RESPONSES,
    INVALID,
    UNREADABLE,
    Responses,
    error,
)
from app.core.db import ReadSessionsDep, SessionDep
from app.models.user import User
from app.schemas.user import (
    ManagedUserResponse,
    PasswordResetResponse,
    UserCreate,
    UserList,
    UserListParams,
    UserResponse,
    UserUpdate,
)
from app.services import user_creation, user_list, users
from app.services.directory_sync import DirectoryRecorder

_NOT_FOUND: Final = error(404, "No user with this id")
_THROTTLED: Final = error(429, "Cognito is throttling; see Retry-After")
# Create and reset call Cognito in the request.
_DIRECTORY_UNAVAILABLE: Final = error(
    503,
    "A dependency is unavailable; see Retry-After. Code directory_misconfigured: this instance "
    "cannot use the user pool as configured, and an operator must act (the server log says "
    "what to change)",
)
CREATE_RESPONSES: Responses = {
    **ADMIN_RESPONSES,
    **UNREADABLE,
    **INVALID,
    **_THROTTLED,
    **_DIRECTORY_UNAVAILABLE,
    **error(
        409,
        "Code email_taken: a user with this email exists. Code create_in_progress: another "
        "create of this email is under way (see Retry-After). Code cognito_user_exists: the "
        "user directory has a user with this email that this system did not create (an "
        "operator's reconcile --adopt takes it over)",
    ),
}
READ_RESPONSES: Responses = {**ADMIN_RESPONSES, **INVALID, **_NOT_FOUND}
UPDATE_RESPONSES: Responses = {
    **READ_RESPONSES,
    **UNREADABLE,
    **error(409, "Refused: self-deactivation or demotion, or the last active admin"),
}
RESET_RESPONSES: Responses = {
    **READ_RESPONSES,
    **_THROTTLED,
    **_DIRECTORY_UNAVAILABLE,
    **error(409, "The user is deactivated, or Cognito and the database disagree"),
}

router = GatedRouter(
    gate=f"{API_PREFIX}/users", prefix="/users", tags=["users"], route_class=CredentialsFirstRoute
)


def _managed(user: User, *, directory_in_step: bool) -> ManagedUserResponse:
    return ManagedUserResponse.model_validate(
        {**UserResponse.model_validate(user).model_dump(), "directory_in_step": directory_in_step}
    )


# Declared before /{user_id}, so "me" is never read as an id.
@router.get("/me", response_model=UserResponse, responses=AUTH_RESPONSES)
async def read_own_profile(user: CurrentProfile) -> Response:
    """The signed-in user's own profile."""
    # A `UserResponse` (response_model), rendered once per cached snapshot of the user.
    return Response(user.profile_json(), media_type="application/json")


@router.post(
    "",
    response_model=ManagedUserResponse,
    status_code=status.HTTP_201_CREATED,
    responses=CREATE_RESPONSES,
)
async def create_user(
    data: UserCreate,
    admin: AdminUser,
    session: SessionDep,
    sessions: ReadSessionsDep,
    cognito: CognitoDep,
    request: Request,
    response: Response,
) -> ManagedUserResponse:
    """Create a user in Cognito (who is emailed an invitation) and in the database."""
    user = await user_creation.create_user(session, sessions, cognito, data, actor_id=admin.id)
    response.headers["Location"] = request.app.url_path_for("read_user", user_id=str(user.id))
    return _managed(user, directory_in_step=True)


_LIST_QUERY: Final = QueryModel(UserListParams)


@router.get(
    "",
    response_model=UserList,
    responses=READ_RESPONSES,
    openapi_extra=_LIST_QUERY.openapi_extra,
)
async def list_users(_: AdminUser, request: Request) -> Response:
    """Users, filtered, sorted and paginated."""
    # Sent as cached: the answer is a `UserList` (response_model), built once per change, and
    # gzipped once for the clients that accept it. The query is read only for a page not
    # cached under the same query string.
    answer = await user_list.user_list_answer(
        user_list_reads(request),
        request.scope["query_string"],
        lambda: _LIST_QUERY.parse(request),
    )
    return answer.response(request)


@router.get("/{user_id}", response_model=ManagedUserResponse, responses=READ_RESPONSES)
async def read_user(
    user_id: uuid.UUID, _: AdminUser, sessions: ReadSessionsDep
) -> ManagedUserResponse:
    """One user."""
    async with sessions() as session:
        user = await users.get_user(session, user_id)
        in_step = await DirectoryRecorder.in_step(session, user_id)
    return _managed(user, directory_in_step=in_step)


@router.put("/{user_id}", response_model=ManagedUserResponse, responses=UPDATE_RESPONSES)
async def update_user(
    user_id: uuid.UUID,
    update: UserUpdate,
    admin: AdminUser,
    session: SessionDep,
    directory: DirectoryRecorderDep,
) -> ManagedUserResponse:
    """Change a user's name, role, province or active state; Cognito follows shortly.

    The change applies to the API at once (a deactivated user's next request is refused, and
    so is every token issued before the deactivation, for good); `directory_in_step` says
    whether Cognito has followed yet: `false` is not an error, Cognito follows within a minute.
    """
    updated = await users.update_user(session, directory, user_id, update, actor_id=admin.id)
    return _managed(updated.user, directory_in_step=updated.directory_in_step)


@router.post(
    "/{user_id}/reset-password",
    response_model=PasswordResetResponse,
    status_code=status.HTTP_202_ACCEPTED,
    responses=RESET_RESPONSES,
)
async def reset_password(
    user_id: uuid.UUID, admin: AdminUser, sessions: ReadSessionsDep, cognito: CognitoDep
) -> PasswordResetResponse:
    """Email the user a password-reset code, or a new invitation if they never signed in."""
    outcome = await users.reset_password(sessions, cognito, user_id, actor_id=admin.id)
    return PasswordResetResponse(outcome=outcome)
