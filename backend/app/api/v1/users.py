"""User management (ADMIN) and the caller's own profile (any role)."""

from fastapi import APIRouter

from app.core.auth import CurrentUser
from app.core.errors import ErrorResponse
from app.schemas.user import UserResponse

AUTH_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorResponse, "description": "Missing, invalid or expired access token"},
    503: {"model": ErrorResponse, "description": "A dependency is unavailable"},
}
ADMIN_RESPONSES: dict[int | str, dict[str, object]] = {
    **AUTH_RESPONSES,
    403: {"model": ErrorResponse, "description": "The caller's role may not do this"},
}

router = APIRouter(prefix="/users", tags=["users"])


@router.get("/me", response_model=UserResponse, responses=AUTH_RESPONSES)
async def read_own_profile(user: CurrentUser) -> UserResponse:
    """The signed-in user's own profile."""
    return UserResponse.model_validate(user)
