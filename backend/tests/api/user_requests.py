"""What the user-management tests send and read: the paths, a create's body, a user's row."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.roles import Role
from app.models.user import User

USERS = "/api/v1/users"
ME = f"{USERS}/me"


def new_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.gov"


def body(email: str, role: Role = Role.DISPATCHER, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"full_name": "Somchai Jaidee", "email": email, "role": role}
    if role is Role.OFFICER:
        values["responsible_province"] = "Chiang Mai"
    values.update(overrides)
    return values


async def row_for(session: AsyncSession, email: str) -> User | None:
    result = await session.execute(
        select(User)
        .where(func.lower(User.email) == email.lower())
        .execution_options(populate_existing=True)
    )
    return result.scalar_one_or_none()


async def create(
    client: httpx.AsyncClient, headers: dict[str, str], email: str, role: Role = Role.DISPATCHER
) -> dict[str, Any]:
    response = await client.post(USERS, json=body(email, role), headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created
