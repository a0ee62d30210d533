"""Turning wrk runs into numbers, targets, a table, JSON and a chart.

Nothing here starts a process or opens a socket, so the tests can feed it canned wrk output.

Where each target is read (written down so nobody has to guess):
- every scenario is measured in rounds, each right after a round of the baseline at the same
  level (`Measurement.baseline`). A figure is the median over the rounds; a ratio is the
  scenario's median over the median of the baseline rounds run beside it. On this kind of
  machine the bare baseline's own p99 at 64 connections jumps several-fold from one round
  to the next (the README shows it); the neighbours cancel drift, and medians keep a minority
  of disturbed rounds, on either side, from deciding a target. The tables show the range of
  the per-round ratios beside each median;
- throughput ratios at every *saturated* level (concurrency >= 16), against the baseline at
  the same level: one worker busy all the time, so req/s is the cost of a request;
- p50 comparisons at concurrency 1, where the latency is the service time itself; under
  saturation p50 is mostly time spent queueing behind other requests and says little;
- errors over every run, warm-up rounds included;
- RSS of the API worker over the whole run.
"""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

MIB: Final = 1024 * 1024
RSS_LIMIT_MIB: Final = 150.0
# "No growth": the second half's peak RSS may exceed the first half's by at most this much.
# Each half serves tens of thousands of requests, so a leak of even 100 bytes a request
# would show as several MiB; allocator noise and late one-off allocations stay below 4 MiB.
RSS_GROWTH_TOLERANCE_MIB: Final = 4.0
SATURATED_CONNECTIONS: Final = 16

_RESULT_LINE = re.compile(r"^BENCH_RESULT (\{.*\})\s*$", re.MULTILINE)


class WrkOutputError(ValueError):
    """wrk's output holds no summary line from our script."""


@dataclass(frozen=True, slots=True)
class WrkResult:
    requests: int
    duration_s: float
    non2xx: int
    socket_errors: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float

    @property
    def rps(self) -> float:
        return self.requests / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def errors(self) -> int:
        return self.non2xx + self.socket_errors

    @classmethod
    def combine(cls, results: Sequence[WrkResult]) -> WrkResult:
        """Several rounds as one: counts added up, each latency figure the rounds' median."""

        def median(figure: Callable[[WrkResult], float]) -> float:
            return statistics.median(figure(result) for result in results)

        return cls(
            requests=sum(result.requests for result in results),
            duration_s=sum(result.duration_s for result in results),
            non2xx=sum(result.non2xx for result in results),
            socket_errors=sum(result.socket_errors for result in results),
            p50_ms=median(lambda result: result.p50_ms),
            p90_ms=median(lambda result: result.p90_ms),
            p99_ms=median(lambda result: result.p99_ms),
            max_ms=max(result.max_ms for result in results),
            mean_ms=median(lambda result: result.mean_ms),
        )


def parse_wrk_output(text: str) -> WrkResult:
    """The summary that `auth.lua`'s `done()` prints (the last one, if several)."""
    matches = _RESULT_LINE.findall(text)
    if not matches:
        raise WrkOutputError("no BENCH_RESULT line in wrk's output:\n" + text[-2000:])
    raw = json.loads(matches[-1])
    return WrkResult(
        requests=int(raw["requests"]),
        duration_s=raw["duration_us"] / 1e6,
        non2xx=int(raw["non2xx"]),
        socket_errors=sum(
            int(raw[name])
            for name in ("connect_errors", "read_errors", "write_errors", "timeout_errors")
        ),
        p50_ms=raw["p50_us"] / 1000,
        p90_ms=raw["p90_us"] / 1000,
        p99_ms=raw["p99_us"] / 1000,
        max_ms=raw["max_us"] / 1000,
        mean_ms=raw["mean_us"] / 1000,
    )


@dataclass(frozen=True, slots=True)
class Measurement:
    """One round of a scenario; `baseline` is the baseline's round run just before it."""

    scenario: str
    connections: int
    result: WrkResult
    warmup: bool = False
    baseline: WrkResult | None = None


def _rps(result: WrkResult) -> float:
    return result.rps


def _p99(result: WrkResult) -> float:
    return result.p99_ms


