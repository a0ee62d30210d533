"""User management (ADMIN) and the caller's own profile (any role)."""

from fastapi import APIRouter

from app.api.v1.responses import AUTH_RESPONSES
from app.core.auth import CurrentUser
from app.schemas.user import UserResponse

router = APIRouter(prefix="/users", tags=["users"])


@router.get("/me", response_model=UserResponse, responses=AUTH_RESPONSES)
async def read_own_profile(user: CurrentUser) -> UserResponse:
    """The signed-in user's own profile."""
    return UserResponse.model_validate(user)
