"""Who is calling: the principal a protected route receives.

Domain-free on purpose: authorisation (`app.core.rbac`) and data scoping (`app.core.scope`)
need the caller's id, role and responsible province, and nothing else of the users table. The
user lookup the app hands to the toolkit returns a subclass carrying the rest of its snapshot
(`app.services.user_cache.AuthenticatedUser`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from app.core.roles import Role


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller. Immutable: one cached instance serves all their requests."""

    id: uuid.UUID
    role: Role
    responsible_province: str | None