@dataclass(frozen=True, slots=True)
class RssSummary:
    """RSS of one worker: its high-water mark, and the peak of each half of the run."""

    peak_mib: float
    first_half_peak_mib: float
    second_half_peak_mib: float

    @property
    def growth_mib(self) -> float:
        return self.second_half_peak_mib - self.first_half_peak_mib

    @classmethod
    def from_samples(
        cls, samples: Sequence[tuple[float, int]], split_at: float, high_water_bytes: int
    ) -> RssSummary:
        """`samples` are (time, VmRSS bytes); the halves are before and after `split_at`."""
        first = [rss for at, rss in samples if at < split_at]
        second = [rss for at, rss in samples if at >= split_at]
        if not first or not second:
            raise ValueError("RSS samples must cover both halves of the run")
        return cls(
            # VmHWM is read once at the end; a sample may have caught a higher VmRSS figure
            # between kernel accounting updates, so the peak is the larger of the two.
            peak_mib=max(high_water_bytes, *first, *second) / MIB,
            first_half_peak_mib=max(first) / MIB,
            second_half_peak_mib=max(second) / MIB,
        )


@dataclass(frozen=True, slots=True)
class SqlTiming:
    name: str
    p50_ms: float
    samples: int


@dataclass(frozen=True, slots=True)
class TargetOutcome:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True, slots=True)
class ProbeFigures:
    """What `bench.probe` saw inside the API worker during one measured run."""

    scenario: str
    connections: int
    figures: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ScalingRun:
    """A scenario measured on another layout than the main run's one worker."""

    scenario: str
    connections: int
    layout: str  # "2 workers" (one server) or "2 instances" (two servers, one database)
    result: WrkResult


@dataclass
class BenchReport:
    machine: dict[str, Any]
    settings: dict[str, Any]
    measurements: list[Measurement]
    rss: list[RssSummary]
    sql: list[SqlTiming] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    probes: list[ProbeFigures] = field(default_factory=list)
    coherence: CoherenceFigures | None = None
    scaling: list[ScalingRun] = field(default_factory=list)

    def measured(self) -> list[Measurement]:
        return [m for m in self.measurements if not m.warmup]

    def rounds(self, scenario: str, connections: int) -> list[Measurement]:
        found = [
            measurement
            for measurement in self.measured()
            if measurement.scenario == scenario and measurement.connections == connections
        ]
        if not found:
            raise KeyError(f"no measurement of {scenario} at {connections} connections")
        return found

    def find(self, scenario: str, connections: int) -> WrkResult:
        """The scenario's rounds at this level as one result (medians of the latencies)."""
        return WrkResult.combine([m.result for m in self.rounds(scenario, connections)])

    def _neighbours(self, scenario: str, connections: int) -> list[tuple[WrkResult, WrkResult]]:
        # Measurements without a neighbour (made before rounds were paired) share the
        # baseline's figures at their level.
        everything = self.find("baseline", connections)
        return [(m.result, m.baseline or everything) for m in self.rounds(scenario, connections)]

    def ratio(self, scenario: str, connections: int, figure: Callable[[WrkResult], float]) -> float:
        """The scenario's median figure over its neighbouring baseline rounds' median."""
        if scenario == "baseline":
            return 1.0
        pairs = self._neighbours(scenario, connections)
        return statistics.median(figure(own) for own, _ in pairs) / statistics.median(
            figure(baseline) for _, baseline in pairs
        )

    def ratios(
        self, scenario: str, connections: int, figure: Callable[[WrkResult], float]
    ) -> list[float]:
        """Per round: the scenario's figure over its neighbouring baseline round's (the spread)."""
        if scenario == "baseline":
            return [1.0]
        return [
            figure(own) / figure(baseline)
            for own, baseline in self._neighbours(scenario, connections)
        ]

    def levels(self) -> list[int]:
        return sorted({m.connections for m in self.measured()})

    def sql_p50(self, name: str) -> float:
        for timing in self.sql:
            if timing.name == name:
                return timing.p50_ms
        raise KeyError(name)


def _ratio_target(
    report: BenchReport, scenario: str, minimum: float, levels: Iterable[int]
) -> TargetOutcome:
    worst: tuple[float, int] | None = None
    for level in levels:
        ratio = report.ratio(scenario, level, _rps)
        if worst is None or ratio < worst[0]:
            worst = (ratio, level)
    assert worst is not None
    return TargetOutcome(
        f"{scenario} throughput >= {minimum:g} x baseline",
        worst[0] >= minimum,
        f"lowest ratio {worst[0]:.2f} (at {worst[1]} connections)",
    )


