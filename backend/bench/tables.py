"""The report as Markdown tables, JSON and a chart, written to the run's directory and printed."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.fixed_rate import FixedRateResult
from bench.report import (
    METRICS_AA_SCENARIO,
    METRICS_OFF_SCENARIO,
    METRICS_ON_SCENARIO,
    BenchReport,
    FixedRateRound,
    cpu_of,
    p99_of,
    rps_of,
)
from bench.targets import (
    TargetOutcome,
    attempt_outcomes,
    evaluate_targets,
    exit_status,
    format_targets,
    format_verdict,
)
from bench.wrk import WrkResult


def format_table(report: BenchReport) -> str:
    """A Markdown table of the measured runs, ratios against the baseline at the same level."""
    lines = [
        "| scenario | conns | req/s | p50 ms | p99 ms | errors | x baseline (rounds) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for scenario, level in _scenario_levels(report):
        result = report.find(scenario, level)
        lines.append(
            f"| {scenario} | {level} | {result.rps:,.0f} | {result.p50_ms:.2f} | "
            f"{result.p99_ms:.2f} | {result.errors} | "
            f"{_with_spread(report, scenario, level, rps_of)} |"
        )
    return "\n".join(lines)


# Loaded at once on one CPU (`Bench._metrics_rounds`): no baseline beside them, their own table.
_TOGETHER = (METRICS_ON_SCENARIO, METRICS_OFF_SCENARIO, METRICS_AA_SCENARIO)


def _scenario_levels(report: BenchReport) -> list[tuple[str, int]]:
    return list(
        dict.fromkeys(
            (m.scenario, m.connections) for m in report.measured() if m.scenario not in _TOGETHER
        )
    )


def format_together(report: BenchReport) -> str:
    """The metrics' servers, loaded at once: each one's CPU a request, and against the on one's
    in the same rounds."""
    lines = [
        "| scenario (at once) | conns | req/s | CPU µs a request (rounds) "
        "| x metrics on (median of rounds) |",
        "|---|---:|---:|---:|---:|",
    ]
    for scenario, level in dict.fromkeys(
        (m.scenario, m.connections) for m in report.measured() if m.scenario in _TOGETHER
    ):
        costs = [m.cpu_us_per_request or 0.0 for m in report.rounds(scenario, level)]
        ratio = report.together(scenario, METRICS_ON_SCENARIO, level, cpu_of)
        lines.append(
            f"| {scenario} | {level} | {report.find(scenario, level).rps:,.0f} | "
            f"{report.cpu_us_per_request(scenario, level):.1f} "
            f"({min(costs):.1f}-{max(costs):.1f}) | {ratio:.3f} |"
        )
    return "\n".join(lines)


def _with_spread(
    report: BenchReport, scenario: str, level: int, figure: Callable[[WrkResult], float]
) -> str:
    """The ratio, and the lowest and highest round's when there are several."""
    ratio = f"{report.ratio(scenario, level, figure):.2f}"
    rounds = report.ratios(scenario, level, figure)
    if len(rounds) == 1:
        return ratio
    return f"{ratio} ({min(rounds):.2f}-{max(rounds):.2f})"


def format_tails(report: BenchReport) -> str:
    """p99 of each scenario over its neighbouring baseline's p99 at each saturated level."""
    saturated = report.saturated_levels()
    lines = [
        "| scenario | "
        + " | ".join(f"p99 ms @{level} | x baseline p99 @{level} (rounds)" for level in saturated)
        + " |",
        "|---|" + "---:|---:|" * len(saturated),
    ]
    scenarios = dict.fromkeys(m.scenario for m in report.measured() if m.scenario not in _TOGETHER)
    for scenario in scenarios:
        cells = []
        for level in saturated:
            p99 = report.find(scenario, level).p99_ms
            cells.append(f"{p99:.2f} | {_with_spread(report, scenario, level, p99_of)}")
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _stall_shares(figures: dict[str, Any]) -> tuple[float, float, float]:
    """The loop's stall time (ms), and the shares of it a GC pause and the OS took."""
    total: float = figures["stall_total_ms"]
    if not total:
        return 0.0, 0.0, 0.0
    return total, figures["gc_in_stalls_ms"] / total, figures["off_cpu_in_stalls_ms"] / total


