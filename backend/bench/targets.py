"""The bench's targets, each PASS, FAIL or INCONCLUSIVE, and the run's exit status from them.

Every target read against the baseline is a ratio within the run (`bench.report`), and the box
moves ratios by itself: `baseline A/A` (the baseline against its own neighbouring rounds)
measures how far, at the same level or rate and for the same figure. That factor either way
(`box_noise`, 1.25 for a control of 0.8 or of 1.25) is the margin a ratio must clear:

- PASS when the ratio meets the target even if the box moved it by the control's factor
  against it, FAIL when it misses even if the box moved it by that factor in its favour, and
  INCONCLUSIVE in between: the box could have made either;
- never PASS when the control is off by more than `BOX_TOO_DISTURBED` (either way): beyond
  that one control is no bound on what the box did to the scenario's own rounds, so only a
  miss by more than the control's factor still counts (as FAIL), and the rest is
  INCONCLUSIVE;
- a fixed-rate target is INCONCLUSIVE when the generator fell behind its schedule in any of
  its rounds, its baseline's or the control's (`FixedRateResult.held`);
- a fixed-rate load with a target INCONCLUSIVE and none FAIL is measured again, all its
  scenarios and its control, up to `--rate-attempts` in all (`measure_again`); the attempts
  set aside are shown, and the last is judged.

No level or round of a judged attempt is left out of its verdict, and a fixed-rate attempt
that showed a FAIL is the one judged, so a disturbed round can never turn a failure into a
pass. The run exits 0 when every target passed, 1 when any failed, and 3 (inconclusive: the
box, not the code, decided something) when none failed but some could not be told.

Targets that do not depend on the box (SQL timings, errors, RSS, coherence) pass or fail.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from bench.report import (
    COHERENCE_BOUND_S,
    COLD_ME_SCENARIO,
    CONTROL_SCENARIO,
    METRICS_AA_SCENARIO,
    METRICS_OFF_SCENARIO,
    METRICS_ON_SCENARIO,
    BenchReport,
    FixedRateRound,
    Measurement,
    cpu_of,
    p50_of,
    rps_of,
)
from bench.wrk import WrkResult

EXIT_PASS: Final = 0
EXIT_FAIL: Final = 1
EXIT_INCONCLUSIVE: Final = 3
# Beyond this factor (either way) of the baseline against itself, the box is too disturbed
# for any ratio beside it to be judged.
BOX_TOO_DISTURBED: Final = 1.5
# Closed-loop throughput at every saturated level, x the baseline's.
THROUGHPUT_MINIMUMS: Final = (
    ("users/me", 0.8),
    ("service-types", 0.8),
    (COLD_ME_SCENARIO, 0.4),
)
# Fixed rate: (share of capacity, p99 limit x the baseline's p99 at the same rate).
FIXED_RATE_LIMITS: Final = ((0.5, 2.0), (0.8, 3.0))
FIXED_RATE_SCENARIOS: Final = ("users/me", "service-types", "users first page")
PROVINCES_SQL_LIMIT_MS: Final = 1.0
# p50 at one connection, 100k users: pages and filters x the first page's; the first page x
# /users/me's.
PAGE_P50_FACTORS: Final = (
    ("users last page", 1.5),
    ("users middle page", 2.0),
    ("users q", 2.0),
)
FIRST_PAGE_FACTOR: Final = 3.0
# /users/me req/s with the request metrics on, over the same with them off.
METRICS_OVERHEAD_MINIMUM: Final = 0.95
RSS_LIMIT_MIB: Final = 150.0
# "No growth": the second half's peak RSS may exceed the first half's by at most this much.
# Each half serves tens of thousands of requests, so a leak of even 100 bytes a request
# would show as several MiB; allocator noise and late one-off allocations stay below 4 MiB.
RSS_GROWTH_TOLERANCE_MIB: Final = 4.0


class Verdict(StrEnum):
    PASS = "PASS"  # noqa: S105 - a verdict, not a password
    FAIL = "FAIL"
    INCONCLUSIVE = "INCONCLUSIVE"


@dataclass(frozen=True, slots=True)
class TargetOutcome:
    name: str
    verdict: Verdict
    detail: str

    @property
    def passed(self) -> bool:
        return self.verdict is Verdict.PASS

    @classmethod
    def plain(cls, name: str, passed: bool, detail: str) -> TargetOutcome:
        """A target the box cannot decide: it passes or fails."""
        return cls(name, Verdict.PASS if passed else Verdict.FAIL, detail)


def box_noise(control: float | None) -> float:
    """How far the box alone moved a ratio: the control's factor away from 1, either way."""
    if control is None:  # no control measured (a shortened run): the ratio as it stands
        return 1.0
    return max(control, 1 / control)


