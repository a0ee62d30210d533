"""The token validation helper routes depend on: who the caller is, and whether they may.

`get_current_user` admits any signed-in role; `require_role(...)` (from `app.core.rbac`) admits
only the roles it names. Both verify the bearer access token and load the caller's active user
row (from the web worker's user cache while it can vouch for it), so a role change or a
deactivation applies on the caller's next request.

Routes receive a `Principal` (`app.core.principal`: id, role, responsible province); the one
that answers with the caller's profile receives the user lookup's full snapshot
(`CurrentProfile`). `ProvinceScope` is the province a caller's data is limited to.
"""

from typing import Annotated, Final

from fastapi import Depends

from app.core.principal import Principal, scoped_province
from app.core.rbac import require_role
from app.core.roles import Role
from app.services.user_cache import AuthenticatedUser

get_current_user: Final = require_role(*Role)

CurrentUser = Annotated[Principal, Depends(get_current_user)]
CurrentProfile = Annotated[
    AuthenticatedUser, Depends(require_role(*Role, principal_type=AuthenticatedUser))
]
AdminUser = Annotated[Principal, Depends(require_role(Role.ADMIN))]


async def province_scope(principal: CurrentUser) -> str | None:
    """The caller's province scope (see `scoped_province`)."""
    return scoped_province(principal)


# The province a query must be limited to: None for a role that sees every province, the
# responsible province for an OFFICER. Phase 3's case routes filter by it.
ProvinceScope = Annotated[str | None, Depends(province_scope)]
