"""The bench's probe watches an API server's loop only while the run reads its figures."""

from __future__ import annotations

import asyncio

from bench.probe import Probe


def tickers() -> list[asyncio.Task[object]]:
    return [task for task in asyncio.all_tasks() if task.get_name() == "bench-loop-ticker"]


async def test_the_loop_is_watched_only_from_a_scenarios_first_read_to_its_last() -> None:
    # A server the run never reads (the metrics servers) never wakes its idle loop for it.
    probe = Probe()
    await asyncio.sleep(0)
    assert tickers() == []

    probe.start_ticking()
    probe.start_ticking()  # every read but the last keeps the one ticker
    assert len(tickers()) == 1

    await probe.stop_ticking()
    assert tickers() == []
