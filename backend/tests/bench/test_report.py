"""The bench's arithmetic on canned wrk output: parsing, targets, table. No timing is asserted."""

from __future__ import annotations

import dataclasses

import pytest

from bench.report import (
    CONTROL_SCENARIO,
    BenchReport,
    CoherenceFigures,
    Measurement,
    RssSummary,
    SqlTiming,
    WrkOutputError,
    WrkResult,
    evaluate_targets,
    format_table,
    format_tails,
    parse_wrk_output,
)

WRK_OUTPUT = """\
Running 4s test @ http://127.0.0.1:41234/api/v1/users/me
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    15.48ms    9.31ms 95.08ms   93.12%
    Req/Sec     0.98k   102.11     1.10k    80.00%
  3924 requests in 4.00s, 1.71MB read
  Non-2xx or 3xx responses: 2
Requests/sec:    981.00
Transfer/sec:    437.30KB
BENCH_RESULT {"requests": 3924, "duration_us": 4000000, "non2xx": 3, "connect_errors": 0, \
"read_errors": 1, "write_errors": 0, "timeout_errors": 2, "p50_us": 15480, "p90_us": 20000, \
"p99_us": 95080, "max_us": 99000, "mean_us": 15900.5}
"""


def test_parses_the_summary_line_of_the_lua_script() -> None:
    result = parse_wrk_output(WRK_OUTPUT)
    assert result.requests == 3924
    assert result.rps == pytest.approx(981.0)
    assert result.p50_ms == pytest.approx(15.48)
    assert result.p99_ms == pytest.approx(95.08)
    # Non-2xx as counted by the script's response() (3xx included), plus every socket error.
    assert result.non2xx == 3
    assert result.socket_errors == 3
    assert result.errors == 6


def test_output_without_a_summary_is_an_error() -> None:
    with pytest.raises(WrkOutputError):
        parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused\n")


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


# scenario -> (req/s, p50 ms) at 1 and at 16 connections
PASSING = {
    "baseline": ((1000, 1.0), (4000, 4.0)),
    "health/live": ((900, 1.1), (3900, 4.2)),
    "users/me": ((600, 1.6), (2400, 6.6)),
    "users/me cold": ((200, 4.0), (1100, 14.0)),
    "service-types": ((800, 1.2), (3400, 4.7)),
    "users first page": ((300, 3.0), (1000, 16.0)),
    "users last page": ((250, 4.0), (900, 18.0)),
    "provinces": ((600, 2.0), (2000, 8.0)),
}


def report_of(
    figures: dict[str, tuple[tuple[float, float], tuple[float, float]]],
    *,
    errors: int = 0,
    rss: RssSummary | None = None,
) -> BenchReport:
    measurements = [
        Measurement(name, level, result(rps, p50, errors if name == "users/me" else 0))
        for name, by_level in figures.items()
        for level, (rps, p50) in zip((1, 16), by_level, strict=True)
    ]
    return BenchReport(
        machine={},
        settings={},
        measurements=measurements,
        rss=[rss or RssSummary(peak_mib=110, first_half_peak_mib=108, second_half_peak_mib=109)],
        sql=[SqlTiming("naive DISTINCT", 150.0, 10), SqlTiming("loose index scan", 0.5, 200)],
    )


def failed(report: BenchReport) -> list[str]:
    return [outcome.name for outcome in evaluate_targets(report) if not outcome.passed]


def test_every_target_passes_on_good_figures() -> None:
    assert failed(report_of(PASSING)) == []


def test_throughput_is_judged_at_saturated_levels_only() -> None:
    figures = dict(PASSING)
    figures["users/me"] = ((100, 1.6), (2400, 6.6))  # slow alone, fine under load
    assert failed(report_of(figures)) == []
    figures["users/me"] = ((600, 1.6), (1900, 6.6))  # 0.475 x baseline at 16 connections
    assert failed(report_of(figures)) == ["users/me throughput >= 0.5 x baseline"]


def test_deep_pages_are_compared_with_the_first_page_at_one_connection() -> None:
    figures = dict(PASSING)
    figures["users last page"] = ((100, 4.6), (900, 18.0))  # 1.53 x the first page's p50
    assert failed(report_of(figures)) == ["users last page p50 <= 1.5 x users first page p50"]


def test_the_provinces_query_must_stay_under_a_millisecond() -> None:
    report = report_of(PASSING)
    report.sql[1] = SqlTiming("loose index scan", 1.2, 200)
    assert failed(report) == ["provinces SQL (loose index scan) <= 1 ms"]


