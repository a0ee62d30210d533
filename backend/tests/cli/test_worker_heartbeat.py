"""The worker process watches its own heartbeat: Docker outside Swarm never acts on health."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from app.worker import heartbeat_age, watch_heartbeat


async def test_a_stale_heartbeat_ends_the_watch(tmp_path: Path) -> None:
    beat = tmp_path / "heartbeat"
    beat.touch()
    os.utime(beat, (time.time() - 3600, time.time() - 3600))
    await asyncio.wait_for(watch_heartbeat(beat, stale_after=0.2), timeout=10)


async def test_a_beating_worker_is_left_alone(tmp_path: Path) -> None:
    beat = tmp_path / "heartbeat"

    async def beating() -> None:
        while True:
            beat.touch()
            await asyncio.sleep(0.05)

    beater = asyncio.create_task(beating())
    try:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(watch_heartbeat(beat, stale_after=1.0), timeout=2.5)
    finally:
        beater.cancel()


def test_before_the_first_beat_the_start_counts(tmp_path: Path) -> None:
    """A heartbeat left by the previous process does not make a fresh one stale at once."""
    beat = tmp_path / "heartbeat"
    started = time.time()
    assert heartbeat_age(beat, started) < 5
    beat.touch()
    os.utime(beat, (started - 3600, started - 3600))
    assert heartbeat_age(beat, started) < 5
