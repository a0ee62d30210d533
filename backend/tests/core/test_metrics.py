"""The per-request batches: what a flush adds is what prometheus_client's own calls would have."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from app.core.metrics import CountsBatch, DurationsBatch, RequestsBatch

BUCKETS = (0.001, 0.01, 0.1)
# Below, on and between the bounds, and past the last one (+Inf).
DURATIONS = (0.0, 0.0005, 0.001, 0.0010001, 0.01, 0.05, 0.1, 0.5, 3.0)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def histogram_pair() -> tuple[CollectorRegistry, Histogram, CollectorRegistry, Histogram]:
    observed, batched = CollectorRegistry(), CollectorRegistry()
    make = lambda registry: Histogram(  # noqa: E731
        "latency", "t", ["route"], buckets=BUCKETS, registry=registry
    )
    return observed, make(observed), batched, make(batched)


def test_a_flushed_durations_batch_equals_observing_each_duration() -> None:
    """Fails loudly if prometheus_client changes the histogram child's values the batch adds to
    (`add_observations` reaches `_sum` and `_buckets`)."""
    observed_registry, observed, batched_registry, batched = histogram_pair()
    batch = DurationsBatch(batched, BUCKETS)
    for route in ("/a", "/b"):
        for seconds in DURATIONS:
            observed.labels(route).observe(seconds)
            batch.observe((route,), seconds)
    assert samples(batched_registry) != samples(observed_registry)  # nothing before the flush
    batch.flush()
    assert samples(batched_registry) == samples(observed_registry)
    batch.flush()  # a flush adds only what came since the last one
    assert samples(batched_registry) == samples(observed_registry)


def test_a_flushed_counts_batch_equals_incrementing_each_time() -> None:
    incremented_registry, batched_registry = CollectorRegistry(), CollectorRegistry()
    incremented = Counter("hits", "h", ["result"], registry=incremented_registry)
    batch = CountsBatch(Counter("hits", "h", ["result"], registry=batched_registry))
    for result in ("hit", "hit", "miss", "hit"):
        incremented.labels(result).inc()
        batch.add((result,))
    batch.flush()
    batch.flush()
    assert samples(batched_registry) == samples(incremented_registry)


def test_a_flushed_requests_batch_equals_counting_and_observing_each_request() -> None:
    observed_registry, observed, batched_registry, batched = histogram_pair()
    counted = Counter("requests", "r", ["route", "status"], registry=observed_registry)
    batch = RequestsBatch(
        Counter("requests", "r", ["route", "status"], registry=batched_registry), batched, BUCKETS
    )
    for route, status in (("/a", "2xx"), ("/a", "4xx"), ("/b", "2xx")):
        for seconds in DURATIONS:
            counted.labels(route, status).inc()
            observed.labels(route).observe(seconds)
            batch.observe((route, status), seconds)
    batch.flush()
    batch.flush()
    assert samples(batched_registry) == samples(observed_registry)
