"""User schemas by purpose: what an admin sends, and what the API returns."""

from __future__ import annotations

import uuid
from datetime import datetime

from pydantic import BaseModel, ConfigDict

from app.core.roles import Role


class UserResponse(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    full_name: str
    email: str | None
    role: Role
    responsible_province: str | None
    is_active: bool
    created_at: datetime
