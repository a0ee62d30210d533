"""The one rule for taking over a Cognito user that has no row: adopting it, or removing it.

A create makes its Cognito user first and its row last, so a Cognito user without a row may be
a create still in flight. Each create records an intent first (`app.services.user_creation`),
and a create (or the worker settling its intent) adopts only the user **its own intent made**
(`IntentTrace.made`): in a pool where the create names the user (email as an alias: a
generated username), a user whose username is one the intent tried; where Cognito names it
(email as username, or the email itself as the name), a user created inside the intent's time
window (from its first try, less `CLOCK_SKEW`, to `LANDS_WITHIN` after its latest). Any other
Cognito user of the email is someone else's: someone may have made it in the console with a
password they know, so a create refuses it (`CognitoUserExistsError`) and only an operator's
`reconcile --adopt` takes it over. Every adoption of a user who never signed in gives it a new
temporary password (AdminCreateUser RESEND), so no password set before the adoption survives it.

No one else adopts or removes a user whose email has an intent pending. The reconcile command
adopts or removes only a user that never signed in and is older than any create in flight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import select

from app.core.db import ReadSessions
from app.models.outbox import OutboxEntry
from app.models.user import User
from app.services.cognito import NEVER_SIGNED_IN_STATUS, CognitoUser, CognitoUserPool

# Older than any request that may still be creating (or undoing) it: each one's Cognito work is
# bounded by COGNITO_DEADLINE_SECONDS (at most 20 s), and its undo by as much again.
ADOPTABLE_AFTER: Final = timedelta(seconds=60)
# Between the database's clock (an intent's start) and Cognito's (a user's creation date): both
# keep NTP time.
CLOCK_SKEW: Final = timedelta(seconds=1)
# The outbox kind of a create's intent, keyed by the lower-cased email.
CREATION_KIND: Final = "user_creation"
# How long after it was sent an AdminCreateUser can still land: it is sent once (no SDK retry)
# and abandoned at the request's deadline (at most 20 s); a call held up on its way lands well
# within this. An intent under which nothing appeared this long after its latest try is dropped.
LANDS_WITHIN: Final = timedelta(seconds=30)


# The fields of an intent's payload that are its trace, not what the create asked for.
TRACE_FIELDS: Final = frozenset({"began", "tried", "usernames"})


@dataclass(frozen=True, slots=True)
class IntentTrace:
    """What a create's intent recorded of its tries: when, and under which usernames."""

    began: datetime  # the first try
    tried: datetime  # the latest try
    usernames: tuple[str, ...] = ()  # the usernames the tries sent, where the create names users

    @classmethod
    def of(cls, payload: Mapping[str, Any]) -> IntentTrace:
        return cls(
            datetime.fromisoformat(payload["began"]),
            datetime.fromisoformat(payload["tried"]),
            tuple(payload.get("usernames") or ()),
        )

    def to_payload(self) -> dict[str, Any]:
        return {
            "began": self.began.isoformat(),
            "tried": self.tried.isoformat(),
            "usernames": list(self.usernames),
        }

    def made(self, user: CognitoUser) -> bool:
        """Whether `user` is one this intent's tries made (see the module docstring)."""
        if self.usernames:
            return user.username in self.usernames
        return user.created_at is not None and (
            self.began - CLOCK_SKEW <= user.created_at <= self.tried + LANDS_WITHIN + CLOCK_SKEW
        )


def merged_usernames(
    payloads: Sequence[Mapping[str, Any]], username: str | None
) -> tuple[str, ...]:
    """Every username the earlier tries of an intent sent, and this try's (when it names one)."""
    names = [name for payload in payloads for name in payload.get("usernames") or ()]
    if username is not None:
        names.append(username)
    return tuple(dict.fromkeys(names))


async def intent_pending(read_sessions: ReadSessions, email: str) -> bool:
    """Whether a create of `email` is under way or being settled."""
    async with read_sessions() as session:
        found = await session.scalar(
            select(OutboxEntry.id).where(
                OutboxEntry.kind == CREATION_KIND,
                OutboxEntry.key == email.lower(),
                # An intent, not a read-back the outbox scheduled for the key.
                OutboxEntry.payload.has_key("began"),
            )
        )
    return found is not None


async def sub_is_referenced(read_sessions: ReadSessions, sub: str) -> bool:
    """Whether a committed row refers to the Cognito user `sub`."""
    async with read_sessions() as session:
        found = await session.scalar(select(User.id).where(User.cognito_user_id == sub))
    return found is not None


async def adoption_refusal(
    read_sessions: ReadSessions, user: CognitoUser, *, intent: IntentTrace | None = None
) -> str | None:
    """Why `user` may not be adopted or removed now; None when nobody else can claim it.

    `intent`: the caller settles the create intent of the user's email; only a user that
    intent made is its to adopt. Without one (reconcile), a user whose email has an intent
    pending is left to it. The row check comes last, as close to the caller's action as it can
    be; the caller acts right after it.
    """
    if intent is not None:
        if not intent.made(user):
            return NOT_THE_INTENTS
        if not intent.usernames and user.status != NEVER_SIGNED_IN_STATUS:
            # Matched by time alone, a user who signed in may be someone else's, made in the
            # window with a password they know: no RESEND can take that password back.
            return NOT_THE_INTENTS
    else:
        if user.status != NEVER_SIGNED_IN_STATUS:
            return f"status {user.status}, the user has signed in"
        if user.created_at is None or datetime.now(UTC) - user.created_at < ADOPTABLE_AFTER:
            return "created moments ago: a create may still be in progress"
        if user.email and await intent_pending(read_sessions, user.email):
            return "a create of its email is being settled"
    if await sub_is_referenced(read_sessions, user.sub):
        return REFERENCED
    return None


NOT_THE_INTENTS: Final = "someone else made it (not a user this create's intent made)"
REFERENCED: Final = "a row refers to it now"


async def fresh_invitation(cognito: CognitoUserPool, user: CognitoUser) -> None:
    """Before an adoption: a user who never signed in gets a new temporary password (and a new
    invitation), so whatever password it had before, chosen by whoever made it, no longer signs
    in. AdminCreateUser with MessageAction=RESEND "resend[s] the invitation message to a user
    that already exists, and reset[s] the temporary-password duration with a new temporary
    password" (the AdminCreateUser API reference, `MessageAction`). Addressed by the real
    username, the one name every kind of pool accepts for a RESEND."""
    if user.status == NEVER_SIGNED_IN_STATUS:
        await cognito.resend_invitation(user.username)
