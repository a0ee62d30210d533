"""Who is calling: the principal a protected route receives, and the province it is scoped to.

Domain-free on purpose: authorisation (`app.core.rbac`) and, from phase 3, data scoping need
the caller's id, role and responsible province, and nothing else of the users table. The user
lookup the app hands to the toolkit returns a subclass carrying the rest of its snapshot
(`app.services.user_cache.AuthenticatedUser`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from app.core.errors import ForbiddenError
from app.core.roles import Role

# Roles that see every province; an OFFICER sees only the one they are responsible for.
UNSCOPED_ROLES = frozenset({Role.ADMIN, Role.DISPATCHER, Role.EXECUTIVE})


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. Immutable: one cached instance serves all their requests."""

    id: uuid.UUID
    role: Role
    responsible_province: str | None


def scoped_province(principal: Principal) -> str | None:
    """The one province the caller's data is limited to; None for a role that sees all.

    Fails closed: a role that is scoped but has no province (the database forbids it for an
    OFFICER) sees nothing rather than everything.
    """
    if principal.role in UNSCOPED_ROLES:
        return None
    if principal.responsible_province is None:
        raise ForbiddenError("No province is assigned to this account")
    return principal.responsible_province
