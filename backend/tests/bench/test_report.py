"""The bench's arithmetic on canned wrk output: parsing, targets, table. No timing is asserted."""

from __future__ import annotations

import pytest

from bench.report import (
    BenchReport,
    Measurement,
    RssSummary,
    SqlTiming,
    WrkOutputError,
    WrkResult,
    evaluate_targets,
    format_table,
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
    "users/me": ((600, 1.6), (2400, 6.6)),
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
