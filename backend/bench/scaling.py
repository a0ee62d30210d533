"""The same scenarios on more processes: two workers of one server, two instances of one worker
on one database, and the coherence trials between the two instances."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench import data
from bench.instruments import coherence_trials
from bench.report import ScalingRun
from bench.scenarios import Scenario
from bench.servers import BASELINE_APP, Server, start_server, wait_until_ok
from bench.tokens import COHERENCE_SUB_NUMBER
from bench.wrk import WrkResult, run_wrk_pair

if TYPE_CHECKING:
    from bench.run import Bench

# What runs at 2 workers and on 2 instances beside the 1-worker figures.
SCALING_SCENARIOS = (
    "baseline",
    "health/live",
    "users/me",
    "users/me cold",
    "service-types",
    "users first page",
)
COHERENCE_TRIALS = 100


def record_scaling(
    bench: Bench, scenario: Scenario, level: int, layout: str, result: WrkResult
) -> None:
    bench.scaling.append(ScalingRun(scenario.name, level, layout, result))
    print(
        f"{scenario.name:>20} c={level:<3} {layout} "
        f"{result.rps:>8,.0f} req/s  p99 {result.p99_ms:7.2f} ms",
        flush=True,
    )


def two_workers(bench: Bench, env: dict[str, str]) -> None:
    """The scaling scenarios on a server of two workers (and a two-worker baseline)."""
    api2 = start_server("api-2-workers", bench.args.api_app, env, 2, bench.run_dir)
    baseline2 = start_server("baseline-2-workers", BASELINE_APP, env, 2, bench.run_dir)
    try:
        wait_until_ok(api2.base_url + "/health", api2.process)
        wait_until_ok(baseline2.base_url + "/", baseline2.process)
        doubled = {"api": api2, "baseline": baseline2}
        for warmup in (True, False):
            for level in _saturated(bench):
                for scenario in _scaled(bench):
                    seconds = bench.args.warmup if warmup else bench.args.duration
                    result = bench.measure(doubled[scenario.server], scenario, level, seconds)
                    if not warmup:
                        record_scaling(bench, scenario, level, "2 workers", result)
    finally:
        api2.stop()
        baseline2.stop()


def two_instances(bench: Bench, api: Server, env: dict[str, str]) -> None:
    """A second one-worker instance on the same database: throughput through both at once,
    then how soon one refuses a user the other deactivated."""
    second = start_server("api-instance-b", bench.args.api_app, env, 1, bench.run_dir)
    try:
        wait_until_ok(second.base_url + "/health", second.process)
        for warmup in (True, False):
            for level in _saturated(bench):
                for scenario in _scaled(bench):
                    if scenario.server == "api":
                        result = _pair_run(bench, api, second, scenario, level, warmup)
                        if not warmup:
                            record_scaling(bench, scenario, level, "2 instances", result)
        if not bench.args.no_probe:
            token = bench.tokens["coherence"].read_text().strip()
            sub = data.bench_sub(COHERENCE_SUB_NUMBER)
            bench.coherence = coherence_trials(api, second, sub, token, COHERENCE_TRIALS)
            print(f"coherence: {bench.coherence.summary()}", flush=True)
    finally:
        second.stop()


def _pair_run(
    bench: Bench, a: Server, b: Server, scenario: Scenario, level: int, warmup: bool
) -> WrkResult:
    urls = (a.base_url + scenario.path, b.base_url + scenario.path)
    seconds = bench.args.warmup if warmup else bench.args.duration
    tokens = scenario.tokens
    start = bench.rotations.start(tokens)
    result = run_wrk_pair(bench.wrk, urls, level, seconds, bench.tokens.get(tokens), start)
    bench.rotations.advance(tokens, result)
    return result


def _saturated(bench: Bench) -> list[int]:
    return [level for level in bench.args.levels if level >= 16]


def _scaled(bench: Bench) -> list[Scenario]:
    return [s for s in bench.chosen if s.name in SCALING_SCENARIOS]
