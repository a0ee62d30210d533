"""The process's Prometheus metrics, and one view of them across an instance's processes.

Every metric is defined here, so the names an operator alarms on are in one file. Code that
counts something imports the metric and updates it; `app.api.metrics` serves them.

Several web workers (uvicorn `--workers`, gunicorn) are one instance to an operator. When
`PROMETHEUS_MULTIPROC_DIR` names a directory, prometheus_client keeps every process's values
in memory-mapped files there, and a scrape of any worker adds them up (its multiprocess mode,
https://prometheus.github.io/client_python/multiprocess/): requests served by either worker
are counted whichever one answers the scrape. The variable must be set before this module is
first imported (prometheus_client picks its value store at import), the directory must be
emptied before the workers start (`python -m app.serve` does both for the image), and a worker
that stops cleanly removes its live gauges (`forget_this_process`). Without the variable the
metrics are the process's own, as under `make run` with one worker.

Labels are bounded: a route is its template (`/api/v1/users/{user_id}`), never the path a
client sent, and a status is its class (`2xx`); an unmatched path counts as `unmatched`.

What every request updates (its count, its latency, requests in flight, the user cache's lookups)
is counted in the process's own memory and added to the shared values at most
`FLUSH_INTERVAL_SECONDS` later (`PerRequest.flush`, run by `flushing`), and at once by the
process that answers a scrape. In multiprocess mode each update of a shared value is a lock, a
`getpid` and a write into the memory-mapped file: done per request, that was about a tenth of a
cached `/users/me` (docs/performance.md), so a request pays a dictionary update instead.
"""

from __future__ import annotations

import asyncio
import bisect
import os
from collections.abc import Sequence
from typing import Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)

MULTIPROCESS_DIR_VARIABLE: Final = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED_ROUTE: Final = "unmatched"

# From a cached /users/me (under a millisecond) to the proxies' timeouts (30 s).
_LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

