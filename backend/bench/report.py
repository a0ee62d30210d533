"""The bench's measurements as one report: rounds, neighbours, ratios and capacities.

Nothing here starts a process or opens a socket, so the tests can build reports by hand.
`bench.targets` judges a report, `bench.tables` prints it.

How rounds become figures (written down so nobody has to guess):
- every scenario is measured in rounds, each right after a round of the baseline at the same
  level or rate (`Measurement.baseline`, `FixedRateRound.baseline`). A figure is the median
  over the rounds; a ratio is the scenario's median over the median of the baseline rounds run
  beside it. On this kind of machine the bare baseline's own p99 jumps several-fold from one
  round to the next; the neighbours cancel drift, and medians keep a minority of disturbed
  rounds, on either side, from deciding a target;
- `baseline A/A` is the baseline measured as a scenario, beside baseline rounds like the
  others: its ratios are what the box alone does to a ratio (the control);
- closed-loop (wrk) rounds at each concurrency level give throughput; at a *saturated* level
  (>= 16 connections) one worker is busy all the time, so req/s is the cost of a request, and
  the lowest median req/s over the saturated levels is a scenario's capacity;
- fixed-rate rounds (`bench.openloop`) run at a share of a capacity (`load`) and give tails
  measured from each request's scheduled send time.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from bench.fixed_rate import FixedRateResult
from bench.wrk import WrkResult

MIB: Final = 1024 * 1024
SATURATED_CONNECTIONS: Final = 16
COLD_ME_SCENARIO: Final = "users/me cold"
# The baseline measured as a scenario, beside baseline rounds: its ratios are the box's noise.
CONTROL_SCENARIO: Final = "baseline A/A"
# /users/me on two more API servers that serve nothing else, alike but for METRICS: what the
# request metrics cost, between servers in the same state (the main API server also serves
# every other scenario, so its heap and collector differ).
METRICS_ON_SCENARIO: Final = "users/me metrics on"
METRICS_OFF_SCENARIO: Final = "users/me metrics off"
# A third, alike in every setting to the one with metrics on: the control for their ratio (what
# the box and the choice of server alone do to it).
METRICS_AA_SCENARIO: Final = "users/me metrics on A/A"
# A deactivation through one instance must be refused by another within this bound (seconds):
# correctness (the notification arrived), not speed; the figures themselves are reported.
COHERENCE_BOUND_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class Measurement:
    """One round of a scenario; `baseline` is the baseline's round run just before it."""

    scenario: str
    connections: int
    result: WrkResult
    warmup: bool = False
    baseline: WrkResult | None = None
    # CPU seconds the scenario's server workers spent in the round (user and system).
    server_cpu_s: float | None = None

    @property
    def cpu_us_per_request(self) -> float | None:
        """The server's CPU per request answered: its cost, whatever else ran on the box."""
        if self.server_cpu_s is None or not self.result.requests:
            return None
        return self.server_cpu_s / self.result.requests * 1e6


def cpu_of(measurement: Measurement) -> float | None:
    return measurement.cpu_us_per_request


def rps_of(result: WrkResult) -> float:
    return result.rps


def p50_of(result: WrkResult) -> float:
    return result.p50_ms


def p99_of(result: WrkResult) -> float:
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


@dataclass(frozen=True, slots=True)
class FixedRateRound:
    """One fixed-rate round of a scenario at `load` x a capacity; `baseline` is the baseline's
    round at the same rate, run just before it. `busy` and `baseline_busy`: the share of one
    CPU each server's workers used over the round's schedule (what the same rate asked of
    each). `probe` names what made a slow round slow: a stall of the API's loop (the
    collector, its core given to other work, or a backlog it was serving) or, with no stall,
    a delay outside it."""

    scenario: str
    load: float
    result: FixedRateResult
    baseline: FixedRateResult | None = None
    busy: float | None = None
    baseline_busy: float | None = None
    # What `bench.probe` saw inside the API worker over this round alone (None: not probed).
    probe: dict[str, Any] | None = None