def judge(ratio: float, bound: float, noise: float, *, at_most: bool) -> Verdict:
    """`ratio` against `bound` (an upper one if `at_most`), with the box's factor as margin."""
    best, worst = (ratio / noise, ratio * noise) if at_most else (ratio * noise, ratio / noise)
    if (best > bound) if at_most else (best < bound):
        return Verdict.FAIL
    if noise <= BOX_TOO_DISTURBED and ((worst <= bound) if at_most else (worst >= bound)):
        return Verdict.PASS
    return Verdict.INCONCLUSIVE


def worst_of(verdicts: Iterable[Verdict]) -> Verdict:
    found = set(verdicts)
    for verdict in (Verdict.FAIL, Verdict.INCONCLUSIVE):
        if verdict in found:
            return verdict
    return Verdict.PASS


def _box(noise: float, control: float | None) -> str:
    if control is None:
        return "no control"
    return f"box x{noise:.2f}" + (" (too disturbed)" if noise > BOX_TOO_DISTURBED else "")


def _control(report: BenchReport, level: int, figure: Callable[[WrkResult], float]) -> float | None:
    try:
        return report.ratio(CONTROL_SCENARIO, level, figure)
    except KeyError:
        return None


def _at_saturated_levels(
    report: BenchReport, ratio_of: Callable[[int], float], minimum: float, digits: int = 2
) -> tuple[Verdict, str]:
    """A req/s ratio judged at every saturated level against the control there; the worst."""
    verdicts, parts = [], []
    for level in report.saturated_levels():
        ratio = ratio_of(level)
        control = _control(report, level, rps_of)
        noise = box_noise(control)
        verdicts.append(judge(ratio, minimum, noise, at_most=False))
        parts.append(f"{ratio:.{digits}f} at {level} connections ({_box(noise, control)})")
    if not verdicts:
        raise KeyError("no saturated level measured")
    return worst_of(verdicts), "; ".join(parts)


def throughput_target(report: BenchReport, scenario: str, minimum: float) -> TargetOutcome:
    """req/s over the neighbouring baseline's at every saturated level; the worst verdict."""
    verdict, detail = _at_saturated_levels(
        report, lambda level: report.ratio(scenario, level, rps_of), minimum
    )
    return TargetOutcome(f"{scenario} throughput >= {minimum:g} x baseline", verdict, detail)


def _measured_rps(measurement: Measurement) -> float:
    return measurement.result.rps


def _cpu_control(report: BenchReport, level: int) -> float | None:
    """Two API servers alike in every setting (metrics on, serving only `/users/me`): the ratio
    of their CPU per request is what the box and the choice of server alone do to the metrics
    target's ratio."""
    try:
        return report.together(METRICS_ON_SCENARIO, METRICS_AA_SCENARIO, level, cpu_of)
    except KeyError:
        return None


