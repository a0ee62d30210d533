"""The bench's arithmetic on canned wrk output: parsing, rounds, the closed-loop targets, tables.

No timing is asserted. `test_targets.py` holds the verdicts and the fixed-rate targets.
"""

from __future__ import annotations

import dataclasses

import pytest

from bench.report import BenchReport, CoherenceFigures, Measurement, RssSummary, SqlTiming
from bench.tables import chart_bars, format_table, format_tails, format_together
from bench.wrk import WrkOutputError, WrkResult, parse_wrk_output
from tests.bench.reports import PASSING, failed, report_of, result

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


def test_every_target_passes_on_good_figures() -> None:
    assert failed(report_of(PASSING)) == []


def test_throughput_is_judged_at_saturated_levels_only() -> None:
    figures = dict(PASSING)
    figures["users/me"] = ((100, 1.2), (3600, 4.8))  # slow alone, fine under load
    assert failed(report_of(figures)) == []
    figures["users/me"] = ((850, 1.2), (3100, 4.8))  # 0.775 x baseline at 16 connections
    assert failed(report_of(figures)) == ["users/me throughput >= 0.8 x baseline"]


def test_deep_pages_are_compared_with_the_first_page_at_one_connection() -> None:
    figures = dict(PASSING)
    figures["users last page"] = ((100, 4.6), (900, 18.0))  # 1.53 x the first page's p50
    assert failed(report_of(figures)) == ["users last page p50 <= 1.5 x users first page p50"]


def test_the_middle_page_and_a_search_are_held_to_twice_the_first_page() -> None:
    # The 100k users: OFFSET's middle page and a `q` search at about 5 ms of SQL each,
    # against 0.27 ms for the first page.
    figures = dict(PASSING)
    figures["users middle page"] = ((100, 6.1), (900, 18.0))  # 2.03 x the first page's p50
    figures["users q"] = ((100, 5.9), (900, 18.0))
    assert failed(report_of(figures)) == ["users middle page p50 <= 2 x users first page p50"]


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
    assert "| users/me | 16 | 3,600 | 4.80 | 14.40 | 0 | 0.90 |" in table
    assert "| baseline | 1 | 1,000 | 1.00 | 3.00 | 0 | 1.00 |" in table


def test_the_metrics_servers_have_a_table_of_their_own_without_a_baseline() -> None:
    # Loaded at once on one CPU, each serves a third of what it would alone: no ratio to the
    # baseline's req/s means anything, their CPU a request against each other's does.
    report = report_of(PASSING, cpu_us={"users/me metrics off": 145.5})
    assert "metrics" not in format_table(report) + format_tails(report)
    together = format_together(report)
    assert "| users/me metrics on | 16 | 3,600 | 150.0 (150.0-150.0) | 1.000 |" in together
    assert "| users/me metrics off | 16 | 3,600 | 145.5 (145.5-145.5) | 0.970 |" in together


def test_the_chart_leaves_the_metrics_servers_out_as_the_tables_do() -> None:
    # They run at saturated levels only, so a chart row of theirs had no bar at one connection.
    bars = chart_bars(report_of(PASSING))
    assert list(bars) == [1, 16]
    for at_level in bars.values():
        names = [scenario for scenario, _ in at_level]
        assert names == [name for name in PASSING if "metrics" not in name]
    assert dict(bars[16])["users/me"].rps == 3600


def with_p99(report: BenchReport, scenario: str, connections: int, p99_ms: float) -> BenchReport:
    for index, measurement in enumerate(report.measurements):
        if measurement.scenario == scenario and measurement.connections == connections:
            changed = dataclasses.replace(measurement.result, p99_ms=p99_ms)
            report.measurements[index] = dataclasses.replace(measurement, result=changed)
    return report


def test_the_cold_path_needs_two_fifths_of_the_baseline_throughput() -> None:
    figures = dict(PASSING)
    figures["users/me cold"] = ((450, 2.2), (1590, 9.0))  # 0.3975 x 4000
    assert failed(report_of(figures)) == ["users/me cold throughput >= 0.4 x baseline"]


def test_coherence_fails_when_any_trial_was_not_refused_within_the_bound() -> None:
    report = report_of(PASSING)
    report.coherence = CoherenceFigures(delays_s=[0.001] * 99 + [0.002], refused=100)
    assert failed(report) == []
    assert "p50 1.00 ms, p99 2.00 ms, max 2.00 ms" in report.coherence.summary()
    report.coherence = CoherenceFigures(delays_s=[0.001] * 99 + [5.0], refused=99)
    assert failed(report) == ["another instance refuses a deactivated user within 5 s"]


def test_tail_table_gives_p99_ratios_at_saturated_levels_only() -> None:
    table = format_tails(report_of(PASSING))
    assert "| users/me | 14.40 | 1.20 |" in table
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
    paired(report, "service-types", 16, [(3400, 4000), (1000, 4000), (3300, 4000)])
    assert failed(report) == []
    assert "| service-types | 16 | 2,567 | 5.00 | 15.00 | 0 | 0.82 (0.25-0.85) |" in (
        format_table(report)
    )
    paired(report, "service-types", 16, [(3400, 4000), (1000, 4000), (2000, 4000)])
    assert failed(report) == ["service-types throughput >= 0.8 x baseline"]


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
