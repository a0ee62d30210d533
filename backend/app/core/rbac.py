"""Role-based access: one `Role` enum and the dependencies routes declare.

`require_role(*roles)` builds the authentication dependency restricted to those roles (403 for
anyone else); `CurrentUser` lets any signed-in role through, `AdminUser` only ADMIN. They live
in `app.core.auth`, where authentication is, and are re-exported here for the routes.
"""

from app.core.auth import AdminUser, CurrentUser, require_role
from app.core.roles import Role

__all__ = ["AdminUser", "CurrentUser", "Role", "require_role"]