def fixed_rate_plan(
    report: BenchReport,
    scenarios: Sequence[str],
    loads: Sequence[float],
    *,
    own_capacity: bool,
) -> list[tuple[str, float, float]]:
    """(scenario, load, req/s) of every fixed-rate run, from the capacities measured.

    The control runs at the baseline's capacity; a scenario at its own (`own_capacity`) or at
    the baseline's (every scenario at the same absolute rate: one slower than the baseline at
    that rate is overloaded, and its tail is its backlog). Its baseline rounds run at the same
    rate as it does, so with `own_capacity` the rate is a share of the lesser of the two
    capacities: the slower server of the pair at that share of its work, and neither beyond
    what it can serve (a share of a scenario faster than the baseline could be more than the
    baseline serves, and the baseline's backlog would be its tail).
    """
    plan = []
    baseline = report.capacity("baseline")
    for load in loads:
        for scenario in scenarios:
            own = own_capacity and scenario != CONTROL_SCENARIO
            capacity = min(report.capacity(scenario), baseline) if own else baseline
            plan.append((scenario, load, round(load * capacity, 1)))
    return plan


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
    fixed_rate: list[FixedRateRound] = field(default_factory=list)
    # Attempts at a load that were measured again: shown, never judged.
    fixed_rate_set_aside: list[list[FixedRateRound]] = field(default_factory=list)

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

    def cpu_us_per_request(self, scenario: str, connections: int) -> float:
        """The median over the scenario's rounds of its server's CPU per request (µs)."""
        costs = [m.cpu_us_per_request for m in self.rounds(scenario, connections)]
        measured = [cost for cost in costs if cost is not None]
        if not measured:
            raise KeyError(f"no server CPU measured for {scenario} at {connections}")
        return statistics.median(measured)

    def together(
        self,
        scenario: str,
        other: str,
        connections: int,
        figure: Callable[[Measurement], float | None],
    ) -> float:
        """The median over rounds of the scenario's figure over the other's, their servers
        loaded at once in each round (`Bench._metrics_rounds`): what the box did to the CPU in
        a round fell on both, and cancels in the round's ratio."""
        pairs = zip(
            self.rounds(scenario, connections), self.rounds(other, connections), strict=True
        )
        ratios = [
            ours / theirs
            for ours, theirs in ((figure(a), figure(b)) for a, b in pairs)
            if ours is not None and theirs
        ]
        if not ratios:
            raise KeyError(f"no {scenario} and {other} rounds at {connections} to compare")
        return statistics.median(ratios)

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

    def saturated_levels(self) -> list[int]:
        return [level for level in self.levels() if level >= SATURATED_CONNECTIONS]

    def capacity(self, scenario: str) -> float:
        """req/s at saturation: the lowest median over the saturated levels, what the server
        sustained however many connections waited (a share of the highest could be beyond
        what it serves at another level, and an overloaded server's tail is its backlog)."""
        levels = self.saturated_levels()
        if not levels:
            raise KeyError("no saturated level measured: no capacity")
        return min(self.find(scenario, level).rps for level in levels)

    # -- fixed rate ----------------------------------------------------------------------

    def loads(self) -> list[float]:
        return sorted({r.load for r in self.fixed_rate})

    def fixed_rounds(self, scenario: str, load: float) -> list[FixedRateRound]:
        found = [r for r in self.fixed_rate if r.scenario == scenario and r.load == load]
        if not found:
            raise KeyError(f"no fixed-rate round of {scenario} at {load:.0%} load")
        return found

    def fixed_find(self, scenario: str, load: float) -> FixedRateResult:
        return FixedRateResult.combine([r.result for r in self.fixed_rounds(scenario, load)])

    def _fixed_pairs(
        self, scenario: str, load: float
    ) -> list[tuple[FixedRateResult, FixedRateResult]]:
        pairs = []
        for found in self.fixed_rounds(scenario, load):
            if found.baseline is None:
                raise KeyError(f"{scenario} at {load:.0%} load has a round without a baseline")
            pairs.append((found.result, found.baseline))
        return pairs

    def fixed_ratio(self, scenario: str, load: float) -> float:
        """p99: the scenario's rounds' median over their neighbouring baseline rounds' median."""
        pairs = self._fixed_pairs(scenario, load)
        return statistics.median(own.p99_ms for own, _ in pairs) / statistics.median(
            baseline.p99_ms for _, baseline in pairs
        )

    def fixed_ratio_same_share(self, scenario: str, load: float) -> float:
        """p99: the scenario's rounds' median over the control's (`baseline A/A`, the baseline
        at the same share of its own capacity), both servers as busy as each other."""
        return statistics.median(
            r.result.p99_ms for r in self.fixed_rounds(scenario, load)
        ) / statistics.median(r.result.p99_ms for r in self.fixed_rounds(CONTROL_SCENARIO, load))

    def fixed_busy(self, scenario: str, load: float) -> tuple[float, float] | None:
        """The median busy share of the scenario's server and of the baseline beside it."""
        rounds = self.fixed_rounds(scenario, load)
        own = [r.busy for r in rounds if r.busy is not None]
        base = [r.baseline_busy for r in rounds if r.baseline_busy is not None]
        if not own or not base:
            return None
        return statistics.median(own), statistics.median(base)

    def fixed_ratios(self, scenario: str, load: float) -> list[float]:
        """Per round: p99 over the neighbouring baseline round's p99 (the spread)."""
        return [own.p99_ms / base.p99_ms for own, base in self._fixed_pairs(scenario, load)]

    def fixed_not_held(self, scenario: str, load: float) -> int:
        """Rounds (the scenario's or their baselines') in which the generator fell behind."""
        return sum(
            (not own.held) + (not base.held) for own, base in self._fixed_pairs(scenario, load)
        )

    def sql_p50(self, name: str) -> float:
        for timing in self.sql:
            if timing.name == name:
                return timing.p50_ms
        raise KeyError(name)
