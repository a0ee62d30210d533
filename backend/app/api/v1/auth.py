"""The token validation helper routes depend on: who the caller is, and whether they may.

`get_current_user` admits any signed-in role; `require_role(...)` (from `app.core.rbac`) admits
only the roles it names. Both verify the bearer access token and load the caller's active user
row (from the web worker's user cache while it can vouch for it), so a role change or a
deactivation applies on the caller's next request.

Routes receive a `Principal` (`app.core.principal`: id, role, responsible province); the one
that answers with the caller's profile receives the user lookup's full snapshot
(`CurrentProfile`). `CallerScope` is what a caller's data is limited to.
"""

from typing import Annotated, Final

from fastapi import Depends

from app.core.principal import Principal
from app.core.rbac import require_role
from app.core.roles import Role
from app.core.scope import ProvinceScope
from app.services.user_cache import AuthenticatedUser

get_current_user: Final = require_role(*Role)

CurrentUser = Annotated[Principal, Depends(get_current_user)]
CurrentProfile = Annotated[
    AuthenticatedUser, Depends(require_role(*Role, principal_type=AuthenticatedUser))
]
AdminUser = Annotated[Principal, Depends(require_role(Role.ADMIN))]


async def province_scope(principal: CurrentUser) -> ProvinceScope:
    """The caller's province scope (`app.core.scope`: who sees what, and 404 or an empty list)."""
    return ProvinceScope.of(principal)


# What a route's queries are limited to: `scope.where(Case.province)` filters a list,
# `scope.check(case.province)` refuses one item of another province.
CallerScope = Annotated[ProvinceScope, Depends(province_scope)]
