"""Made-up bench reports for the report and target tests: every target passes as they stand."""

from __future__ import annotations

from bench.fixed_rate import FixedRateResult
from bench.report import (
    CONTROL_SCENARIO,
    METRICS_AA_SCENARIO,
    METRICS_OFF_SCENARIO,
    METRICS_ON_SCENARIO,
    SATURATED_CONNECTIONS,
    BenchReport,
    FixedRateRound,
    Measurement,
    RssSummary,
    SqlTiming,
)
from bench.targets import FIXED_RATE_SCENARIOS, evaluate_targets
from bench.wrk import WrkResult


def result(rps: float, p50_ms: float, errors: int = 0) -> WrkResult:
    return WrkResult(
        requests=int(rps * 4),
        duration_s=4.0,
        non2xx=errors,
        socket_errors=0,
        p50_ms=p50_ms,
        p90_ms=p50_ms * 1.5,
        p99_ms=p50_ms * 3,
        max_ms=p50_ms * 5,
        mean_ms=p50_ms,
    )


METRICS_SCENARIOS = (METRICS_ON_SCENARIO, METRICS_OFF_SCENARIO, METRICS_AA_SCENARIO)

# scenario -> (req/s, p50 ms) at 1 and at 16 connections
PASSING = {
    "baseline": ((1000, 1.0), (4000, 4.0)),
    "health/live": ((900, 1.1), (3900, 4.2)),
    "users/me": ((850, 1.2), (3600, 4.8)),
    "users/me metrics on": ((850, 1.2), (3600, 4.8)),
    "users/me metrics off": ((850, 1.2), (3600, 4.8)),
    "users/me metrics on A/A": ((850, 1.2), (3600, 4.8)),
    "users/me cold": ((450, 2.2), (1900, 9.0)),
    "service-types": ((800, 1.2), (3400, 4.7)),
    "users first page": ((300, 3.0), (1000, 16.0)),
    "users last page": ((250, 4.0), (900, 18.0)),
    "users middle page": ((250, 4.0), (900, 18.0)),
    "users q": ((220, 4.5), (800, 20.0)),
    "provinces": ((600, 2.0), (2000, 8.0)),
}


# The server's CPU a request in every round, unless a test sets a scenario's own.
CPU_US_PER_REQUEST = 150.0


def measured(
    name: str, level: int, rps: float, p50: float, errors: int, cpu_us: float
) -> Measurement:
    own = result(rps, p50, errors)
    return Measurement(name, level, own, server_cpu_s=own.requests * cpu_us / 1e6)


def report_of(
    figures: dict[str, tuple[tuple[float, float], tuple[float, float]]],
    *,
    errors: int = 0,
    rss: RssSummary | None = None,
    cpu_us: dict[str, float] | None = None,
) -> BenchReport:
    costs = cpu_us or {}
    measurements = [
        measured(
            name,
            level,
            rps,
            p50,
            errors if name == "users/me" else 0,
            costs.get(name, CPU_US_PER_REQUEST),
        )
        for name, by_level in figures.items()
        for level, (rps, p50) in zip((1, 16), by_level, strict=True)
        # As a run measures them: the metrics' servers at saturated levels only.
        if level >= SATURATED_CONNECTIONS or name not in METRICS_SCENARIOS
    ]
    return BenchReport(
        machine={},
        settings={},
        measurements=measurements,
        rss=[rss or RssSummary(peak_mib=110, first_half_peak_mib=108, second_half_peak_mib=109)],
        sql=[SqlTiming("naive DISTINCT", 150.0, 10), SqlTiming("loose index scan", 0.5, 200)],
        fixed_rate=[
            FixedRateRound(scenario, load, at_rate(1000 * load, 3.0), at_rate(1000 * load, 3.0))
            for load in (0.5, 0.8)
            for scenario in (CONTROL_SCENARIO, *FIXED_RATE_SCENARIOS)
        ],
    )


def at_rate(rate: float, p99_ms: float, *, lag_p99_ms: float = 0.5) -> FixedRateResult:
    """A fixed-rate round that kept its schedule (unless `lag_p99_ms` says otherwise)."""
    return FixedRateResult(
        target_rps=rate,
        seconds=3.0,
        scheduled=int(rate * 3),
        answered=int(rate * 3),
        non2xx=0,
        socket_errors=0,
        achieved_rps=rate,
        lag_p99_ms=lag_p99_ms,
        lag_max_ms=lag_p99_ms * 2,
        p50_ms=p99_ms / 4,
        p90_ms=p99_ms / 2,
        p99_ms=p99_ms,
        max_ms=p99_ms * 2,
        service_p99_ms=p99_ms,
        connections=32,
    )


def failed(report: BenchReport) -> list[str]:
    return [outcome.name for outcome in evaluate_targets(report) if not outcome.passed]
