"""Role-based access: one `Role` enum, one dependency factory, aliases routes read like prose."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends

from app.core.auth import CurrentUser
from app.core.errors import ForbiddenError
from app.core.roles import Role
from app.models.user import User

__all__ = ["AdminUser", "Role", "require_role"]


def require_role(*allowed: Role) -> Callable[[User], Awaitable[User]]:
    """A dependency that lets through only callers holding one of `allowed` roles (else 403)."""
    if not allowed:
        raise ValueError("require_role needs at least one role")
    allowed_roles = frozenset(allowed)
    names = ", ".join(sorted(allowed_roles))

    async def caller_with_allowed_role(user: CurrentUser) -> User:
        if user.role not in allowed_roles:
            raise ForbiddenError(f"This action requires the role {names}")
        return user

    caller_with_allowed_role.allowed_roles = allowed_roles  # type: ignore[attr-defined]
    return caller_with_allowed_role


AdminUser = Annotated[User, Depends(require_role(Role.ADMIN))]
