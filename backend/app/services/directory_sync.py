"""Carrying user changes out in the user directory (Cognito), durably, in order, eventually.

A user change that Cognito must follow (deactivation, reactivation, a new role) records an
outbox step keyed by the user's id with it (`record_directory_pass`): the API enforces the row
at once, and the outbox worker (`app.services.outbox`) has this handler make Cognito match the
row afterwards, so an admin's change never waits on Cognito and never fails because Cognito is
down.

The steps of a user are **state to reach**, not steps to replay: the handler reads the row as
it is now and makes Cognito match it (enabled as `is_active`, in the group of its role and no
other role group), one pass for every step handed over. A deactivation's step also asks for a
global sign-out (refresh tokens revoked), retried until it succeeds: a step carried out
together with a later reactivation's still signs the user out.

**Confirmed by reading back.** Each call is sent once (no SDK retry: the outbox is the only
retrier), and a call whose outcome is unknown (a timeout) may still land later, after a later
call. So after a pass that follows a failure (`Claim.retried`), and after a try that lost its
lease (`lost_lease`), this handler records a **read-back** of the user, due `settle_seconds`
later (longer than any call can still land; `settle_seconds_for`). A read-back reads Cognito and
repairs only what differs (and then reads back again). It belongs to its user: it is never
handed out before it is due, so no other step or repair consumes it early.
"""

from __future__ import annotations

import functools
import logging
import uuid
from datetime import timedelta
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement

from app.core.config import Settings
from app.core.db import ReadSessions
from app.core.roles import Role
from app.models.outbox import OutboxEntry
from app.models.user import User
from app.services import outbox
from app.services.cognito import ROLE_GROUPS, CognitoUserPool, DirectoryMismatchError
from app.services.outbox import Claim, Finish, Handler, OutboxWorker

logger = logging.getLogger(__name__)

KIND: Final = "directory"
_SIGN_OUT: Final = "sign_out"
# The payload of a read-back (the name earlier releases wrote too).
READ_BACK: Final = "settle_check"
# After a failure, how long the key's next success is confirmed by reading back: longer than a
# call can be in flight (connect and read timeouts, 2 + 5 s by default, one attempt).
SETTLE_SECONDS: Final = 10.0


def settle_seconds_for(settings: Settings) -> float:
    """When a user whose work failed is read back: after any call it sent can have landed (one
    attempt each, bounded by the connect and read timeouts), with a margin."""
    in_flight = settings.aws_connect_timeout_seconds + settings.aws_read_timeout_seconds
    return max(SETTLE_SECONDS, in_flight + 3.0)


async def match_user(
    cognito: CognitoUserPool, username: str, role: Role, is_active: bool, *, sign_out: bool = False
) -> None:
    """Make the Cognito user enabled as `is_active`, then signed out everywhere when
    `sign_out`, then in exactly its role's group.

    What the worker does for each user, and the reconcile command for drift it repairs.
    Groups that are not role groups are left alone.
    """
    # Disabled first: a password sign-in between a sign-out and a later disable would get a
    # refresh token the sign-out never saw. Once disabled, no sign-in succeeds.
    await cognito.set_enabled(username, is_active)
    if sign_out:
        # Revokes the refresh tokens, so the sessions mint no new access tokens; those already
        # issued are refused by the API (sessions_revoked_at against their auth_time).
        await cognito.sign_out_everywhere(username)
    groups = await cognito.groups_of(username)
    for stale in sorted((groups & set(ROLE_GROUPS)) - {role.value}):
        await cognito.remove_from_group(username, Role(stale))
    if role.value not in groups:
        await cognito.add_to_group(username, role)


def record_directory_pass(session: AsyncSession, user_id: uuid.UUID, *, sign_out: bool) -> None:
    """Promise, in the session's transaction, that Cognito will be made to match the user
    (and sign them out everywhere, when `sign_out`)."""
    outbox.record(session, KIND, str(user_id), {_SIGN_OUT: True} if sign_out else {})


def pending_work(
    user_id: uuid.UUID | None = None, *, confirmations: bool = False
) -> list[ColumnElement[bool]]:
    """The conditions of directory work still to do (a read-back is a check, not work; with
    `confirmations`, it counts: until it has run, a late landing may still be put right)."""
    conditions: list[ColumnElement[bool]] = [OutboxEntry.kind == KIND]
    if not confirmations:
        conditions.append(~OutboxEntry.payload.has_key(READ_BACK))
    if user_id is not None:
        conditions.append(OutboxEntry.key == str(user_id))
    return conditions


