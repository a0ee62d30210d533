"""`python -m app.worker`: the background work, in a process of its own.

The web processes serve requests and run no background loop: what a request promises for later
it records in the outbox (`app.services.outbox`) with its change. This process carries it out,
one handler per kind: the directory sync (Cognito made to match each user's row) and the
settling of create intents today; SLA timers and SQS publishing are handlers to add here. A
slow Cognito then never shares an event loop with requests, and the background work does not
multiply with web workers: one worker per host, several hosts at once are safe (the outbox
leases each key to one holder).

Each web worker still holds its own LISTEN connection: the user cache it serves from is its own
(`app.services.user_cache`), so it must hear every change itself.

Health: after each turn that reached the outbox, the worker touches its heartbeat file
(`WORKER_HEARTBEAT_FILE`); `python -m app.worker --check` exits 0 while that is at most
`STALE_AFTER_SECONDS` old. Docker's health check and the deploy script use it.
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

import anyio.to_thread

from app.core.config import Settings, load_settings
from app.core.db import (
    DatabaseConnector,
    create_engine,
    create_read_sessionmaker,
    create_sessionmaker,
)
from app.core.logging import configure_logging
from app.core.secrets import fetch_database_credentials
from app.services.cognito import CognitoUserPool
from app.services.directory_sync import DirectorySync
from app.services.outbox import OutboxWorker, settle_seconds_for
from app.services.user_creation import UserCreations

logger = logging.getLogger("app.worker")

# Several poll intervals, and longer than a turn bounded by the Cognito deadline.
STALE_AFTER_SECONDS: Final = 30.0


def heartbeat_file() -> Path:
    default = Path(tempfile.gettempdir()) / "one-system-worker.heartbeat"
    return Path(os.environ.get("WORKER_HEARTBEAT_FILE") or default)


def _beat(path: Path) -> None:
    path.touch()


@contextlib.asynccontextmanager
async def background_work(
    settings: Settings, *, cognito: CognitoUserPool | None = None, heartbeat: Path | None = None
) -> AsyncIterator[OutboxWorker]:
    """The outbox worker with every handler, running until the block ends.

    What the worker process runs; tests run it beside their app the same way.
    """
    credentials = await anyio.to_thread.run_sync(fetch_database_credentials, settings)
    reread = (
        functools.partial(fetch_database_credentials, settings)
        if settings.db_secret_id is not None
        else None
    )
    connector = DatabaseConnector(settings, credentials, reread)
    engine = create_engine(connector, settings, pool_size=2, max_overflow=0)
    cognito = cognito or CognitoUserPool.from_settings(settings)
    worker = OutboxWorker(
        create_sessionmaker(engine),
        create_read_sessionmaker(engine),
        settle_seconds=settle_seconds_for(
            settings.aws_connect_timeout_seconds, settings.aws_read_timeout_seconds
        ),
        heartbeat=functools.partial(_beat, heartbeat) if heartbeat is not None else None,
    )
    directory = DirectorySync(worker, cognito)
    UserCreations(worker, cognito, directory)
    worker.start()
    try:
        yield worker
    finally:
        await worker.aclose()
        await engine.dispose()


async def _serve(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with background_work(settings, heartbeat=heartbeat_file()):
        logger.info("worker started")
        await stop.wait()
    logger.info("worker stopped")


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
    asyncio.run(_serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
