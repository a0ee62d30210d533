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

Both are undone when the lifespan ends (`gc.unfreeze()` hands the objects back to the oldest
generation), so tests that start many apps in one process collect them as usual afterwards.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

# CPython's default is 700 allocations (net of deallocations) between young collections.
YOUNG_THRESHOLD: Final = 10_000


@contextmanager
def startup_heap_frozen(young_threshold: int = YOUNG_THRESHOLD) -> Iterator[None]:
    """Within: start-up's objects are never walked again, young collections are rarer."""
    previous = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(young_threshold, *previous[1:])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()
