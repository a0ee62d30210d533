"""`python -m app.worker`: the background work, in a process of its own.

The web processes serve requests and run no background loop: what a request promises for later
it records in the outbox (`app.services.outbox`) with its change. This process carries it out,
one handler per kind (`app.services.outbox_handlers`): the directory sync (Cognito made to
match each user's row) and the settling of create intents today; SLA timers and SQS publishing
are handlers to add there. A
slow Cognito then never shares an event loop with requests, and the background work does not
multiply with web workers: one worker per host, several hosts at once are safe (the outbox
leases each key to one holder).

Each web worker still holds its own LISTEN connection: the user cache it serves from is its own
(`app.services.user_cache`), so it must hear every change itself.

Health: after each turn that reached the outbox, the worker touches its heartbeat file
(`WORKER_HEARTBEAT_FILE`); `python -m app.worker --check` exits 0 while that is at most
`STALE_AFTER_SECONDS` old. Docker's health check and the deploy script use it. Docker outside
Swarm only reports a health status and never acts on it, so the worker watches its own heartbeat
too: once it is `EXIT_AFTER_SECONDS` old, the process exits 1 and its restart policy starts a
fresh one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Final

from app.core.config import Settings, load_settings
from app.core.db import open_database
from app.core.logging import configure_logging
from app.services.cognito import CognitoUserPool
from app.services.outbox import OutboxWorker
from app.services.outbox_handlers import outbox_handlers
from app.services.worker_status import TurnRecorder

logger = logging.getLogger("app.worker")

# Several poll intervals, and longer than a turn bounded by the Cognito deadline.
STALE_AFTER_SECONDS: Final = 30.0
# How long stale before the process gives up on itself: well past a database outage or a run of
# faults the worker rides out, so that only a hung loop ends it.
EXIT_AFTER_SECONDS: Final = 120.0


def heartbeat_file() -> Path:
    default = Path(tempfile.gettempdir()) / "one-system-worker.heartbeat"
    return Path(os.environ.get("WORKER_HEARTBEAT_FILE") or default)


def _beat(path: Path | None, turns: TurnRecorder) -> None:
    """After each turn that reached the outbox: the file `--check` reads, the row of `/metrics`."""
    if path is not None:
        path.touch()
    turns.turned()


@contextlib.asynccontextmanager
async def background_work(
    settings: Settings, *, cognito: CognitoUserPool | None = None, heartbeat: Path | None = None
) -> AsyncIterator[OutboxWorker]:
    """The outbox worker with every handler (`outbox_handlers`, on `cognito` when given),
    running until the block ends.

    What the worker process runs; tests run it beside their app the same way.
    """
    database = await open_database(settings, pool_size=2, max_overflow=0, name="worker")
    cognito = cognito or CognitoUserPool.from_settings(settings)
    turns = TurnRecorder(database.sessions)
    worker = OutboxWorker(
        database.sessions,
        outbox_handlers(settings, database.read_sessions, cognito),
        heartbeat=functools.partial(_beat, heartbeat, turns),
    )
    turns.start()
    worker.start()
    try:
        yield worker
    finally:
        await worker.aclose()
        await turns.aclose()
        await database.dispose()


def heartbeat_age(path: Path, started: float) -> float:
    """Seconds since the last beat, or since ``started`` before the first one."""
    try:
        last = max(path.stat().st_mtime, started)
    except FileNotFoundError:
        last = started
    return time.time() - last


async def watch_heartbeat(path: Path, *, stale_after: float = EXIT_AFTER_SECONDS) -> None:
    """Return once the heartbeat is older than ``stale_after``: the worker stopped turning."""
    started = time.time()
    # The heartbeat is a file another task touches, not an event of this loop.
    while (age := heartbeat_age(path, started)) <= stale_after:  # noqa: ASYNC110
        await asyncio.sleep(max(stale_after - age, 0.0) + 0.01)


async def _serve(settings: Settings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    path = heartbeat_file()
    async with background_work(settings, heartbeat=path):
        logger.info("worker started")
        stopped = asyncio.create_task(stop.wait())
        stale = asyncio.create_task(watch_heartbeat(path))
        await asyncio.wait({stopped, stale}, return_when=asyncio.FIRST_COMPLETED)
        if stale.done():
            # A turn is hung (the cleanup would wait on it too): exit now, the restart policy
            # brings a fresh process; the outbox leases of this one expire on their own.
            logger.error("worker heartbeat is stale; exiting so that it is restarted")
            os._exit(1)
        stale.cancel()
    logger.info("worker stopped")
    return 0


def check(path: Path) -> int:
    """0 when the worker's last turn that reached the outbox is recent; 1 (and why) if not."""
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        print(f"worker: no heartbeat yet ({path})", file=sys.stderr)
        return 1
    if age > STALE_AFTER_SECONDS:
        print(f"worker: last heartbeat {age:.0f} s ago", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.worker", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="exit 0 if the running worker is healthy"
    )
    arguments = parser.parse_args(argv)
    if arguments.check:
        return check(heartbeat_file())
    settings = load_settings()
    configure_logging(settings.log_level)
    return asyncio.run(_serve(settings))


if __name__ == "__main__":
    sys.exit(main())
