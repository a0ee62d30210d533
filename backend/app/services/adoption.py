"""The one rule for taking over a Cognito user that has no row: adopting it, or removing it.

A create makes its Cognito user first and its row last, so a Cognito user without a row may be
a create still in flight. The user service (a create meeting a user a lost answer or an earlier
failure left) and the reconcile command (adopting or removing orphans) both ask `adoption_refusal`
before they act, so they cannot disagree about whose user it is.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import select

from app.core.db import ReadSessions
from app.models.user import User
from app.services.cognito import NEVER_SIGNED_IN_STATUS, CognitoUser

# Older than any request that may still be creating (or undoing) it: each one's Cognito work is
# bounded by COGNITO_DEADLINE_SECONDS (at most 20 s), and its undo by as much again.
ADOPTABLE_AFTER: Final = timedelta(seconds=60)


async def sub_is_referenced(read_sessions: ReadSessions, sub: str) -> bool:
    """Whether a committed row refers to the Cognito user `sub`."""
    async with read_sessions() as session:
        found = await session.scalar(select(User.id).where(User.cognito_user_id == sub))
    return found is not None


async def adoption_refusal(
    read_sessions: ReadSessions, user: CognitoUser, *, ours: bool = False
) -> str | None:
    """Why `user` may not be adopted or removed now; None when nobody else can claim it.

    `ours`: the caller's own create made it (its answer was lost), so no other create can be
    in flight for it and its age does not matter. The row check comes last, as close to the
    caller's action as it can be; the caller acts right after it.
    """
    if user.status != NEVER_SIGNED_IN_STATUS:
        return f"status {user.status}, the user has signed in"
    if not ours and (
        user.created_at is None or datetime.now(UTC) - user.created_at < ADOPTABLE_AFTER
    ):
        return "created moments ago: a create may still be in progress"
    if await sub_is_referenced(read_sessions, user.sub):
        return "a row refers to it now"
    return None
