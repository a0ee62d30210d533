"""The cyclic garbage collector set up for a long-running event-loop server.

When start-up is done a worker holds well over 100k objects the collector tracks (modules,
classes, functions, FastAPI's routes and models, SQLAlchemy's mappers and compiled caches),
and all of them live as long as the process. A full collection walks every one of them while
the event loop stands still, so each one delays every request in flight by as long; and
full collections come round every few seconds under load, because objects of requests that
happen to be in flight at a young collection are promoted to the old generation. So:

- `gc.freeze()` at the end of start-up moves what start-up built into a permanent generation
  that collections never walk (after one `gc.collect()`, so garbage is freed, not kept);
- a higher first threshold means fewer young collections, so fewer objects of requests in
  flight are promoted and the old generations grow (and get collected) far less often.

Both are undone when the last lifespan that asked for them ends (`gc.unfreeze()` hands the
objects back to the oldest generation). Apps that overlap in one process (tests start several)
share the first one's freeze: a second app's shutdown must not thaw the first app's heap.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

# CPython's default is 700 allocations (net of deallocations) between young collections.
YOUNG_THRESHOLD: Final = 10_000


class _SharedFreeze:
    """One freeze for the process, held while any lifespan that asked for it runs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # lifespans of apps served from other threads
        self._holders = 0
        self._thresholds_before = gc.get_threshold()

    def acquire(self, young_threshold: int) -> None:
        with self._lock:
            if self._holders == 0:
                self._thresholds_before = gc.get_threshold()
                gc.collect()
                gc.freeze()
                gc.set_threshold(young_threshold, *self._thresholds_before[1:])
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0:
                gc.set_threshold(*self._thresholds_before)
                gc.unfreeze()


_FREEZE: Final = _SharedFreeze()


@contextmanager
def startup_heap_frozen(young_threshold: int = YOUNG_THRESHOLD) -> Iterator[None]:
    """Within: start-up's objects are never walked again, young collections are rarer."""
    _FREEZE.acquire(young_threshold)
    try:
        yield
    finally:
        _FREEZE.release()
