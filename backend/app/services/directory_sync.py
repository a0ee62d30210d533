"""Carrying user changes out in the user directory (Cognito), durably, in order, eventually.

A user change that Cognito must follow (deactivation, reactivation, a new role) records an
outbox entry keyed by the user's id with it (`record`): the API enforces the row at once, and
the outbox worker (`app.services.outbox`) has this handler make Cognito match the row
afterwards, so an admin's change never waits on Cognito and never fails because Cognito is down.

For a user, the handler reads the row as it is now and makes Cognito match it: enabled as
`is_active`, in the group of its role and no other role group. A deactivation's entry also asks
for a global sign-out (refresh tokens revoked), a step retried until it succeeds: an entry
carried out together with a later reactivation's still signs the user out. Since the worker
holds a user's key while it works, one user's changes are carried out in order whatever the
number of processes, and the last pass reads the latest row.
"""

from __future__ import annotations

import functools
import logging
import uuid
from typing import Final

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import ColumnElement

from app.core.roles import Role
from app.models.outbox import OutboxEntry
from app.models.user import User
from app.services import outbox
from app.services.cognito import ROLE_GROUPS, CognitoUserPool, DirectoryMismatchError
from app.services.outbox import Claim, Finish, OutboxWorker

logger = logging.getLogger(__name__)

KIND: Final = "directory"
_SIGN_OUT: Final = "sign_out"


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
        conditions.append(~OutboxEntry.payload.has_key(outbox.SETTLE_CHECK))
    if user_id is not None:
        conditions.append(OutboxEntry.key == str(user_id))
    return conditions


class DirectorySync:
    """The directory's outbox handler, and what user changes and reconcile ask of it."""

    def __init__(self, worker: OutboxWorker, cognito: CognitoUserPool) -> None:
        self._worker = worker
        # Public so that tests can point the worker at their emulator, as they do the requests.
        self.cognito = cognito
        worker.register(KIND, self)

    # -- what a user change does ------------------------------------------------------------

    def record(self, session: AsyncSession, user_id: uuid.UUID, *, sign_out: bool) -> None:
        """`record_directory_pass`, for callers that hold the handler."""
        record_directory_pass(session, user_id, sign_out=sign_out)

    @staticmethod
    async def in_step(session: AsyncSession, user_id: uuid.UUID) -> bool:
        """Whether no directory work for the user is pending (Cognito matches the row)."""
        pending = await session.scalar(
            select(func.count()).select_from(OutboxEntry).where(*pending_work(user_id))
        )
        return pending == 0

    async def pending(self) -> int:
        """How many entries of directory work wait, due or not (for tests and operators)."""
        return await self._worker.count(*pending_work())

    async def carry_out(self, user_id: uuid.UUID) -> bool:
        """Make Cognito match the user's row now, with whatever entries the user has (the
        reconcile command's repair); False when that failed or a worker holds the user."""
        return await self._worker.carry_out_key(KIND, str(user_id))

    # -- the handler ------------------------------------------------------------------------

    async def handle(self, claim: Claim) -> Finish | None:
        """Make Cognito match the user's row as it is now (the outbox worker's handler); for a
        confirmation, read Cognito back and repair only what differs."""
        user_id = uuid.UUID(claim.key)
        async with self._worker.read_sessions() as session:
            row = (
                await session.execute(
                    select(User.email, User.role, User.is_active).where(User.id == user_id)
                )
            ).one_or_none()
        if row is None:
            return None
        cognito = self.cognito.without_sdk_retries()
        sign_out = any(entry.payload.get(_SIGN_OUT) for entry in claim.entries)
        try:
            with cognito.deadline():
                if claim.confirming and await _matches(cognito, row.email, row.role, row.is_active):
                    return None
                await match_user(cognito, row.email, row.role, row.is_active, sign_out=sign_out)
        except DirectoryMismatchError as error:
            # Retrying cannot help; the reconcile command reports it.
            logger.error("directory sync: %s", error.detail, extra={"user_id": str(user_id)})
            return None
        if claim.confirming:
            # Something landed late and was put right: read back again once this has landed.
            logger.warning(
                "directory sync: a late call was put right", extra={"user_id": str(user_id)}
            )
            return functools.partial(self._confirm_again, claim.key)
        return None

    async def _confirm_again(self, key: str, session: AsyncSession) -> None:
        self._worker.record_confirmation(session, KIND, key)


async def _matches(cognito: CognitoUserPool, username: str, role: Role, is_active: bool) -> bool:
    """Whether Cognito, read now, has the user enabled as `is_active` and in exactly `role`'s
    group among the role groups."""
    user = await cognito.get_user(username)
    groups = await cognito.groups_of(username)
    return user.enabled == is_active and groups & set(ROLE_GROUPS) == {role.value}
