"""One load at a time per key: what a cache's concurrent misses on one key wait on.

Under load, a cached answer that expires or is invalidated is missed by every request that
arrives while it is being recomputed; each would run the same SQL, queue for the same pool and
hold the event loop as long, and the answer they all compute is the same. `Flights` queues
them on one lock per key instead: the first computes, the others wait and then find the fresh
entry. A lock rather than a shared future: each caller computes on its own session, so if the
first one fails or is cancelled (a client that hung up, its deadline) the next in line computes
for itself instead of inheriting another request's error. Locks exist only while a key has
callers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager


class _Flight:
    """The lock queueing the callers of one key, and how many hold or await it."""

    __slots__ = ("callers", "lock")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.callers = 0


class Flights:
    """One lock per key that has callers."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight] = {}

    @asynccontextmanager
    async def one_at_a_time(self, key: Hashable) -> AsyncIterator[None]:
        """Within: no other caller of `key` is; check the cache again first thing inside."""
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = _Flight()
        flight.callers += 1
        try:
            async with flight.lock:
                yield
        finally:
            flight.callers -= 1
            if flight.callers == 0:
                del self._flights[key]
