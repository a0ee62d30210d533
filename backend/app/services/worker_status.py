"""What `/metrics` reports of the background work: the outbox backlog and the worker's turns.

Both are read from the database, so any web process of any instance reports them, and every age
is measured on the database's clock alone (the hosts' clocks never enter a comparison).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql import ColumnElement

from app.core.db import ReadSessions, Sessionmaker
from app.core.tasks import BackgroundTask
from app.models.outbox import OutboxEntry
from app.models.worker import WORKER_ID_LENGTH, WorkerHeartbeat

logger = logging.getLogger(__name__)

# How often a turning worker writes its heartbeat row: well inside the 30 s a worker counts as
# stale after (`app.worker.STALE_AFTER_SECONDS`).
RECORD_INTERVAL_SECONDS: Final = 5.0
# Rows of workers gone for this long (a replaced container) are removed by the others.
FORGET_AFTER_SECONDS: Final = 86_400.0


@dataclass(frozen=True, slots=True)
class Backlog:
    kind: str
    pending: int
    oldest_age_seconds: float


@dataclass(frozen=True, slots=True)
class BackgroundWorkStatus:
    backlog: Sequence[Backlog]
    # Since the most recent turn of any worker; None when no worker has ever turned.
    last_turn_age_seconds: float | None


def _age(moment: ColumnElement[Any] | InstrumentedAttribute[Any]) -> ColumnElement[Any]:
    """Seconds from `moment` to now, on the database's clock."""
    return func.extract("epoch", func.now() - moment)


async def background_work_status(sessions: ReadSessions) -> BackgroundWorkStatus:
    """Entries pending per kind with the age of the oldest; the age of the last worker turn."""
    async with sessions() as session:
        rows = (
            await session.execute(
                select(
                    OutboxEntry.kind,
                    func.count(),
                    _age(func.min(OutboxEntry.created_at)),
                ).group_by(OutboxEntry.kind)
            )
        ).all()
        last_turn = await session.scalar(select(_age(func.max(WorkerHeartbeat.last_turn_at))))
    return BackgroundWorkStatus(
        backlog=[Backlog(kind, int(count), float(age)) for kind, count, age in rows],
        last_turn_age_seconds=None if last_turn is None else float(last_turn),
    )


def this_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"[:WORKER_ID_LENGTH]


class TurnRecorder:
    """Writes this worker's last turn to `worker_heartbeats`, at most every few seconds.

    `turned` is the outbox worker's heartbeat callback (called after each turn that reached the
    outbox); the row is written from a task of its own, so a slow write never delays a turn.
    """

    def __init__(
        self,
        sessions: Sessionmaker,
        worker_id: str | None = None,
        *,
        interval: float = RECORD_INTERVAL_SECONDS,
    ) -> None:
        self._sessions = sessions
        self.worker_id = worker_id or this_worker_id()
        self._interval = interval
        self._turned = False
        self._task = BackgroundTask(self._record_forever, "worker-turns")

    def turned(self) -> None:
        self._turned = True

    def start(self) -> None:
        self._task.start()

    async def aclose(self) -> None:
        await self._task.aclose()

    async def _record_forever(self) -> None:
        while True:
            if self._turned:
                self._turned = False
                try:
                    await self.record()
                except Exception as error:
                    logger.warning("worker heartbeat not recorded: %s", type(error).__name__)
            await asyncio.sleep(self._interval)

    async def record(self) -> None:
        statement = insert(WorkerHeartbeat).values(worker=self.worker_id)
        statement = statement.on_conflict_do_update(
            index_elements=[WorkerHeartbeat.worker], set_={"last_turn_at": func.now()}
        )
        async with self._sessions() as session, session.begin():
            await session.execute(statement)
            await session.execute(
                delete(WorkerHeartbeat).where(
                    _age(WorkerHeartbeat.last_turn_at) > FORGET_AFTER_SECONDS
                )
            )