def test_any_error_fails_and_rss_growth_beyond_the_tolerance_fails() -> None:
    assert failed(report_of(PASSING, errors=1)) == ["no non-2xx responses or socket errors"]
    grown = RssSummary(peak_mib=120, first_half_peak_mib=110, second_half_peak_mib=114.5)
    assert failed(report_of(PASSING, rss=grown)) == ["worker 0 RSS growth <= 4 MiB between halves"]
    too_big = RssSummary(peak_mib=151, first_half_peak_mib=150, second_half_peak_mib=150)
    assert failed(report_of(PASSING, rss=too_big)) == ["worker 0 RSS <= 150 MiB"]


def test_rss_halves_split_at_the_given_time() -> None:
    samples = [(0.0, 100 << 20), (1.0, 104 << 20), (2.0, 103 << 20), (3.0, 105 << 20)]
    summary = RssSummary.from_samples(samples, split_at=2.0, high_water_bytes=106 << 20)
    assert summary.first_half_peak_mib == 104
    assert summary.second_half_peak_mib == 105
    assert summary.growth_mib == 1
    assert summary.peak_mib == 106


def test_table_gives_ratios_against_the_baseline_at_the_same_level() -> None:
    table = format_table(report_of(PASSING))
    assert "| users/me | 16 | 2,400 | 6.60 | 19.80 | 0 | 0.60 |" in table
    assert "| baseline | 1 | 1,000 | 1.00 | 3.00 | 0 | 1.00 |" in table


def with_p99(report: BenchReport, scenario: str, connections: int, p99_ms: float) -> BenchReport:
    for index, measurement in enumerate(report.measurements):
        if measurement.scenario == scenario and measurement.connections == connections:
            changed = dataclasses.replace(measurement.result, p99_ms=p99_ms)
            report.measurements[index] = dataclasses.replace(measurement, result=changed)
    return report


def test_tails_are_judged_against_the_baseline_p99_at_the_same_level() -> None:
    # The baseline's p99 at 16 connections is 12 ms (3 x its 4 ms p50).
    assert failed(with_p99(report_of(PASSING), "health/live", 16, 18.0)) == []
    assert failed(with_p99(report_of(PASSING), "health/live", 16, 18.5)) == [
        "health/live p99 <= 1.5 x baseline p99"
    ]
    assert failed(with_p99(report_of(PASSING), "service-types", 16, 37.0)) == [
        "service-types p99 <= 3 x baseline p99"
    ]
    # A slow tail at one connection is service time, not a tail under load: not judged.
    assert failed(with_p99(report_of(PASSING), "users/me", 1, 500.0)) == []


def test_the_first_page_tail_is_judged_against_the_users_me_tail() -> None:
    # /users/me p99 at 16 connections: 19.8 ms.
    assert failed(with_p99(report_of(PASSING), "users first page", 16, 190.0)) == []
    assert failed(with_p99(report_of(PASSING), "users first page", 16, 205.0)) == [
        "users first page p99 <= 10 x users/me p99"
    ]


def test_the_cold_path_needs_a_quarter_of_the_baseline_throughput() -> None:
    figures = dict(PASSING)
    figures["users/me cold"] = ((200, 4.0), (990, 14.0))  # 0.2475 x 4000
    assert failed(report_of(figures)) == ["users/me cold throughput >= 0.25 x baseline"]


def test_coherence_fails_when_any_trial_was_not_refused_within_the_bound() -> None:
    report = report_of(PASSING)
    report.coherence = CoherenceFigures(delays_s=[0.001] * 99 + [0.002], refused=100)
    assert failed(report) == []
    assert "p50 1.00 ms, p99 2.00 ms, max 2.00 ms" in report.coherence.summary()
    report.coherence = CoherenceFigures(delays_s=[0.001] * 99 + [5.0], refused=99)
    assert failed(report) == ["another instance refuses a deactivated user within 5 s"]


def test_tail_table_gives_p99_ratios_at_saturated_levels_only() -> None:
    table = format_tails(report_of(PASSING))
    assert "| users/me | 19.80 | 1.65 |" in table
    assert "@1 " not in table