def metrics_overhead_target(report: BenchReport) -> TargetOutcome:
    """/users/me with metrics on against the same API with them off, at every saturated level:
    two servers that serve nothing else, so they differ in METRICS alone.

    Judged on what each worker serves per CPU second (the inverse of its CPU per request, read
    from /proc around each round): that is the throughput a saturated worker has to give. The
    servers are loaded at once, on one CPU, round after round, and the figure is the median of
    the rounds' ratios (`BenchReport.together`). Its control is the same figure between two
    servers that differ in nothing (`_cpu_control`): a ratio within their factor of 0.95 is
    inconclusive rather than a pass or a failure. The req/s ratio is shown beside it.
    """
    verdicts, parts = [], []
    for level in report.saturated_levels():
        ratio = report.together(METRICS_OFF_SCENARIO, METRICS_ON_SCENARIO, level, cpu_of)
        on = report.cpu_us_per_request(METRICS_ON_SCENARIO, level)
        off = report.cpu_us_per_request(METRICS_OFF_SCENARIO, level)
        control = _cpu_control(report, level)
        noise = box_noise(control)
        verdicts.append(judge(ratio, METRICS_OVERHEAD_MINIMUM, noise, at_most=False))
        rps = report.together(METRICS_ON_SCENARIO, METRICS_OFF_SCENARIO, level, _measured_rps)
        parts.append(
            f"{ratio:.3f} at {level} connections (medians {on:.1f} against {off:.1f} CPU µs a "
            f"request; req/s {rps:.3f}; {_box(noise, control)}, two servers alike)"
        )
    if not verdicts:
        raise KeyError("no saturated level measured")
    name = (
        f"users/me throughput per CPU second with metrics >= {METRICS_OVERHEAD_MINIMUM:g} x without"
    )
    return TargetOutcome(name, worst_of(verdicts), "; ".join(parts))


def fixed_rate_target(
    report: BenchReport, scenario: str, load: float, limit: float
) -> TargetOutcome:
    """p99 at a fixed rate over the baseline's p99 at the same rate, rounds side by side."""
    name = f"{scenario} p99 at {load:.0%} load <= {limit:g} x baseline p99 at the same rate"
    ratio = report.fixed_ratio(scenario, load)
    behind = report.fixed_not_held(scenario, load)
    try:
        control: float | None = report.fixed_ratio(CONTROL_SCENARIO, load)
        behind += report.fixed_not_held(CONTROL_SCENARIO, load)
    except KeyError:
        control = None
    noise = box_noise(control)
    detail = f"{ratio:.2f} ({_box(noise, control)})"
    if behind:
        detail += f"; the generator fell behind its schedule in {behind} round(s)"
        return TargetOutcome(name, Verdict.INCONCLUSIVE, detail)
    return TargetOutcome(name, judge(ratio, limit, noise, at_most=True), detail)


def attempt_outcomes(rounds: Sequence[FixedRateRound], load: float) -> list[TargetOutcome]:
    """The fixed-rate targets at `load` judged on one attempt's rounds alone."""
    report = BenchReport({}, {}, [], [], fixed_rate=list(rounds))
    limit = dict(FIXED_RATE_LIMITS)[load]
    present = [s for s in FIXED_RATE_SCENARIOS if any(r.scenario == s for r in rounds)]
    return [fixed_rate_target(report, scenario, load, limit) for scenario in present]


def measure_again(rounds: Sequence[FixedRateRound], load: float) -> bool:
    """Whether a load's fixed-rate rounds should be measured again: some target at it could
    not be told (its control too disturbed, or the generator behind) and none failed.

    What the INCONCLUSIVE verdict asks of an operator, "run again on a quieter machine", for
    that load alone. A FAIL stands: the attempt that showed it is the one judged.
    """
    verdicts = (outcome.verdict for outcome in attempt_outcomes(rounds, load))
    return worst_of(verdicts) is Verdict.INCONCLUSIVE


def p50_target(
    report: BenchReport,
    scenario: str,
    reference: str,
    factor: float,
    *,
    reference_p50: float,
) -> TargetOutcome:
    """p50 at one connection (the service time) against a reference's."""
    p50 = report.find(scenario, 1).p50_ms
    control = _control(report, 1, p50_of)
    noise = box_noise(control)
    ratio = p50 / reference_p50
    return TargetOutcome(
        f"{scenario} p50 <= {factor:g} x {reference} p50",
        judge(ratio, factor, noise, at_most=True),
        f"{p50:.2f} ms vs {reference_p50:.2f} ms (x{ratio:.2f}; {_box(noise, control)})",
    )


