"""Bench-only instruments inside the API worker: event-loop stalls, GC pauses, pool waits.

`bench.run` serves `bench.probe:app` (the production app from `create_app()`, plus these
instruments) unless `--no-probe` is given; nothing of this is imported by the app itself. The
run reads and resets the figures over `GET /__bench/probe` around each measured wrk run, so
every scenario gets its own:

- **loop stalls**: a ticker that sleeps `TICK_SECONDS` and records how late it woke up (from
  the first read of a scenario to its last: `Probe.start_ticking`). A late wake-up means the
  loop was busy with something else for that long: every request in flight waited as long.
  Stalls of `STALL_MS` or more are kept, with how much of each a GC pause overlapped and how
  much of it the loop's thread spent off the CPU (so the cause of a tail can be named: the
  collector, the OS running something else on the core, or our own code).
- **GC pauses**: `gc.callbacks` timings per generation.
- **(de)activation** of a user through this instance (`POST /__bench/users/{sub}/active`), for
  the coherence measurement between two instances.
- **the pool**: time spent waiting for a connection (the queue, or opening a new one:
  `app.core.compat.wrap_checkout`), the checkout ping, how long a connection is held, and time
  in SQL statements. Pool wait is what queueing behind other database requests costs; it is
  reported apart from the statements' own time.

Each instrument costs a few microseconds per event; the bench's ratios are read with them on
(`--no-probe` gives the bare figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import statistics
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Final

from fastapi import FastAPI, Request
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from app.core.compat import Checkout, wrap_checkout
from app.core.db import SESSIONMAKER
from app.main import create_app
from app.models.user import User

TICK_SECONDS: Final = 0.005
STALL_MS: Final = 5.0
# Bounded, so a long run cannot grow the worker: the newest events are what a scenario needs.
_MAX_EVENTS: Final = 200_000


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


class Probe:
    def __init__(self) -> None:
        self._gc_started = 0.0
        self._ticker: asyncio.Task[None] | None = None
        self.reset()

    def reset(self) -> None:
        self.gc_pauses: list[tuple[int, float, float]] = []  # (generation, start, end)
        self.stalls: list[tuple[float, float]] = []  # (start, end) of a late tick
        self.stall_off_cpu = 0.0
        self.pool_wait: list[float] = []
        self.ping: list[float] = []
        self.hold: list[float] = []
        self.sql: list[float] = []
        self.since = time.perf_counter()

    # -- GC --------------------------------------------------------------------------------

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        now = time.perf_counter()
        if phase == "start":
            self._gc_started = now
        elif len(self.gc_pauses) < _MAX_EVENTS:
            self.gc_pauses.append((info["generation"], self._gc_started, now))

    # -- loop ------------------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            before, cpu_before = time.perf_counter(), time.thread_time()
            await asyncio.sleep(TICK_SECONDS)
            after, cpu_after = time.perf_counter(), time.thread_time()
            late_ms = (after - before - TICK_SECONDS) * 1000
            if late_ms >= STALL_MS and len(self.stalls) < _MAX_EVENTS:
                self.stalls.append((before + TICK_SECONDS, after))
                # CPU time the loop's thread got meanwhile: a stall with little of it was not
                # this process computing but the OS running something else on its core (wrk,
                # PostgreSQL, other work on the box) or a blocking call.
                off_cpu = (after - before) - (cpu_after - cpu_before)
                self.stall_off_cpu += min(max(0.0, off_cpu), after - before - TICK_SECONDS)

    # -- pool ------------------------------------------------------------------------------

    def _watch_pool(self, engine: AsyncEngine) -> None:
        pool = engine.sync_engine.pool

        def timed(checkout: Checkout) -> Checkout:
            def timed_checkout() -> ConnectionPoolEntry:
                started = time.perf_counter()
                record = checkout()
                now = time.perf_counter()
                self.pool_wait.append(now - started)
                record.info["bench_got_at"] = now
                return record

            return timed_checkout

        wrap_checkout(pool, timed)

        # Registered after the app's own checkout ping, so this runs once the ping is done.
        def on_checkout(
            _dbapi: object, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
        ) -> None:
            now = time.perf_counter()
            got_at = record.info.pop("bench_got_at", None)
            if got_at is not None:
                self.ping.append(now - got_at)
            record.info["bench_checked_out_at"] = now

        def on_checkin(_dbapi: object, record: ConnectionPoolEntry) -> None:
            checked_out_at = record.info.pop("bench_checked_out_at", None)
            if checked_out_at is not None:
                self.hold.append(time.perf_counter() - checked_out_at)

        def before_execute(conn: Any, *_: object) -> None:
            conn.info["bench_sql_at"] = time.perf_counter()

        def after_execute(conn: Any, *_: object) -> None:
            started = conn.info.pop("bench_sql_at", None)
            if started is not None:
                self.sql.append(time.perf_counter() - started)

        event.listen(pool, "checkout", on_checkout)
        event.listen(pool, "checkin", on_checkin)
        event.listen(engine.sync_engine, "before_cursor_execute", before_execute)
        event.listen(engine.sync_engine, "after_cursor_execute", after_execute)

    # -- life ------------------------------------------------------------------------------

    def start_ticking(self) -> None:
        """Watch the loop for stalls, from now until `stop_ticking`.

        Only while the run reads this server's figures: each tick wakes an idle loop, and on
        this VM 200 wake-ups a second cost an idle server about 6 % of a core, taken from
        whichever server the run was measuring meanwhile.
        """
        if self._ticker is None:
            self._ticker = asyncio.create_task(self._tick(), name="bench-loop-ticker")

    async def stop_ticking(self) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    @asynccontextmanager
    async def running(self, engine: AsyncEngine) -> AsyncIterator[None]:
        self._watch_pool(engine)
        gc.callbacks.append(self._on_gc)
        try:
            yield
        finally:
            await self.stop_ticking()
            gc.callbacks.remove(self._on_gc)

    def snapshot(self) -> dict[str, Any]:
        """The figures since the last reset, in milliseconds."""
        elapsed = time.perf_counter() - self.since
        gc_in_stalls = 0.0
        for stall_start, stall_end in self.stalls:
            for _, gc_start, gc_end in self.gc_pauses:
                overlap = min(stall_end, gc_end) - max(stall_start, gc_start)
                if overlap > 0:
                    gc_in_stalls += overlap
        stall_ms = [(end - start) * 1000 for start, end in self.stalls]
        by_generation: dict[str, dict[str, float]] = {}
        for generation in (0, 1, 2):
            pauses = [
                (end - start) * 1000 for gen, start, end in self.gc_pauses if gen == generation
            ]
            by_generation[str(generation)] = {
                "count": len(pauses),
                "total_ms": round(sum(pauses), 2),
                "max_ms": round(max(pauses, default=0.0), 2),
            }

        def ms(values: list[float], fraction: float) -> float:
            return round(_percentile(values, fraction) * 1000, 3)

        return {
            "seconds": round(elapsed, 2),
            "stalls": len(stall_ms),
            "stall_total_ms": round(sum(stall_ms), 2),
            "stall_max_ms": round(max(stall_ms, default=0.0), 2),
            "gc_in_stalls_ms": round(gc_in_stalls * 1000, 2),
            "off_cpu_in_stalls_ms": round(self.stall_off_cpu * 1000, 2),
            "gc": by_generation,
            "checkouts": len(self.pool_wait),
            "pool_wait_p50_ms": ms(self.pool_wait, 0.5),
            "pool_wait_p99_ms": ms(self.pool_wait, 0.99),
            "pool_wait_max_ms": round(max(self.pool_wait, default=0.0) * 1000, 3),
            "ping_p50_ms": ms(self.ping, 0.5),
            "hold_p50_ms": ms(self.hold, 0.5),
            "hold_p99_ms": ms(self.hold, 0.99),
            "statements": len(self.sql),
            "sql_p50_ms": ms(self.sql, 0.5),
            "sql_p99_ms": ms(self.sql, 0.99),
            "sql_mean_ms": round(statistics.fmean(self.sql) * 1000, 3) if self.sql else 0.0,
        }


def instrumented(application: FastAPI, probe: Probe) -> FastAPI:
    """`application` with `probe` running in its lifespan and readable over HTTP."""
    lifespan = application.router.lifespan_context

    @asynccontextmanager
    async def probed_lifespan(app: FastAPI) -> AsyncIterator[Mapping[str, Any]]:
        async with lifespan(app) as state:
            assert state is not None
            async with probe.running(state["engine"]):
                yield state

    application.router.lifespan_context = probed_lifespan

    @application.get("/__bench/probe", include_in_schema=False)
    async def read_probe(reset: bool = False, done: bool = False) -> dict[str, Any]:
        """The figures so far; the loop is watched from the first read until one that is done."""
        figures = probe.snapshot()
        if reset:
            probe.reset()
        if done:
            await probe.stop_ticking()
        else:
            probe.start_ticking()
        return figures

    @application.post("/__bench/users/{sub}/active", include_in_schema=False)
    async def set_active(sub: str, active: bool, request: Request) -> dict[str, bool]:
        """(De)activate a user through this instance's own request sessions, without Cognito.

        The coherence measurement needs the write of a deactivation, committed as the users
        service commits it; what another instance hears of it is the same either way.
        """
        async with SESSIONMAKER.of(request)() as session, session.begin():
            user = (
                await session.execute(select(User).where(User.cognito_user_id == sub))
            ).scalar_one()
            user.is_active = active
        return {"active": active}

    return application


def __getattr__(name: str) -> FastAPI:
    # Built on first access, as `app.main.app` is: importing this module needs no environment.
    if name == "app":
        application = instrumented(create_app(), Probe())
        globals()["app"] = application
        return application
    raise AttributeError(name)