HTTP_REQUESTS: Final = Counter(
    "one_system_http_requests",
    "HTTP requests answered, by route template, method and status class",
    ["route", "method", "status"],
)
HTTP_REQUEST_DURATION: Final = Histogram(
    "one_system_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by route template and method",
    ["route", "method"],
    buckets=_LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT: Final = Gauge(
    "one_system_http_requests_in_flight",
    "Requests being served, as last sampled (at most a second ago)",
    multiprocess_mode="livesum",
)

DB_POOL_CHECKED_OUT: Final = Gauge(
    "one_system_db_pool_checked_out",
    "Database connections lent out by the pools now (pool: api, health)",
    ["pool"],
    multiprocess_mode="livesum",
)
DB_POOL_OVERFLOW: Final = Gauge(
    "one_system_db_pool_overflow",
    "Connections open beyond the pools' size now (negative: not all of the size is open)",
    ["pool"],
    multiprocess_mode="livesum",
)
# Counters rather than histograms wherever an alarm is meant to read them: the CloudWatch agent
# drops Prometheus histograms (it converts counters, gauges and summaries only).
DB_POOL_WAITS: Final = Counter(
    "one_system_db_pool_waits",
    "Checkouts that found every connection lent out and had to wait for one",
)
DB_POOL_WAIT_SECONDS: Final = Counter(
    "one_system_db_pool_wait_seconds",
    "Time checkouts spent waiting for a connection, in all",
)
DB_POOL_TIMEOUTS: Final = Counter(
    "one_system_db_pool_timeouts",
    "Checkouts that found no connection within the pool timeout (answered 503)",
)
DB_STATEMENT_TIMEOUTS: Final = Counter(
    "one_system_db_statement_timeouts",
    "Statements PostgreSQL canceled at the statement timeout (SQLSTATE 57014)",
)

COGNITO_CALLS: Final = Counter(
    "one_system_cognito_calls",
    "Cognito API calls by operation and outcome (ok, an error code, or timeout)",
    ["operation", "outcome"],
)
COGNITO_CALL_SECONDS: Final = Counter(
    "one_system_cognito_call_seconds",
    "Time spent in Cognito API calls by operation, botocore's own retries included (divided "
    "by the calls: the mean latency)",
    ["operation"],
)
JWKS_FETCHES: Final = Counter(
    "one_system_jwks_fetches",
    "Fetches of Cognito's signing keys (JWKS) by outcome (ok, failed)",
    ["outcome"],
)

USER_CACHE_LOOKUPS: Final = Counter(
    "one_system_user_cache_lookups",
    "Lookups of a request's user: hit, miss (read from the database), or bypassed (the "
    "cache cannot vouch for what it holds: notifications not proven delivered)",
    ["result"],
)
NOTIFICATIONS_DELIVERED: Final = Gauge(
    "one_system_notifications_delivered",
    "1 while every web worker has proof its change notifications arrive, else 0 (its caches "
    "are bypassed)",
    multiprocess_mode="livemin",
)

RELEASE: Final = Gauge(
    "one_system_release_info",
    "The release this instance runs (label release), always 1",
    ["release", "version"],
    multiprocess_mode="max",
)


def multiprocess_directory() -> str | None:
    return os.environ.get(MULTIPROCESS_DIR_VARIABLE) or None


def instance_registry() -> CollectorRegistry:
    """What a scrape shows: every process of the instance, or this process alone."""
    directory = multiprocess_directory()
    if directory is None:
        from prometheus_client import REGISTRY

        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return registry


def forget_this_process() -> None:
    """Drop this process's live gauges from the instance's view (a clean stop)."""
    if multiprocess_directory() is not None:
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


FLUSH_INTERVAL_SECONDS: Final = 1.0


class CountsBatch:
    """A labelled counter's increments, kept in memory until the next flush."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._pending: dict[tuple[str, ...], int] = {}

    def add(self, labels: tuple[str, ...]) -> None:
        self._pending[labels] = self._pending.get(labels, 0) + 1

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for labels, count in pending.items():
            self._counter.labels(*labels).inc(count)


class DurationsBatch:
    """A labelled histogram's observations, as bucket counts and a sum, until the next flush."""

    def __init__(self, histogram: Histogram, buckets: Sequence[float]) -> None:
        self._histogram = histogram
        self._bounds = (*buckets, float("inf"))
        # Per label tuple: [sum, count in bucket 0, count in bucket 1, ...].
        self._pending: dict[tuple[str, ...], list[float]] = {}

    def observe(self, labels: tuple[str, ...], seconds: float) -> None:
        pending = self._pending.get(labels)
        if pending is None:
            pending = self._pending[labels] = [0.0] * (len(self._bounds) + 1)
        pending[0] += seconds
        # The first bucket whose bound is at least `seconds`, as Histogram.observe picks it.
        pending[bisect.bisect_left(self._bounds, seconds) + 1] += 1

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for labels, (total, *counts) in pending.items():
            add_observations(self._histogram.labels(*labels), total, counts)


class RequestsBatch(DurationsBatch):
    """Requests by (route template, method, status class), their durations as bucket counts
    and a sum: on flush, the request counter (by every label) and the latency histogram (by all
    but the status class, the last), from one dictionary update a request."""

    def __init__(self, counter: Counter, histogram: Histogram, buckets: Sequence[float]) -> None:
        super().__init__(histogram, buckets)
        self._counter = counter

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for labels, (total, *counts) in pending.items():
            self._counter.labels(*labels).inc(sum(counts))
            add_observations(self._histogram.labels(*labels[:-1]), total, counts)


def add_observations(child: Histogram, total: float, counts: Sequence[float]) -> None:
    """Add observations to a histogram's child as `observe` would one by one: `counts[i]` in
    bucket i, their sum `total`.

    prometheus_client has no public call for this; it reaches the child's `_sum` and `_buckets`
    values (non-cumulative counts, one per bound, +Inf last), which
    tests/core/test_metrics.py checks against `observe`, so a change of them fails there.
    """
    child._sum.inc(total)
    for bucket, count in zip(child._buckets, counts, strict=True):
        if count:
            bucket.inc(count)


class PerRequest:
    """What requests update, in this process's memory; `flush` adds it to the shared values."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.requests = RequestsBatch(HTTP_REQUESTS, HTTP_REQUEST_DURATION, _LATENCY_BUCKETS)
        self.user_lookups = CountsBatch(USER_CACHE_LOOKUPS)

    def flush(self) -> None:
        HTTP_IN_FLIGHT.set(self.in_flight)
        self.requests.flush()
        self.user_lookups.flush()


PER_REQUEST: Final = PerRequest()


async def flushing(interval: float = FLUSH_INTERVAL_SECONDS) -> None:
    """Flush `PER_REQUEST` every `interval` seconds until cancelled, and once more then."""
    try:
        while True:
            await asyncio.sleep(interval)
            PER_REQUEST.flush()
    finally:
        PER_REQUEST.flush()
