"""A fixed-rate run as numbers: latency from each request's scheduled send time.

A closed-loop tool (wrk) sends a connection's next request only when the previous answer came
back, so while the server stalls it stops asking: the requests a real client would have sent
during the stall never happen, and the tail they would have had never shows (coordinated
omission). In a fixed-rate run request `i` is due at `start + i / rate` whatever the answers
do, and its latency runs from that time: a stall of one second at 1,000 req/s counts a
thousand late requests, not one.

The generator (`bench.openloop`) must itself keep the schedule, and says how well it did: how
late it got to each request (`lag`, its own CPU and timer, never the server's answers) and the
rate at which it sent. A run in which it fell behind is flagged (`held`), and the targets
treat its figures as inconclusive, never as a pass.

Nothing here opens a socket, so the tests can feed it made-up timelines.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Final

# The generator kept the schedule if it sent at least this share of the target rate...
MIN_RATE_SHARE: Final = 0.98
# ... and got to 99 % of the requests within this long of their due time.
LAG_LIMIT_MS: Final = 5.0

_RESULT_LINE = re.compile(r"^BENCH_FIXED_RATE (\{.*\})\s*$", re.MULTILINE)


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least `fraction` of all values at or below it."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


@dataclass(frozen=True, slots=True)
class Timeline:
    """What happened to each request of one run, in seconds on one monotonic clock.

    `dispatched[i]` is when the generator got to request `i` (due at `start + i / rate`);
    `sent[i]` when it was written (later if every connection was busy and a new one had to be
    opened); `answered[i]` when its whole response had arrived, or None: then `status[i]` is 0
    if it was still unanswered at `deadline`, or -1 if its connection failed.
    """

    start: float
    rate: float
    dispatched: Sequence[float]
    sent: Sequence[float | None]
    answered: Sequence[float | None]
    status: Sequence[int]
    deadline: float
    connections: int

    def due(self, index: int) -> float:
        return self.start + index / self.rate


@dataclass(frozen=True, slots=True)
class FixedRateResult:
    """One fixed-rate run; every latency in ms from the request's due time unless named."""

    target_rps: float
    seconds: float
    scheduled: int
    answered: int
    non2xx: int
    socket_errors: int  # failed connections and requests still unanswered at the deadline
    achieved_rps: float  # requests sent over the time it took to send them
    lag_p99_ms: float  # how late the generator got to a request (its own delay), p99
    lag_max_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    service_p99_ms: float  # from the actual send, as a closed-loop tool would count it
    connections: int

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket_errors

    @property
    def held(self) -> bool:
        """The generator kept the schedule: the rate and the lag within their bounds."""
        return (
            self.achieved_rps >= MIN_RATE_SHARE * self.target_rps
            and self.lag_p99_ms <= LAG_LIMIT_MS
        )

    @classmethod
    def combine(cls, rounds: Sequence[FixedRateResult]) -> FixedRateResult:
        """Several rounds as one: counts added up, each rate and latency the rounds' median."""

        def median(figure: Callable[[FixedRateResult], float]) -> float:
            return statistics.median(figure(result) for result in rounds)

        return cls(
            target_rps=median(lambda r: r.target_rps),
            seconds=sum(r.seconds for r in rounds),
            scheduled=sum(r.scheduled for r in rounds),
            answered=sum(r.answered for r in rounds),
            non2xx=sum(r.non2xx for r in rounds),
            socket_errors=sum(r.socket_errors for r in rounds),
            achieved_rps=median(lambda r: r.achieved_rps),
            lag_p99_ms=median(lambda r: r.lag_p99_ms),
            lag_max_ms=max(r.lag_max_ms for r in rounds),
            p50_ms=median(lambda r: r.p50_ms),
            p90_ms=median(lambda r: r.p90_ms),
            p99_ms=median(lambda r: r.p99_ms),
            max_ms=max(r.max_ms for r in rounds),
            service_p99_ms=median(lambda r: r.service_p99_ms),
            connections=max(r.connections for r in rounds),
        )


def summarize(timeline: Timeline) -> FixedRateResult:
    """The run's figures, every latency counted from its request's due time.

    A request unanswered at the deadline counts with the latency it had by then (it is the
    tail, not a request to leave out) and as an error; one whose connection failed counts
    as an error only, as wrk counts socket errors.
    """
    count = len(timeline.dispatched)
    if count == 0:
        raise ValueError("a fixed-rate run of no requests")
    latencies: list[float] = []
    service: list[float] = []
    non2xx = socket_errors = answered_count = 0
    for index in range(count):
        due = timeline.due(index)
        answered, sent, status = (
            timeline.answered[index],
            timeline.sent[index],
            timeline.status[index],
        )
        if answered is None:
            socket_errors += 1
            if status == 0:
                latencies.append(timeline.deadline - due)
            continue
        answered_count += 1
        non2xx += not 200 <= status <= 299
        latencies.append(answered - due)
        if sent is not None:
            service.append(answered - sent)
    lags = [timeline.dispatched[index] - timeline.due(index) for index in range(count)]
    # Sending took from the start until the last dispatch, plus the one interval it opens.
    span = max(count / timeline.rate, timeline.dispatched[-1] - timeline.start + 1 / timeline.rate)

    def ms(values: Sequence[float], fraction: float) -> float:
        return round(percentile(values, fraction) * 1000, 3)

    return FixedRateResult(
        target_rps=timeline.rate,
        seconds=count / timeline.rate,
        scheduled=count,
        answered=answered_count,
        non2xx=non2xx,
        socket_errors=socket_errors,
        achieved_rps=round(count / span, 1),
        lag_p99_ms=ms(lags, 0.99),
        lag_max_ms=round(max(lags) * 1000, 3),
        p50_ms=ms(latencies, 0.5),
        p90_ms=ms(latencies, 0.9),
        p99_ms=ms(latencies, 0.99),
        max_ms=round(max(latencies, default=0.0) * 1000, 3),
        service_p99_ms=ms(service, 0.99),
        connections=timeline.connections,
    )


class FixedRateOutputError(ValueError):
    """The generator's output holds no summary line."""


def format_result_line(result: FixedRateResult) -> str:
    return "BENCH_FIXED_RATE " + json.dumps(asdict(result))


def parse_result_line(text: str) -> FixedRateResult:
    """The summary the generator printed (the last one, if several)."""
    matches = _RESULT_LINE.findall(text)
    if not matches:
        raise FixedRateOutputError("no BENCH_FIXED_RATE line in the output:\n" + text[-2000:])
    return FixedRateResult(**json.loads(matches[-1]))
