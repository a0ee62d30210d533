"""User accounts: the database side, and Cognito kept in step with it."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.models.user import User


async def find_user_by_cognito_id(session: AsyncSession, cognito_user_id: str) -> User | None:
    result = await session.execute(select(User).where(User.cognito_user_id == cognito_user_id))
    return result.scalar_one_or_none()
