"""The one rule for taking over a Cognito user that has no row: adopting it, or removing it.

A create makes its Cognito user first and its row last, so a Cognito user without a row may be
a create still in flight. Each create records an intent first (`app.services.user_creation`):
a Cognito user created under an intent (no earlier than it began, less `CLOCK_SKEW`) is that
create's to adopt, whatever its status; no one else adopts or removes a user whose email has an
intent pending. Left from before intents, a user that never signed in and is older than any
create in flight may be adopted or removed. The create, the worker that settles intents and the
reconcile command all ask `adoption_refusal` before they act, so they cannot disagree about whose
user it is.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import select

from app.core.db import ReadSessions
from app.models.outbox import OutboxEntry
from app.models.user import User
from app.services.cognito import NEVER_SIGNED_IN_STATUS, CognitoUser

# Older than any request that may still be creating (or undoing) it: each one's Cognito work is
# bounded by COGNITO_DEADLINE_SECONDS (at most 20 s), and its undo by as much again.
ADOPTABLE_AFTER: Final = timedelta(seconds=60)
# Between the database's clock (an intent's start) and Cognito's (a user's creation date): both
# keep NTP time.
CLOCK_SKEW: Final = timedelta(seconds=1)
# The outbox kind of a create's intent, keyed by the lower-cased email.
CREATION_KIND: Final = "user_creation"


async def intent_pending(read_sessions: ReadSessions, email: str) -> bool:
    """Whether a create of `email` is under way or being settled."""
    async with read_sessions() as session:
        found = await session.scalar(
            select(OutboxEntry.id).where(
                OutboxEntry.kind == CREATION_KIND, OutboxEntry.key == email.lower()
            )
        )
    return found is not None


async def sub_is_referenced(read_sessions: ReadSessions, sub: str) -> bool:
    """Whether a committed row refers to the Cognito user `sub`."""
    async with read_sessions() as session:
        found = await session.scalar(select(User.id).where(User.cognito_user_id == sub))
    return found is not None


async def adoption_refusal(
    read_sessions: ReadSessions, user: CognitoUser, *, intent_began: datetime | None = None
) -> str | None:
    """Why `user` may not be adopted or removed now; None when nobody else can claim it.

    `intent_began`: the caller settles the create intent of the user's email, begun then; a
    user created under it is the intent's. Without one (reconcile), a user whose email has an
    intent pending is left to it. The row check comes last, as close to the caller's action as
    it can be; the caller acts right after it.
    """
    under_intent = (
        intent_began is not None
        and user.created_at is not None
        and user.created_at >= intent_began - CLOCK_SKEW
    )
    if not under_intent:
        if user.status != NEVER_SIGNED_IN_STATUS:
            return f"status {user.status}, the user has signed in"
        if user.created_at is None or datetime.now(UTC) - user.created_at < ADOPTABLE_AFTER:
            return "created moments ago: a create may still be in progress"
        if intent_began is None and user.email and await intent_pending(read_sessions, user.email):
            return "a create of its email is being settled"
    if await sub_is_referenced(read_sessions, user.sub):
        return "a row refers to it now"
    return None
