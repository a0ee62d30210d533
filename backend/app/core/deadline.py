"""One time limit over a unit of work, and blocking calls that keep to it.

`within_deadline(seconds)` bounds every `run_blocking` call made inside it (in the same
context) to `seconds` in all. A blocking call still running when time runs out is abandoned,
not interrupted: a thread cannot be cancelled, so it ends on its client's own timeouts while
the caller gets `TimeoutError` at once.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import TypeVar

import anyio
import anyio.to_thread

T = TypeVar("T")

# When the current unit of work must be over (time.monotonic()), if it has a deadline.
_deadline: ContextVar[float | None] = ContextVar("deadline", default=None)


@contextlib.contextmanager
def within_deadline(seconds: float, *, replacing: bool = False) -> Iterator[None]:
    """Bound every `run_blocking` call made inside to `seconds` in all.

    An enclosing deadline still holds, unless `replacing`: for an undo, which must run even
    when the work it undoes ran out of time.
    """
    outer = None if replacing else _deadline.get()
    deadline = time.monotonic() + seconds
    token = _deadline.set(deadline if outer is None else min(outer, deadline))
    try:
        yield
    finally:
        _deadline.reset(token)


async def run_blocking(call: Callable[[], T]) -> T:
    """`call()` in a worker thread; `TimeoutError` if the current deadline passes first."""
    deadline = _deadline.get()
    if deadline is None:
        return await anyio.to_thread.run_sync(call)
    # Abandoned, not interrupted, when time runs out: the thread ends on its own timeouts.
    with anyio.fail_after(max(deadline - time.monotonic(), 0)):
        return await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
