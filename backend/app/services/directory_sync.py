"""Carrying user changes out in the user directory (Cognito), durably and eventually.

A user change that Cognito must follow (deactivation, reactivation, a new role) commits an
outbox row with it (`record`): the API enforces the row at once, and the worker here makes
Cognito match it afterwards, so an admin's change never waits on Cognito and never fails
because Cognito is down.

The worker, one per app process, works through due rows:
1. claims a batch with `FOR UPDATE SKIP LOCKED` and leases it (moves `next_attempt_at` past
   the lease) in a short transaction, so processes and instances never take the same rows and
   a worker that dies mid-way leaves rows another one takes up once the lease ends;
2. reads each user's current row and makes Cognito match it: enabled as `is_active`, in the
   group of its role and no other role group, and (best effort) signed out everywhere when
   deactivated. Rows are state to reach, not steps to replay, so a user's rows are carried out
   together and repeating them is harmless;
3. deletes the rows it carried out; a failure (Cognito throttled, down, slow) puts them back
   with capped exponential backoff (`MAX_BACKOFF_SECONDS`), so Cognito is in step again within
   that much of coming back, with no operator action.

No database connection is held while Cognito is called. The worker polls every
`poll_interval` seconds and is woken at once by a commit of this process that recorded work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Final

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.compensation import after_commit
from app.core.db import ReadSessions, Sessionmaker
from app.core.errors import DomainError
from app.core.roles import Role
from app.core.tasks import BackgroundTask
from app.models.directory_outbox import LAST_ERROR_LENGTH, DirectoryOutboxEntry
from app.models.user import User
from app.services.cognito import ROLE_GROUPS, CognitoUserPool, DirectoryMismatchError

logger = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS: Final = 30.0
LEASE_SECONDS: Final = 60.0


async def match_user(cognito: CognitoUserPool, username: str, role: Role, is_active: bool) -> None:
    """Make the Cognito user enabled as `is_active` and in exactly its role's group.

    What the worker does for each outbox row, and the reconcile command for drift it repairs.
    Groups that are not role groups are left alone.
    """
    await cognito.set_enabled(username, is_active)
    groups = await cognito.groups_of(username)
    for stale in sorted((groups & set(ROLE_GROUPS)) - {role.value}):
        await cognito.remove_from_group(username, Role(stale))
    if role.value not in groups:
        await cognito.add_to_group(username, role)
    if not is_active:
        try:
            # Revokes refresh tokens, so no new access tokens; those already issued are
            # refused by the API (sessions_revoked_at). Best effort: not worth a retry.
            await cognito.sign_out_everywhere(username)
        except DomainError as error:
            logger.warning("directory sync: global sign-out failed (%s)", error.code)


class DirectorySync:
    def __init__(
        self,
        sessions: Sessionmaker,
        read_sessions: ReadSessions,
        cognito: CognitoUserPool,
        *,
        poll_interval: float = 1.0,
        batch_size: int = 20,
    ) -> None:
        self._sessions = sessions
        self._read_sessions = read_sessions
        # Public so that tests can point the worker at their emulator, as they do the requests.
        self.cognito = cognito
        self._poll_interval = poll_interval
        self._batch_size = batch_size
        self._wake = asyncio.Event()
        self._task = BackgroundTask(self._run_forever, "directory-sync")

    # -- what a user change does ------------------------------------------------------------

    def record(self, session: AsyncSession, user_id: uuid.UUID) -> None:
        """Promise, in the session's transaction, that Cognito will be made to match the user."""
        session.add(DirectoryOutboxEntry(user_id=user_id))
        after_commit(session, self._wake.set)

    @staticmethod
    async def in_step(session: AsyncSession, user_id: uuid.UUID) -> bool:
        """Whether no directory work for the user is pending (Cognito matches the row)."""
        pending = await session.scalar(
            select(func.count())
            .select_from(DirectoryOutboxEntry)
            .where(DirectoryOutboxEntry.user_id == user_id)
        )
        return pending == 0

    # -- the worker -------------------------------------------------------------------------

    def start(self) -> None:
        self._task.start()

    async def aclose(self) -> None:
        await self._task.aclose()

    async def _run_forever(self) -> None:
        while True:
            try:
                while await self.run_once():
                    pass  # a full batch: there may be more
            except Exception:
                # The database is down or refused the claim: nothing was claimed, try later.
                logger.warning("directory sync: cannot reach the outbox", exc_info=True)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_interval):
                    await self._wake.wait()
            self._wake.clear()

    async def pending(self) -> int:
        """How many rows wait, due or not (for tests and operators)."""
        async with self._read_sessions() as session:
            count = await session.scalar(select(func.count()).select_from(DirectoryOutboxEntry))
        return int(count or 0)

    async def run_once(self) -> int:
        """Carry out one batch of due rows; how many rows were claimed."""
        claimed = await self._claim()
        by_user: dict[uuid.UUID, list[int]] = {}
        for entry_id, user_id in claimed:
            by_user.setdefault(user_id, []).append(entry_id)
        for user_id, entry_ids in by_user.items():
            await self.carry_out(user_id, entry_ids)
        return len(claimed)

    async def _claim(self) -> Sequence[tuple[int, uuid.UUID]]:
        due = (
            select(DirectoryOutboxEntry.id)
            .where(DirectoryOutboxEntry.next_attempt_at <= func.now())
            .order_by(DirectoryOutboxEntry.id)
            .limit(self._batch_size)
            .with_for_update(skip_locked=True)
        )
        async with self._sessions() as session, session.begin():
            result = await session.execute(
                update(DirectoryOutboxEntry)
                .where(DirectoryOutboxEntry.id.in_(due.scalar_subquery()))
                .values(
                    next_attempt_at=func.now() + timedelta(seconds=LEASE_SECONDS),
                    attempts=DirectoryOutboxEntry.attempts + 1,
                )
                .returning(DirectoryOutboxEntry.id, DirectoryOutboxEntry.user_id)
            )
            return [(row.id, row.user_id) for row in result]

    async def carry_out(self, user_id: uuid.UUID, entry_ids: list[int]) -> bool:
        """Make Cognito match the user's current row, then delete `entry_ids`.

        Whether Cognito now matches the row. On a failure the rows are retried later; a user
        Cognito does not know is dropped (retrying cannot help; the reconcile command reports
        it). With no rows (the reconcile command's repair of drift) only Cognito changes.
        """
        async with self._read_sessions() as session:
            row = (
                await session.execute(
                    select(User.email, User.role, User.is_active).where(User.id == user_id)
                )
            ).one_or_none()
        in_step = row is not None
        try:
            if row is not None:
                with self.cognito.deadline():
                    await match_user(self.cognito, row.email, row.role, row.is_active)
        except DirectoryMismatchError as error:
            logger.error("directory sync: %s", error.detail, extra={"user_id": str(user_id)})
            in_step = False
        except DomainError as error:
            if entry_ids:
                await self._retry_later(entry_ids, error.code)
            return False
        if entry_ids:
            async with self._sessions() as session, session.begin():
                await session.execute(
                    delete(DirectoryOutboxEntry).where(DirectoryOutboxEntry.id.in_(entry_ids))
                )
        return in_step

    async def _retry_later(self, entry_ids: list[int], reason: str) -> None:
        async with self._sessions() as session, session.begin():
            attempts = (
                await session.scalars(
                    select(DirectoryOutboxEntry.attempts).where(
                        DirectoryOutboxEntry.id.in_(entry_ids)
                    )
                )
            ).all()
            backoff = min(2.0 ** max(attempts, default=1), MAX_BACKOFF_SECONDS)
            delay = backoff * random.uniform(0.5, 1.0)  # noqa: S311 - jitter
            await session.execute(
                update(DirectoryOutboxEntry)
                .where(DirectoryOutboxEntry.id.in_(entry_ids))
                .values(
                    next_attempt_at=func.now() + timedelta(seconds=delay),
                    last_error=reason[:LAST_ERROR_LENGTH],
                )
            )
        logger.warning(
            "directory sync: will retry in %.1f s (%s)", delay, reason, extra={"rows": entry_ids}
        )
