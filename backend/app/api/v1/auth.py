"""The token validation helper routes depend on: who the caller is, and whether they may.

`get_current_user` admits any signed-in role; `require_role(...)` (from `app.core.rbac`) admits
only the roles it names. Both verify the bearer access token and load the caller's active user
row (from the worker's user cache while it can vouch for it), so a role change or a
deactivation applies on the caller's next request.
"""

from typing import Annotated, Final

from fastapi import Depends

from app.core.rbac import require_role
from app.core.roles import Role
from app.services.user_cache import AuthenticatedUser

get_current_user: Final = require_role(*Role)

CurrentUser = Annotated[AuthenticatedUser, Depends(get_current_user)]
AdminUser = Annotated[AuthenticatedUser, Depends(require_role(Role.ADMIN))]