def _p50_target(
    report: BenchReport, scenario: str, reference: str, factor: float, *, reference_p50: float
) -> TargetOutcome:
    p50 = report.find(scenario, 1).p50_ms
    return TargetOutcome(
        f"{scenario} p50 <= {factor:g} x {reference} p50",
        p50 <= factor * reference_p50,
        f"{p50:.2f} ms vs {reference_p50:.2f} ms (x{p50 / reference_p50:.2f})",
    )


def _tail_target(
    report: BenchReport, scenario: str, reference: str, limit: float, levels: Iterable[int]
) -> TargetOutcome:
    """p99 over the reference's p99, each first taken over its neighbouring baseline's.

    Judged only at levels where the box let the baseline measure itself within the same
    limit (the A/A control): where the baseline against itself is off by more than `limit`,
    no ratio at that level can say whether the limit holds.
    """
    name = f"{scenario} p99 <= {limit:g} x {reference} p99"
    judged: list[tuple[float, int]] = []
    unresolved: list[str] = []
    for level in levels:
        control = _control_p99_ratio(report, level)
        if control is not None and not 1 / limit <= control <= limit:
            unresolved.append(f"{level} (the baseline against itself: {control:.2f})")
            continue
        ratio = report.ratio(scenario, level, _p99) / report.ratio(reference, level, _p99)
        judged.append((ratio, level))
    not_judged = f"not judged at {', '.join(unresolved)}" if unresolved else ""
    if not judged:
        return TargetOutcome(name, False, "the box resolved no level; " + not_judged)
    worst = max(judged)
    detail = f"highest ratio {worst[0]:.2f} (at {worst[1]} connections)"
    return TargetOutcome(
        name, worst[0] <= limit, f"{detail}; {not_judged}" if unresolved else detail
    )


def _control_p99_ratio(report: BenchReport, level: int) -> float | None:
    try:
        return report.ratio(CONTROL_SCENARIO, level, _p99)
    except KeyError:  # no control measured (an older or shortened run): every level counts
        return None


PROVINCES_SQL_LIMIT_MS = 1.0
# p99 of each scenario over the baseline's p99 at the same saturated level: what the process
# adds to the tail beyond what the server, wrk and the box add to a bare app.
TAIL_LIMITS: Final = (("health/live", 1.5), ("users/me", 3.0), ("service-types", 3.0))
FIRST_PAGE_TAIL_LIMIT: Final = 10.0  # x the /users/me p99 at the same level
COLD_ME_SCENARIO: Final = "users/me cold"
COLD_ME_MIN_RATIO: Final = 0.25
# The baseline measured as a scenario, beside baseline rounds: its ratios are the box's noise.
CONTROL_SCENARIO: Final = "baseline A/A"
# A deactivation through one instance must be refused by another within this bound (seconds):
# correctness (the notification arrived), not speed; the figures themselves are reported.
COHERENCE_BOUND_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class CoherenceFigures:
    """Seconds from instance A's answer to a deactivation until B refused the user's token."""

    delays_s: list[float]
    refused: int  # trials in which B refused within the bound

    @property
    def trials(self) -> int:
        return len(self.delays_s)

    def percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.delays_s)
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] * 1000

    def summary(self) -> str:
        return (
            f"{self.trials} trials: p50 {self.percentile_ms(0.5):.2f} ms, "
            f"p99 {self.percentile_ms(0.99):.2f} ms, max {max(self.delays_s) * 1000:.2f} ms; "
            f"{self.refused} refused within {COHERENCE_BOUND_S:g} s"
        )


