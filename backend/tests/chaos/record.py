"""What the chaos run saw: every exchange with the apps, the users it manages, their sessions.

All instants are `time.monotonic()` of the harness, which sends every request and signs every
session in, so they order events exactly as the harness observed them.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

# After a state change whose outcome the harness does not know (no answer, or a 5xx: the
# commit may have happened), the server may still be working on it: its Cognito work is bounded
# by 8 s, the database's by a few; 30 s is past both with margin.
UNCERTAIN_SECONDS: Final = 30.0


def claims_of(token: str) -> dict[str, Any]:
    """A JWT's claims, unverified (the harness reads what Cognito issued)."""
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


@dataclass
class Deactivation:
    """A deactivation the harness knows took the user from active to inactive."""

    sent: float
    answered: float
    instance: str


@dataclass
class Session:
    """One sign-in and the access tokens minted from it (the first, then refreshed ones)."""

    user: ManagedUser
    began: float  # when the sign-in's answer arrived
    auth_time: int
    refresh_token: str
    access_token: str
    refreshes: int = 0
    refresh_revoked: bool = False

    @property
    def label(self) -> str:
        return f"session of {self.user.email} signed in at {self.began:.2f}"


@dataclass
class ManagedUser:
    id: str
    email: str
    role: str
    # As the last answer said; None while an unanswered change may still land.
    active: bool | None = True
    uncertain_until: float = 0.0
    deactivations: list[Deactivation] = field(default_factory=list)
    sessions: list[Session] = field(default_factory=list)
    password_set: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def ended_by_a_deactivation(self, session: Session) -> bool:
        return any(session.began < d.sent for d in self.deactivations)


@dataclass
class MeCall:
    """A /users/me call that answered 200."""

    session: Session
    token_iat: int
    sent: float
    answered: float
    instance: str


@dataclass
class HealthProbe:
    instance: str
    sent: float
    answered: float
    status: int | None  # None: no answer (transport error or the client's timeout)


@dataclass
class Recorder:
    """Counts by kind of request and status, and the exchanges the invariants are judged on."""

    statuses: Counter[tuple[str, str]] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    unhonest_503s: list[str] = field(default_factory=list)
    accepted_me_calls: list[MeCall] = field(default_factory=list)
    health_probes: list[HealthProbe] = field(default_factory=list)
    # Emails a create was refused with 409 email_taken for, and when (monotonic, and epoch:
    # the row that holds the email must have been created before that answer).
    email_taken: list[tuple[str, float, float]] = field(default_factory=list)
    # Creates of the harness's own emails answered with any other 409.
    unexpected_conflicts: list[str] = field(default_factory=list)
    # Users made "in the console" with a known password, then created through the API: what
    # went wrong (a create that adopted one and left the password working, or 5xx).
    console_users: list[str] = field(default_factory=list)
    # reconcile --apply runs during the run: what went wrong (a crash, an unknown status).
    reconcile_runs: list[str] = field(default_factory=list)
    # Creates the admin gave up on after a 503 (their intents settle or reach their give-up).
    abandoned_creates: int = 0
    # Instants at which the harness cut the apps' database sessions.
    sessions_cut_at: list[float] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    sign_ins: Counter[str] = field(default_factory=Counter)

    def count(self, kind: str, status: int | None, error: str = "") -> None:
        self.statuses[(kind, str(status) if status is not None else f"no answer ({error})")] += 1
