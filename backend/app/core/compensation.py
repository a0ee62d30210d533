"""Undoing work done outside the database when the database transaction does not commit.

A service that changes another system (Cognito) as part of a request cannot enlist it in the
PostgreSQL transaction. It keeps the two in step like this:

1. It applies its changes, flushing the database work so that constraint violations surface
   inside the service, and records an undo action for every outside change as it makes it
   (`UndoLog`).
2. If a later step fails inside the service, it runs its undo log itself and re-raises; the
   exception then rolls the database transaction back.
3. Once every step has succeeded, it hands the undo log to the session with `undo_on_rollback`.
   The commit happens later, in the session dependency, after the service has returned; if that
   commit fails (or anything else raises before it), `undo_unless_committed` runs the actions.

Undo actions run newest first, shielded from cancellation (a client that disconnects must not
leave a half-undone change behind), and each failure is logged rather than raised, so one
failing action neither hides the original error nor stops the others.

The other way round, `after_commit` runs a callback once the transaction has committed (e.g. to
write the audit line of a change only once it has committed).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
import sqlalchemy.exc
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.errors import DomainError, describe_database_error

logger = logging.getLogger(__name__)

UndoAction = Callable[[], Awaitable[object]]

_SESSION_KEY = "undo_on_rollback"
_AFTER_COMMIT_KEY = "after_commit"


class UndoLog:
    """Undo actions for the outside changes made so far, run newest first."""

    def __init__(self) -> None:
        self._actions: list[tuple[str, UndoAction]] = []

    def add(self, description: str, action: UndoAction) -> None:
        self._actions.append((description, action))

    async def undo(self) -> None:
        actions, self._actions = self._actions, []
        with anyio.CancelScope(shield=True):
            for description, action in reversed(actions):
                try:
                    await action()
                except Exception as error:
                    # Left for an operator: the log line says exactly which change survived,
                    # and why (a dependency's failure is no bug to trace, and a database
                    # error's text may quote a row: its SQLSTATE and class only).
                    logger.error("undo failed: %s (%s)", description, _why(error))
                else:
                    logger.info("undone: %s", description)


def _why(error: Exception) -> str:
    if isinstance(error, DomainError):
        return f"{type(error).__name__}: {error.detail}"
    if isinstance(error, sqlalchemy.exc.SQLAlchemyError | OSError):
        return describe_database_error(error)
    return type(error).__name__


def undo_on_rollback(session: AsyncSession, log: UndoLog) -> None:
    """Run `log.undo()` if the session's current transaction ends without committing."""
    session.info.setdefault(_SESSION_KEY, []).append(log)


def after_commit(session: AsyncSession, callback: Callable[[], None]) -> None:
    """Call `callback` once the session's current transaction has committed (never otherwise)."""
    session.info.setdefault(_AFTER_COMMIT_KEY, []).append(callback)


def run_after_commit(session: AsyncSession) -> None:
    """For whoever commits: run the callbacks registered since the last commit."""
    for callback in session.info.pop(_AFTER_COMMIT_KEY, []):
        callback()


async def undo_registered(session: AsyncSession) -> None:
    logs: list[UndoLog] = session.info.pop(_SESSION_KEY, [])
    for log in reversed(logs):
        await log.undo()


@asynccontextmanager
async def undo_unless_committed(session: AsyncSession) -> AsyncIterator[None]:
    """Wrap a transaction (`async with undo_unless_committed(s), s.begin(): ...`).

    Runs the undo logs registered during the transaction if its body or its commit raises, and
    the after-commit callbacks not yet run once it has committed.
    """
    try:
        yield
    except BaseException:
        await undo_registered(session)
        raise
    else:
        run_after_commit(session)
    finally:
        session.info.pop(_SESSION_KEY, None)
        session.info.pop(_AFTER_COMMIT_KEY, None)