def evaluate_targets(report: BenchReport) -> list[TargetOutcome]:
    saturated = [level for level in report.levels() if level >= SATURATED_CONNECTIONS]
    outcomes = [
        _ratio_target(report, "users/me", 0.5, saturated),
        _ratio_target(report, "service-types", 0.7, saturated),
        _ratio_target(report, COLD_ME_SCENARIO, COLD_ME_MIN_RATIO, saturated),
    ]
    outcomes += [
        _tail_target(report, scenario, "baseline", limit, saturated)
        for scenario, limit in TAIL_LIMITS
    ]
    outcomes.append(
        _tail_target(report, "users first page", "users/me", FIRST_PAGE_TAIL_LIMIT, saturated)
    )
    if report.coherence is not None:
        coherence = report.coherence
        outcomes.append(
            TargetOutcome(
                f"another instance refuses a deactivated user within {COHERENCE_BOUND_S:g} s",
                coherence.trials > 0 and coherence.refused == coherence.trials,
                coherence.summary(),
            )
        )
    first_page = report.find("users first page", 1).p50_ms
    outcomes.append(
        _p50_target(report, "users last page", "users first page", 1.5, reference_p50=first_page)
    )
    outcomes.append(
        _p50_target(
            report,
            "users first page",
            "users/me",
            6,
            reference_p50=report.find("users/me", 1).p50_ms,
        )
    )
    # Uncached, as the spec says: the loose index scan itself must stay cheap at scale.
    scan = report.sql_p50("loose index scan")
    outcomes.append(
        TargetOutcome(
            f"provinces SQL (loose index scan) <= {PROVINCES_SQL_LIMIT_MS:g} ms",
            scan <= PROVINCES_SQL_LIMIT_MS,
            f"p50 {scan:.2f} ms",
        )
    )
    # "Far below the naive DISTINCT": the whole request, auth included, in a fifth of the time
    # the bare DISTINCT query alone takes on the server.
    outcomes.append(
        _p50_target(
            report,
            "provinces",
            "naive DISTINCT (SQL only)",
            0.2,
            reference_p50=report.sql_p50("naive DISTINCT"),
        )
    )
    errors = sum(m.result.errors for m in report.measurements)
    outcomes.append(
        TargetOutcome("no non-2xx responses or socket errors", errors == 0, f"{errors} in all runs")
    )
    for index, rss in enumerate(report.rss):
        outcomes.append(
            TargetOutcome(
                f"worker {index} RSS <= {RSS_LIMIT_MIB:g} MiB",
                rss.peak_mib <= RSS_LIMIT_MIB,
                f"peak {rss.peak_mib:.1f} MiB",
            )
        )
        outcomes.append(
            TargetOutcome(
                f"worker {index} RSS growth <= {RSS_GROWTH_TOLERANCE_MIB:g} MiB between halves",
                rss.growth_mib <= RSS_GROWTH_TOLERANCE_MIB,
                f"{rss.first_half_peak_mib:.1f} -> {rss.second_half_peak_mib:.1f} MiB "
                f"({rss.growth_mib:+.1f})",
            )
        )
    return outcomes


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
            f"{_with_spread(report, scenario, level, _rps)} |"
        )
    return "\n".join(lines)


def _scenario_levels(report: BenchReport) -> list[tuple[str, int]]:
    return list(dict.fromkeys((m.scenario, m.connections) for m in report.measured()))


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
    saturated = [level for level in report.levels() if level >= SATURATED_CONNECTIONS]
    lines = [
        "| scenario | "
        + " | ".join(f"p99 ms @{level} | x baseline p99 @{level} (rounds)" for level in saturated)
        + " |",
        "|---|" + "---:|---:|" * len(saturated),
    ]
    scenarios = list(dict.fromkeys(m.scenario for m in report.measured()))
    for scenario in scenarios:
        cells = []
        for level in saturated:
            p99 = report.find(scenario, level).p99_ms
            cells.append(f"{p99:.2f} | {_with_spread(report, scenario, level, _p99)}")
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
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
        total = f["stall_total_ms"]
        gc_share = f["gc_in_stalls_ms"] / total if total else 0.0
        off_cpu = f.get("off_cpu_in_stalls_ms", 0.0) / total if total else 0.0
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


def format_targets(outcomes: Sequence[TargetOutcome]) -> str:
    return "\n".join(
        f"{'PASS' if outcome.passed else 'FAIL'}  {outcome.name}: {outcome.detail}"
        for outcome in outcomes
    )


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
        "targets": [asdict(outcome) for outcome in outcomes],
    }


def write_chart(report: BenchReport, path: Path) -> None:
    """Throughput and p99 per scenario, one bar per concurrency level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scenarios = list(dict.fromkeys(m.scenario for m in report.measured()))
    levels = report.levels()
    height = 0.8 / len(levels)
    figure, (throughput, p99) = plt.subplots(1, 2, figsize=(13, 0.45 * len(scenarios) + 2))
    for index, level in enumerate(levels):
        offsets = [row + index * height for row in range(len(scenarios))]
        results = [report.find(scenario, level) for scenario in scenarios]
        throughput.barh(offsets, [r.rps for r in results], height, label=f"{level} conns")
        p99.barh(offsets, [r.p99_ms for r in results], height, label=f"{level} conns")
    centre = [row + height * (len(levels) - 1) / 2 for row in range(len(scenarios))]
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