def evaluate_targets(report: BenchReport) -> list[TargetOutcome]:
    """Every target of the run; a KeyError if the run did not measure one of them."""
    outcomes = [
        throughput_target(report, scenario, minimum) for scenario, minimum in THROUGHPUT_MINIMUMS
    ]
    outcomes.append(metrics_overhead_target(report))
    outcomes += [
        fixed_rate_target(report, scenario, load, limit)
        for load, limit in FIXED_RATE_LIMITS
        for scenario in FIXED_RATE_SCENARIOS
    ]
    if report.coherence is not None:
        coherence = report.coherence
        outcomes.append(
            TargetOutcome.plain(
                f"another instance refuses a deactivated user within {COHERENCE_BOUND_S:g} s",
                coherence.trials > 0 and coherence.refused == coherence.trials,
                coherence.summary(),
            )
        )
    # Every page and filter of the list about as cheap as the first, the first cheap itself.
    first_page = report.find("users first page", 1).p50_ms
    for scenario, factor in PAGE_P50_FACTORS:
        outcomes.append(
            p50_target(report, scenario, "users first page", factor, reference_p50=first_page)
        )
    me_p50 = report.find("users/me", 1).p50_ms
    outcomes.append(
        p50_target(report, "users first page", "users/me", FIRST_PAGE_FACTOR, reference_p50=me_p50)
    )
    # The provinces are read uncached (they change with every case): the loose index scan
    # itself must stay cheap at scale.
    scan = report.sql_p50("loose index scan")
    outcomes.append(
        TargetOutcome.plain(
            f"provinces SQL (loose index scan) <= {PROVINCES_SQL_LIMIT_MS:g} ms",
            scan <= PROVINCES_SQL_LIMIT_MS,
            f"p50 {scan:.2f} ms",
        )
    )
    # "Far below the naive DISTINCT": the whole request, auth included, in a fifth of the time
    # the bare DISTINCT query alone takes on the server.
    naive = report.sql_p50("naive DISTINCT")
    outcomes.append(
        p50_target(report, "provinces", "naive DISTINCT (SQL only)", 0.2, reference_p50=naive)
    )
    return outcomes + _health_targets(report)


def _health_targets(report: BenchReport) -> list[TargetOutcome]:
    errors = sum(m.result.errors for m in report.measurements)
    for fixed in report.fixed_rate:
        errors += fixed.result.errors + (fixed.baseline.errors if fixed.baseline else 0)
    outcomes = [
        TargetOutcome.plain(
            "no non-2xx responses or socket errors", errors == 0, f"{errors} in all runs"
        )
    ]
    for index, rss in enumerate(report.rss):
        outcomes.append(
            TargetOutcome.plain(
                f"worker {index} RSS <= {RSS_LIMIT_MIB:g} MiB",
                rss.peak_mib <= RSS_LIMIT_MIB,
                f"peak {rss.peak_mib:.1f} MiB",
            )
        )
        outcomes.append(
            TargetOutcome.plain(
                f"worker {index} RSS growth <= {RSS_GROWTH_TOLERANCE_MIB:g} MiB between halves",
                rss.growth_mib <= RSS_GROWTH_TOLERANCE_MIB,
                f"{rss.first_half_peak_mib:.1f} -> {rss.second_half_peak_mib:.1f} MiB "
                f"({rss.growth_mib:+.1f})",
            )
        )
    return outcomes


def exit_status(outcomes: Sequence[TargetOutcome]) -> int:
    verdict = worst_of(outcome.verdict for outcome in outcomes)
    return {Verdict.PASS: EXIT_PASS, Verdict.FAIL: EXIT_FAIL}.get(verdict, EXIT_INCONCLUSIVE)


def format_targets(outcomes: Sequence[TargetOutcome]) -> str:
    return "\n".join(f"{o.verdict:<12} {o.name}: {o.detail}" for o in outcomes)


def format_verdict(outcomes: Sequence[TargetOutcome]) -> str:
    """The run's closing line: what its exit status says, in words."""
    failed = [o.name for o in outcomes if o.verdict is Verdict.FAIL]
    unresolved = [o.name for o in outcomes if o.verdict is Verdict.INCONCLUSIVE]
    if failed:
        also = f" ({len(unresolved)} more inconclusive)" if unresolved else ""
        return f"FAIL: {len(failed)} of {len(outcomes)} targets missed{also}"
    if unresolved:
        return (
            f"INCONCLUSIVE: the box was too disturbed to tell {len(unresolved)} of "
            f"{len(outcomes)} targets (none failed); run again on a quieter machine"
        )
    return f"PASS: all {len(outcomes)} targets passed"