def paired(
    report: BenchReport, scenario: str, level: int, rounds: list[tuple[float, float]]
) -> None:
    """Replace `scenario` at `level` by rounds of (its req/s, its neighbouring baseline's)."""
    report.measurements = [
        m for m in report.measurements if (m.scenario, m.connections) != (scenario, level)
    ]
    for rps, baseline_rps in rounds:
        baseline = result(baseline_rps, 4.0)
        report.measurements.append(Measurement("baseline", level, baseline))
        report.measurements.append(
            Measurement(scenario, level, result(rps, 5.0), baseline=baseline)
        )


def test_each_round_is_compared_with_the_baseline_round_next_to_it() -> None:
    report = report_of(PASSING)
    # The machine slowed down by half between rounds: each round is 0.8 x its neighbour,
    # though against the baseline's figures taken all together it would look far worse.
    paired(report, "service-types", 16, [(3200, 4000), (1600, 2000), (1600, 2000)])
    assert report.ratios("service-types", 16, lambda r: r.rps) == pytest.approx([0.8] * 3)
    assert failed(report) == []


def test_the_median_round_decides_so_one_stalled_round_does_not() -> None:
    report = report_of(PASSING)
    paired(report, "service-types", 16, [(3200, 4000), (1000, 4000), (3000, 4000)])
    assert failed(report) == []
    assert "| service-types | 16 | 2,400 | 5.00 | 15.00 | 0 | 0.75 (0.25-0.80) |" in (
        format_table(report)
    )
    paired(report, "service-types", 16, [(3200, 4000), (1000, 4000), (2000, 4000)])
    assert failed(report) == ["service-types throughput >= 0.7 x baseline"]


def test_rounds_combine_into_summed_counts_and_median_latencies() -> None:
    rounds = [
        dataclasses.replace(result(1000, 1.0, errors=1), p99_ms=p99, max_ms=p99)
        for p99 in (3.0, 90.0, 4.0)
    ]
    combined = WrkResult.combine(rounds)
    assert combined.requests == 12000
    assert combined.rps == pytest.approx(1000)
    assert combined.errors == 3
    assert combined.p99_ms == 4.0
    assert combined.max_ms == 90.0


def with_level(report: BenchReport, level: int, scale_p99: dict[str, float]) -> BenchReport:
    """A copy of every measurement at 16 connections as `level`, p99s scaled per scenario."""
    for measurement in [m for m in report.measurements if m.connections == 16]:
        factor = scale_p99.get(measurement.scenario, 1.0)
        changed = dataclasses.replace(measurement.result, p99_ms=measurement.result.p99_ms * factor)
        report.measurements.append(
            dataclasses.replace(measurement, connections=level, result=changed)
        )
    return report


def test_a_tail_is_not_judged_where_the_baseline_cannot_measure_itself() -> None:
    figures = {**PASSING, CONTROL_SCENARIO: PASSING["baseline"]}
    # At 64 connections the box made the baseline's own p99 four times its neighbours', and
    # /health/live's twice: that level cannot tell whether /health/live stays within 1.5 x.
    report = with_level(report_of(figures), 64, {CONTROL_SCENARIO: 4.0, "health/live": 2.0})
    outcomes = {outcome.name: outcome for outcome in evaluate_targets(report)}
    health = outcomes["health/live p99 <= 1.5 x baseline p99"]
    assert health.passed
    assert "at 16 connections" in health.detail
    assert "not judged at 64 (the baseline against itself: 4.00)" in health.detail
    # The same level is judged where the control stays within the limit.
    report = with_level(report_of(figures), 64, {CONTROL_SCENARIO: 1.2, "health/live": 2.0})
    assert failed(report) == ["health/live p99 <= 1.5 x baseline p99"]


def test_a_tail_fails_when_the_box_resolved_no_level() -> None:
    figures = {**PASSING, CONTROL_SCENARIO: PASSING["baseline"]}
    report = report_of(figures)
    for index, measurement in enumerate(report.measurements):
        if measurement.scenario == CONTROL_SCENARIO:
            noisy = dataclasses.replace(measurement.result, p99_ms=measurement.result.p99_ms * 0.5)
            report.measurements[index] = dataclasses.replace(measurement, result=noisy)
    outcomes = {outcome.name: outcome for outcome in evaluate_targets(report)}
    assert not outcomes["health/live p99 <= 1.5 x baseline p99"].passed
    assert outcomes["health/live p99 <= 1.5 x baseline p99"].detail.startswith(
        "the box resolved no level"
    )
    # A 3 x limit tolerates the same control (0.5 is within 1/3 .. 3).
    assert outcomes["users/me p99 <= 3 x baseline p99"].passed