def format_fixed_rate_probes(report: BenchReport) -> str:
    """Each probed fixed-rate round: its tail beside what the API's loop went through.

    A slow round with a stall as long as its tail was slow inside the API's loop: a pause
    (the collector's share, the OS's share) or, on the CPU with the worker busy, a backlog of
    requests. One without was delayed outside it (the generator, the network stack, the box).
    """
    lines = [
        "| scenario | load | round | p99 ms | x baseline p99 | busy | stalls >= 5 ms | "
        "stall max ms | stall ms total | of it GC | of it off-CPU | pool wait max ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for load in report.loads():
        for scenario in dict.fromkeys(r.scenario for r in report.fixed_rate if r.load == load):
            for number, found in enumerate(report.fixed_rounds(scenario, load), start=1):
                f = found.probe
                if f is None:
                    continue
                total, gc_share, off_cpu = _stall_shares(f)
                p99 = found.result.p99_ms
                ratio = f"{p99 / found.baseline.p99_ms:.2f}" if found.baseline else "-"
                busy = "-" if found.busy is None else f"{found.busy:.0%}"
                pool = f"{f['pool_wait_max_ms']:.2f}" if f["checkouts"] else "-"
                lines.append(
                    f"| {scenario} | {load:.0%} | {number} | {p99:.2f} | {ratio} | {busy} | "
                    f"{f['stalls']} | {f['stall_max_ms']:.1f} | {total:.0f} | "
                    f"{gc_share:.0%} | {off_cpu:.0%} | {pool} |"
                )
    return "\n".join(lines)


def format_probes(report: BenchReport) -> str:
    """Inside the API worker, per measured run: loop stalls, GC, pool wait apart from SQL."""
    lines = [
        "| scenario | conns | p99 ms | stalls >= 5 ms | stall max ms | stall ms total | "
        "of it GC | of it off-CPU | full GCs (max ms) | pool wait p50 / p99 / max ms | "
        "ping p50 ms | SQL p50 ms | held p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for probe in report.probes:
        f = probe.figures
        p99 = report.find(probe.scenario, probe.connections).p99_ms
        total, gc_share, off_cpu = _stall_shares(f)
        full = f["gc"]["2"]
        pool = (
            f"{f['pool_wait_p50_ms']:.2f} / {f['pool_wait_p99_ms']:.2f} / "
            f"{f['pool_wait_max_ms']:.2f}"
            if f["checkouts"]
            else "-"
        )
        lines.append(
            f"| {probe.scenario} | {probe.connections} | {p99:.2f} | {f['stalls']} | "
            f"{f['stall_max_ms']:.1f} | {total:.0f} | {gc_share:.0%} | {off_cpu:.0%} | "
            f"{full['count']} ({full['max_ms']:.1f}) | {pool} | "
            f"{f['ping_p50_ms']:.2f} | {f['sql_p50_ms']:.2f} | {f['hold_p50_ms']:.2f} |"
        )
    return "\n".join(lines)


def format_scaling(report: BenchReport) -> str:
    """req/s (and p99) at 1 worker, 2 workers and 2 instances, each over its own baseline."""
    layouts = list(dict.fromkeys(run.layout for run in report.scaling))
    runs = {(run.scenario, run.connections, run.layout): run.result for run in report.scaling}
    header = "| scenario | conns | 1 worker req/s (p99 ms) | " + " | ".join(
        f"{layout} req/s (p99 ms) | x 1 worker" for layout in layouts
    )
    lines = [header + " |", "|---|---:|---:|" + "---:|---:|" * len(layouts)]
    for scenario, level in dict.fromkeys((run.scenario, run.connections) for run in report.scaling):
        one = report.find(scenario, level)
        cells = [f"{one.rps:,.0f} ({one.p99_ms:.1f})"]
        for layout in layouts:
            other = runs.get((scenario, level, layout))
            cells.append(
                f"{other.rps:,.0f} ({other.p99_ms:.1f}) | {other.rps / one.rps:.2f}"
                if other is not None
                else "- | -"
            )
        lines.append(f"| {scenario} | {level} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_fixed_rate(report: BenchReport) -> str:
    """Each fixed-rate scenario beside the baseline at the same rate, latencies from schedule."""
    lines = [
        "| scenario | load | req/s | sent req/s | lag p99 ms | p50 ms | p99 ms | "
        "baseline p99 ms | x baseline p99 (rounds) | busy / baseline busy | "
        "x baseline A/A p99 (same share) | p99 from send ms | rounds held |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for load in report.loads():
        for scenario in dict.fromkeys(r.scenario for r in report.fixed_rate if r.load == load):
            rounds = report.fixed_rounds(scenario, load)
            own = report.fixed_find(scenario, load)
            baseline = FixedRateResult.combine([r.baseline for r in rounds if r.baseline])
            ratios = report.fixed_ratios(scenario, load)
            spread = f" ({min(ratios):.2f}-{max(ratios):.2f})" if len(ratios) > 1 else ""
            held = 2 * len(rounds) - report.fixed_not_held(scenario, load)
            busy = report.fixed_busy(scenario, load)
            try:
                same_share = f"{report.fixed_ratio_same_share(scenario, load):.2f}"
            except KeyError:  # no control in a shortened run
                same_share = "-"
            lines.append(
                f"| {scenario} | {load:.0%} | {own.target_rps:,.0f} | {own.achieved_rps:,.0f} | "
                f"{own.lag_p99_ms:.2f} | {own.p50_ms:.2f} | {own.p99_ms:.2f} | "
                f"{baseline.p99_ms:.2f} | {report.fixed_ratio(scenario, load):.2f}{spread} | "
                f"{'-' if busy is None else f'{busy[0]:.0%} / {busy[1]:.0%}'} | {same_share} | "
                f"{own.service_p99_ms:.2f} | {held}/{2 * len(rounds)} |"
            )
    return "\n".join(lines)


def _fixed_round_json(r: FixedRateRound) -> dict[str, Any]:
    return {
        "scenario": r.scenario,
        "load": r.load,
        **asdict(r.result),
        "held": r.result.held,
        "baseline": None if r.baseline is None else asdict(r.baseline),
        "busy": r.busy,
        "baseline_busy": r.baseline_busy,
        "probe": r.probe,
    }


def format_set_aside(report: BenchReport) -> str:
    """The fixed-rate attempts measured again (`measure_again`), with what made them so."""
    lines = ["Fixed-rate attempts measured again:"]
    for rounds in report.fixed_rate_set_aside:
        outcomes = attempt_outcomes(rounds, rounds[0].load)
        told = "; ".join(f"{o.name}: {o.verdict} {o.detail}" for o in outcomes)
        lines.append(f"- {rounds[0].load:.0%} load, an attempt set aside: {told}")
    return "\n".join(lines)


def to_json(report: BenchReport, outcomes: Sequence[TargetOutcome]) -> dict[str, Any]:
    return {
        "machine": report.machine,
        "settings": report.settings,
        "measurements": [
            {
                "scenario": m.scenario,
                "connections": m.connections,
                "warmup": m.warmup,
                "rps": round(m.result.rps, 1),
                **asdict(m.result),
                "baseline": None if m.baseline is None else asdict(m.baseline),
                "server_cpu_s": m.server_cpu_s,
            }
            for m in report.measurements
        ],
        "rss": [{**asdict(rss), "growth_mib": rss.growth_mib} for rss in report.rss],
        "sql": [asdict(timing) for timing in report.sql],
        "notes": report.notes,
        "probes": [asdict(probe) for probe in report.probes],
        "coherence": asdict(report.coherence) if report.coherence is not None else None,
        "scaling": [
            {
                "scenario": r.scenario,
                "connections": r.connections,
                "layout": r.layout,
                "rps": round(r.result.rps, 1),
                **asdict(r.result),
            }
            for r in report.scaling
        ],
        "fixed_rate": [_fixed_round_json(r) for r in report.fixed_rate],
        "fixed_rate_set_aside": [
            [_fixed_round_json(r) for r in attempt] for attempt in report.fixed_rate_set_aside
        ],
        "targets": [asdict(outcome) for outcome in outcomes],
    }


def chart_bars(report: BenchReport) -> dict[int, list[tuple[str, WrkResult]]]:
    """Per level, each scenario's combined result: those measured at every level, as the
    chart's rows (the metrics' servers, loaded at once on one CPU and at saturated levels
    only, are left out as they are of the other tables' comparisons)."""
    levels = report.levels()
    scenarios = [
        scenario
        for scenario in dict.fromkeys(m.scenario for m in report.measured())
        if scenario not in _TOGETHER
    ]
    return {level: [(s, report.find(s, level)) for s in scenarios] for level in levels}


def write_chart(report: BenchReport, path: Path) -> None:
    """Throughput and p99 per scenario, one bar per concurrency level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = chart_bars(report)
    scenarios = [scenario for scenario, _ in next(iter(bars.values()))]
    height = 0.8 / len(bars)
    figure, (throughput, p99) = plt.subplots(1, 2, figsize=(13, 0.45 * len(scenarios) + 2))
    for index, (level, at_level) in enumerate(bars.items()):
        offsets = [row + index * height for row in range(len(scenarios))]
        results = [result for _, result in at_level]
        throughput.barh(offsets, [r.rps for r in results], height, label=f"{level} conns")
        p99.barh(offsets, [r.p99_ms for r in results], height, label=f"{level} conns")
    centre = [row + height * (len(bars) - 1) / 2 for row in range(len(scenarios))]
    for axis, title in ((throughput, "requests / s"), (p99, "p99 latency, ms")):
        axis.set_yticks(centre, scenarios)
        axis.invert_yaxis()
        axis.set_title(title)
        axis.grid(axis="x", alpha=0.3)
    p99.set_xscale("log")
    throughput.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def tables(report: BenchReport) -> str:
    sections = [format_table(report)]
    if report.saturated_levels():
        sections.append(format_tails(report))
    if any(m.scenario in _TOGETHER for m in report.measured()):
        sections.append(format_together(report))
    if report.fixed_rate:
        sections.append(format_fixed_rate(report))
    if report.fixed_rate_set_aside:
        sections.append(format_set_aside(report))
    if any(r.probe is not None for r in report.fixed_rate):
        sections.append(format_fixed_rate_probes(report))
    if report.probes:
        sections.append(format_probes(report))
    if report.scaling:
        sections.append(format_scaling(report))
    return "\n\n".join(sections)


def print_results(report: BenchReport, run_dir: Path) -> int:
    """Write the results, print tables and verdicts; the run's exit status."""
    try:
        outcomes = evaluate_targets(report)
    except KeyError as missing:
        # A shortened run (other --connections, --no-fixed-rate): the tables, and no pass.
        outcomes = [TargetOutcome.plain("every target measured", False, f"{missing}")]
    table = tables(report)
    (run_dir / "table.md").write_text(table + "\n")
    (run_dir / "results.json").write_text(json.dumps(to_json(report, outcomes), indent=2) + "\n")
    write_chart(report, run_dir / "chart.png")
    print(f"\n{table}\n")
    for timing in report.sql:
        print(f"SQL {timing.name}: p50 {timing.p50_ms:.2f} ms over {timing.samples} runs")
    print(f"AccessTokenVerifier.verify: {report.notes}")
    for index, rss in enumerate(report.rss):
        print(
            f"API worker {index}: peak RSS {rss.peak_mib:.1f} MiB; halves "
            f"{rss.first_half_peak_mib:.1f} -> {rss.second_half_peak_mib:.1f} MiB"
        )
    if report.coherence is not None:
        print(f"coherence (deactivated through A, refused by B): {report.coherence.summary()}")
    print(f"\n{format_targets(outcomes)}\n\n{format_verdict(outcomes)}\nresults in {run_dir}")
    return exit_status(outcomes)