class DirectoryRecorder:
    """What user changes ask of the directory sync, in the web process: record a pass, say
    whether a user is in step, count what waits. It carries nothing out (the worker does)."""

    def __init__(self, read_sessions: ReadSessions) -> None:
        self._read_sessions = read_sessions

    def record(self, session: AsyncSession, user_id: uuid.UUID, *, sign_out: bool) -> None:
        """`record_directory_pass`, for callers that hold the recorder."""
        record_directory_pass(session, user_id, sign_out=sign_out)

    @staticmethod
    async def in_step(session: AsyncSession, user_id: uuid.UUID) -> bool:
        """Whether no directory work for the user is pending (Cognito matches the row)."""
        pending = await session.scalar(
            select(func.count()).select_from(OutboxEntry).where(*pending_work(user_id))
        )
        return pending == 0

    async def pending(self) -> int:
        """How many steps of directory work wait, due or not (for tests and operators)."""
        async with self._read_sessions() as session:
            count = await session.scalar(
                select(func.count()).select_from(OutboxEntry).where(*pending_work())
            )
        return int(count or 0)


async def carry_out_now(worker: OutboxWorker, user_id: uuid.UUID) -> bool:
    """Make Cognito match the user's row now, with whatever steps the user has (the reconcile
    command's repair); False when that failed (the worker takes it over) or a worker holds
    the user."""
    return await worker.carry_out_key(KIND, str(user_id))


def _is_read_back(entry: OutboxEntry) -> bool:
    return bool(entry.payload.get(READ_BACK))


class DirectorySync(Handler):
    """The directory's outbox handler: Cognito made to match each user's row, then read back
    after a failure (see the module docstring)."""

    def __init__(
        self,
        read_sessions: ReadSessions,
        cognito: CognitoUserPool,
        *,
        settle_seconds: float = SETTLE_SECONDS,
    ) -> None:
        self._read_sessions = read_sessions
        self._cognito = cognito
        self._settle = timedelta(seconds=settle_seconds)

    async def handle(self, claim: Claim) -> Finish | None:
        """One pass for the user; a read-back scheduled when a late landing is possible."""
        put_right = await self._pass(claim)
        if claim.retried or put_right:
            return functools.partial(self._read_back_later, claim.key)
        return None

    async def lost_lease(self, session: AsyncSession, claim: Claim) -> None:
        """What this try sent may land after the new holder's pass: read the user back once it
        all can have landed."""
        await self._read_back_later(claim.key, session)

    async def _read_back_later(self, key: str, session: AsyncSession) -> None:
        outbox.record(session, KIND, key, {READ_BACK: True}, not_before=self._settle)

    async def _pass(self, claim: Claim) -> bool:
        """Make Cognito match the user's row as it is now; for read-backs only, read Cognito
        and repair only what differs. Whether a read-back found something to put right."""
        user_id = uuid.UUID(claim.key)
        async with self._read_sessions() as session:
            row = (
                await session.execute(
                    select(User.email, User.role, User.is_active).where(User.id == user_id)
                )
            ).one_or_none()
        if row is None:
            return False
        cognito = self._cognito.without_sdk_retries()
        sign_out = any(entry.payload.get(_SIGN_OUT) for entry in claim.entries)
        reading_back = all(_is_read_back(entry) for entry in claim.entries)
        try:
            with cognito.deadline():
                if reading_back and await _matches(cognito, row.email, row.role, row.is_active):
                    return False
                await match_user(cognito, row.email, row.role, row.is_active, sign_out=sign_out)
        except DirectoryMismatchError as error:
            # Retrying cannot help; the reconcile command reports it.
            logger.error("directory sync: %s", error.detail, extra={"user_id": str(user_id)})
            return False
        if reading_back:
            logger.warning(
                "directory sync: a late call was put right", extra={"user_id": str(user_id)}
            )
        return reading_back


async def _matches(cognito: CognitoUserPool, username: str, role: Role, is_active: bool) -> bool:
    """Whether Cognito, read now, has the user enabled as `is_active` and in exactly `role`'s
    group among the role groups."""
    user = await cognito.get_user(username)
    groups = await cognito.groups_of(username)
    return user.enabled == is_active and groups & set(ROLE_GROUPS) == {role.value}
