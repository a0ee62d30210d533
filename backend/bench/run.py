"""`make bench`: the API as production runs it, next to a bare baseline, closed-loop and at
fixed rates.

One run: a throw-away embedded PostgreSQL (under `.local/bench/`), migrated and bulk-loaded
(100k users, 1M cases by default), a local JWKS server, the API (`uvicorn app.main:app`, the
production flags, JSON access log at INFO into a file) and the baseline (`bench.baseline_app`,
same server and flags), each with the same number of workers. Then, in order:

1. warm-up: every scenario once at each concurrency level under wrk (the run's first half);
2. closed-loop rounds: each scenario in rounds under wrk, each right after a baseline round at
   the same level (throughput, and the capacities of step 3), but the metrics' three servers,
   loaded at once round after round (`Bench._metrics_rounds`);
3. fixed-rate rounds (`bench.openloop`): the control, `/users/me`, service-types and the first
   users page at 50 % and 80 % of their capacity (or of the baseline's, if less), each round
   right after a baseline round at the same rate (tails, counted from each request's
   scheduled send time);
4. unless `--no-scaling`: the main scenarios on 2 workers and on 2 instances, and the
   coherence trials between two instances.

The API worker's RSS is sampled through steps 1-2 (its halves alike in work). `bench.report`
says how rounds become figures, `bench.targets` how they are judged. Results go to
`bench-results/<timestamp>/` (results.json, table.md, chart.png, the server logs); the tables
and a verdict per target are printed; the exit status is 0 if every target passed, 1 if any
failed, 3 if none failed but the box was too disturbed to tell some (inconclusive). Through
make, 1 and 3 show as "Error 1" and "Error 3" (make itself then exits 2).

    PYTHONPATH=backend python -m bench.run [--users N] [--cases N] [--duration S] ...
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from bench import data
from bench.database import bench_database, sql_timings
from bench.fixed_rate import FixedRateResult, parse_result_line
from bench.instruments import read_probe, start_profiler, verify_micro
from bench.report import (
    CONTROL_SCENARIO,
    METRICS_AA_SCENARIO,
    METRICS_OFF_SCENARIO,
    METRICS_ON_SCENARIO,
    SATURATED_CONNECTIONS,
    BenchReport,
    CoherenceFigures,
    FixedRateRound,
    Measurement,
    ProbeFigures,
    RssSummary,
    ScalingRun,
    fixed_rate_plan,
)
from bench.scaling import two_instances, two_workers
from bench.scenarios import (
    METRICS_AA_SERVER,
    METRICS_OFF_SERVER,
    METRICS_ON_SERVER,
    Scenario,
    scenarios,
)
from bench.servers import (
    BACKEND,
    BASELINE_APP,
    REPO_ROOT,
    RssSampler,
    Server,
    confinement,
    cpu_seconds,
    machine_info,
    proc_status_bytes,
    server_env,
    start_server,
    wait_until_ok,
)
from bench.tables import print_results, tables
from bench.targets import FIXED_RATE_LIMITS, FIXED_RATE_SCENARIOS, measure_again
from bench.tokens import Rotations, mint_tokens
from bench.wrk import WrkResult, ensure_wrk, parse_wrk_output, run_wrk, run_wrk_at_once

# Served by default: the production app plus the bench's instruments (`bench.probe`).
PROBED_APP = "bench.probe:app"

# Loaded at once with METRICS_ON_SCENARIO rather than in their own turn.
_LOADED_WITH_METRICS_ON: Final = (METRICS_OFF_SCENARIO, METRICS_AA_SCENARIO)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    add = parser.add_argument
    add("--users", type=int, default=100_000)
    add("--cases", type=int, default=1_000_000)
    add("--connections", default="1,16,64", help="comma-separated levels")
    add("--duration", type=int, default=2, help="seconds per closed-loop round")
    add("--rounds", type=int, default=5, help="closed-loop rounds per scenario and level")
    # More than the closed loop's: one 3 s round's p99 moves several-fold with a stall of the
    # box, so a median of nine still let the control stray past its bound in three runs of
    # seven (docs/performance.md).
    add("--rate-rounds", type=int, default=15, help="fixed-rate rounds per scenario and rate")
    # A load whose targets could not be told (none failed) is measured again, as an operator
    # would run the bench again on a quieter machine, at most this many times in all.
    add("--rate-attempts", type=int, default=3, help="attempts at a disturbed fixed-rate load")
    # The metrics' cost is a few % of a request: judged on the median of per-round ratios.
    add("--metrics-rounds", type=int, default=24, help="rounds of the metrics' servers at once")
    add("--warmup", type=int, default=2, help="seconds per warm-up run")
    add("--rate-duration", type=float, default=3, help="seconds per fixed-rate round")
    add(
        "--rate-basis",
        choices=("own", "baseline"),
        default="own",
        help="fixed rates as shares of each scenario's own capacity, or all of the baseline's",
    )
    add("--no-fixed-rate", action="store_true", help="skip the fixed-rate rounds")
    add("--workers", type=int, default=1, help="uvicorn workers, both servers")
    add("--only", default="", help="comma-separated scenario names (debugging)")
    add("--profile", action="store_true", help="py-spy the API worker in each API round")
    add("--no-probe", action="store_true", help="serve app.main:app without bench.probe")
    add("--no-scaling", action="store_true", help="skip 2 workers, 2 instances, coherence")
    add("--hold", action="store_true", help="keep servers up after the load")
    add("--out", type=Path, default=REPO_ROOT / "bench-results")
    args = parser.parse_args(argv)
    args.levels = [int(level) for level in args.connections.split(",")]
    args.api_app = "app.main:app" if args.no_probe else PROBED_APP
    return args


@dataclass
class Bench:
    """One run: its tools and tokens, and everything measured so far."""

    args: argparse.Namespace
    wrk: str
    run_dir: Path
    chosen: list[Scenario]
    tokens: dict[str, Path] = field(default_factory=dict)
    rotations: Rotations = field(default_factory=Rotations)
    measurements: list[Measurement] = field(default_factory=list)
    probes: list[ProbeFigures] = field(default_factory=list)
    fixed_rate: list[FixedRateRound] = field(default_factory=list)
    # Attempts at a load that were measured again (`measure_again`), each its rounds.
    fixed_rate_set_aside: list[list[FixedRateRound]] = field(default_factory=list)
    scaling: list[ScalingRun] = field(default_factory=list)
    coherence: CoherenceFigures | None = None

    @property
    def probing(self) -> bool:
        """The API serves `bench.probe`'s figures, and from its one worker (`/__bench/probe`
        would reach any one of several)."""
        return not self.args.no_probe and self.args.workers == 1

    def scenario(self, name: str) -> Scenario:
        return next(s for s in self.chosen if s.name == name)

    def chosen_named(self, name: str) -> bool:
        return any(s.name == name for s in self.chosen)

    def measure(self, server: Server, scenario: Scenario, level: int, seconds: int) -> WrkResult:
        """One wrk run of `scenario` at `level` connections."""
        tokens = scenario.tokens
        start = self.rotations.start(tokens)
        output = run_wrk(
            self.wrk,
            server.base_url + scenario.path,
            level,
            seconds,
            self.tokens.get(tokens),
            start,
            server.confinement,
        )
        result = parse_wrk_output(output)
        self.rotations.advance(tokens, result)
        return result

    def at_rate(
        self, server: Server, scenario: Scenario, rate: float
    ) -> tuple[FixedRateResult, float]:
        """One fixed-rate run of `scenario` (its own process, as wrk is), and the share of one
        CPU the server's workers used over its schedule."""
        seconds = self.args.rate_duration
        workers = server.worker_pids()
        cpu_before = cpu_seconds(workers)
        command = [sys.executable, "-m", "bench.openloop", server.base_url + scenario.path]
        command += ["--rate", str(rate), "--seconds", str(seconds)]
        if scenario.tokens in self.tokens:
            command += ["--tokens-file", str(self.tokens[scenario.tokens])]
        completed = subprocess.run(  # noqa: S603 - our own interpreter against our servers
            command,
            env={**os.environ, "PYTHONPATH": str(BACKEND)},
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
        if completed.returncode != 0:
            raise SystemExit(f"bench.openloop failed: {completed.stdout}{completed.stderr}")
        return parse_result_line(completed.stdout), (cpu_seconds(workers) - cpu_before) / seconds

    def warm_up(self, servers: dict[str, Server]) -> None:
        """Every scenario once at each level: the run's first half."""
        for level in self.args.levels:
            for scenario in self.chosen:
                if scenario.name != CONTROL_SCENARIO:
                    result = self.measure(
                        servers[scenario.server], scenario, level, self.args.warmup
                    )
                    self.measurements.append(Measurement(scenario.name, level, result, True))

    def closed_loop_plan(self) -> list[tuple[int, Scenario]]:
        """(level, scenario) of each closed-loop turn, in order. The baseline runs beside
        every other scenario, not in a turn of its own; the metrics' off and A/A servers are
        loaded with the on server, and the three only at saturated levels, the only ones their
        target reads (at one connection a server waits for `wrk` more than it works)."""
        return [
            (level, scenario)
            for level in self.args.levels
            for scenario in self.chosen
            if scenario.name != "baseline"
            and not (
                scenario.name in _LOADED_WITH_METRICS_ON and self.chosen_named(METRICS_ON_SCENARIO)
            )
            and not (
                scenario.name in (METRICS_ON_SCENARIO, *_LOADED_WITH_METRICS_ON)
                and level < SATURATED_CONNECTIONS
            )
        ]

    def closed_loop_rounds(self, servers: dict[str, Server], api_workers: list[int]) -> None:
        """Each scenario in rounds at each level, each round right after a baseline round."""
        for level, scenario in self.closed_loop_plan():
            instrumented = scenario.server == "api"
            profiler = None
            if self.args.profile and instrumented:
                seconds = 2 * self.args.rounds * self.args.duration
                profiler = start_profiler(
                    api_workers[0], self.run_dir, scenario.name, level, seconds
                )
            if self.probing and instrumented:
                read_probe(servers["api"], reset=True)
            if scenario.name == METRICS_ON_SCENARIO:
                self._metrics_rounds(servers, level)
            else:
                for _ in range(self.args.rounds):
                    self._paired_round(servers, scenario, level)
            if self.probing and instrumented:
                figures = read_probe(servers["api"], reset=True, done=True)
                self.probes.append(ProbeFigures(scenario.name, level, figures))
            if profiler is not None:
                profiler.wait(timeout=60)

    def _metrics_rounds(self, servers: dict[str, Server], level: int) -> None:
        """The metrics' on, off and A/A servers loaded at once, round after round, each by a
        wrk of its own at `level` connections, the servers sharing one CPU and the wrks the
        other (`Confinement`).

        At once, because what the box's neighbours do to a CPU then falls on all three alike
        and cancels in their ratios: one after another, one server's CPU per request moved by
        up to half between rounds, more than the few % the target must resolve. Each server's
        req/s is a third of what it serves alone.
        """
        names = [METRICS_ON_SCENARIO, *filter(self.chosen_named, _LOADED_WITH_METRICS_ON)]
        chosen = [(servers[self.scenario(name).server], self.scenario(name)) for name in names]
        tokens = chosen[0][1].tokens
        for _ in range(self.args.metrics_rounds):
            workers = [server.worker_pids() for server, _ in chosen]
            before = [cpu_seconds(pids) for pids in workers]
            results = run_wrk_at_once(
                self.wrk,
                [(server.base_url + scenario.path, level) for server, scenario in chosen],
                self.args.duration,
                self.tokens.get(tokens),
                self.rotations.start(tokens),
                chosen[0][0].confinement,
            )
            for (_, scenario), pids, cpu_before, result in zip(
                chosen, workers, before, results, strict=True
            ):
                cpu = cpu_seconds(pids) - cpu_before
                own = Measurement(scenario.name, level, result, server_cpu_s=cpu)
                self.measurements.append(own)
                print(
                    f"{scenario.name:>20} c={level:<3} {result.rps:>8,.0f} req/s"
                    f"  cpu {own.cpu_us_per_request or 0:5.1f} µs/req  errors {result.errors}"
                    "   (the three at once)",
                    flush=True,
                )

    def _paired_round(self, servers: dict[str, Server], scenario: Scenario, level: int) -> None:
        """A baseline round, then the scenario's."""
        seconds = self.args.duration
        before = self.measure(servers["baseline"], self.scenario("baseline"), level, seconds)
        server = servers[scenario.server]
        workers = server.worker_pids()
        cpu_before = cpu_seconds(workers)
        result = self.measure(server, scenario, level, seconds)
        cpu = cpu_seconds(workers) - cpu_before
        own = Measurement(scenario.name, level, result, baseline=before, server_cpu_s=cpu)
        self.measurements += [Measurement("baseline", level, before), own]
        print(
            f"{scenario.name:>20} c={level:<3} {result.rps:>8,.0f} req/s"
            f"  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
            f"  cpu {own.cpu_us_per_request or 0:5.0f} µs/req  errors {result.errors}"
            f"   baseline {before.rps:>8,.0f} req/s  p99 {before.p99_ms:7.2f} ms",
            flush=True,
        )

    def fixed_rate_rounds(self, servers: dict[str, Server]) -> None:
        """The tail scenarios at fixed shares of the capacities just measured."""
        wanted = [CONTROL_SCENARIO, *FIXED_RATE_SCENARIOS]
        names = [name for name in wanted if any(s.name == name for s in self.chosen)]
        capacities = BenchReport({}, {}, self.measurements, [])
        if not capacities.saturated_levels():
            print("no saturated level measured: no capacity, so no fixed-rate rounds")
            return
        loads = [load for load, _ in FIXED_RATE_LIMITS]
        own = self.args.rate_basis == "own"
        plan = fixed_rate_plan(capacities, names, loads, own_capacity=own)
        attempts = self.args.rate_attempts
        for load in loads:
            for attempt in range(1, attempts + 1):
                rounds = [
                    found
                    for name, at, rate in plan
                    if at == load
                    for found in self._rounds_at_rate(servers, name, load, rate)
                ]
                if attempt == attempts or not measure_again(rounds, load):
                    break
                self.fixed_rate_set_aside.append(rounds)
                print(f"{load:.0%}: too disturbed to tell, none failed: attempt {attempt + 1}")
            self.fixed_rate += rounds

    def _rounds_at_rate(
        self, servers: dict[str, Server], name: str, load: float, rate: float
    ) -> list[FixedRateRound]:
        """The scenario's rounds at `rate`, each right after a baseline round at it."""
        scenario = self.scenario(name)
        # The probe watches the API's own rounds only: its ticker runs for neither the
        # baseline's rounds nor the time between.
        probing = self.probing and scenario.server == "api"
        rounds = []
        for _ in range(self.args.rate_rounds):
            before, baseline_busy = self.at_rate(
                servers["baseline"], self.scenario("baseline"), rate
            )
            if probing:
                read_probe(servers["api"], reset=True)
            result, busy = self.at_rate(servers[scenario.server], scenario, rate)
            probe = read_probe(servers["api"], reset=True, done=True) if probing else None
            rounds.append(FixedRateRound(name, load, result, before, busy, baseline_busy, probe))
            print(
                f"{name:>20} {load:>4.0%} {rate:>8,.0f} req/s  p99 {result.p99_ms:8.2f} ms"
                f"  lag p99 {result.lag_p99_ms:5.2f} ms  baseline p99 "
                f"{before.p99_ms:8.2f} ms  busy {busy:.0%} / {baseline_busy:.0%}"
                f"{'' if result.held and before.held else '  BEHIND'}",
                flush=True,
            )
        return rounds


@dataclass
class Served:
    """What the main servers left behind: their workers' RSS and when the measuring began."""

    api_workers: list[int]
    samples: dict[int, list[tuple[float, int]]]
    split_at: float
    high_water: dict[int, int]

    def rss(self) -> list[RssSummary]:
        return [
            RssSummary.from_samples(self.samples[pid], self.split_at, self.high_water[pid])
            for pid in self.api_workers
        ]


def serve_and_measure(bench: Bench, env: dict[str, str]) -> Served:
    """Steps 1-4 of the module's docstring, the main servers up throughout."""
    args = bench.args
    api = start_server("api", args.api_app, env, args.workers, bench.run_dir)
    baseline = start_server("baseline", BASELINE_APP, env, args.workers, bench.run_dir)
    servers = {"api": api, "baseline": baseline}
    # Compared with each other on CPU per request, so each confined alike (`Confinement`).
    confined = confinement()
    for name, metrics in (
        (METRICS_ON_SERVER, "true"),
        (METRICS_OFF_SERVER, "false"),
        (METRICS_AA_SERVER, "true"),
    ):
        environment = {**env, "METRICS": metrics}
        servers[name] = start_server(
            name, args.api_app, environment, args.workers, bench.run_dir, confined
        )
    try:
        for server in servers.values():
            ready = "/" if server is baseline else "/health"
            wait_until_ok(server.base_url + ready, server.process)
        api_workers = api.worker_pids()
        with RssSampler(api_workers) as sampler:
            bench.warm_up(servers)
            split_at = time.monotonic()
            bench.closed_loop_rounds(servers, api_workers)
        # The RSS halves stay warm-up against closed-loop rounds, alike in work, as before.
        high_water = {pid: proc_status_bytes(pid, "VmHWM") or 0 for pid in api_workers}
        if not args.no_fixed_rate:
            bench.fixed_rate_rounds(servers)
        if args.hold:
            input(f"API at {api.base_url}, pids {api_workers}; Enter to finish ")
        if not args.no_scaling and not args.only and args.workers == 1:
            two_workers(bench, env)
            two_instances(bench, api, env)
    finally:
        for server in servers.values():
            server.stop()
    return Served(api_workers, sampler.samples, split_at, high_water)


def run(bench: Bench) -> BenchReport:
    """Load the database, serve and measure; the whole run as a report."""
    from tests.support.jwt_tokens import JWKSServer, shared_rsa_key

    args = bench.args
    scratch = REPO_ROOT / ".local" / "bench"
    scratch.mkdir(parents=True, exist_ok=True)
    with bench_database(scratch) as dsn, JWKSServer(shared_rsa_key("bench-signing-key")) as jwks:
        started = time.monotonic()
        loaded = asyncio.run(data.load(dsn, users=args.users, cases=args.cases))
        load_seconds = time.monotonic() - started
        print(
            f"loaded {loaded.users:,} users, {loaded.cases:,} cases in {load_seconds:.0f} s",
            flush=True,
        )
        with_cold = any(scenario.tokens == "cold" for scenario in bench.chosen)
        bench.tokens = mint_tokens(bench.run_dir, loaded.admin_sub, args.users, with_cold=with_cold)
        micro = asyncio.run(verify_micro(jwks.url, bench.tokens["admin"].read_text().strip()))
        served = serve_and_measure(bench, server_env(dsn, jwks.url))
        sql = sql_timings(dsn, loaded.users)
    settings = {
        "users": loaded.users,
        "cases": loaded.cases,
        "load_seconds": round(load_seconds, 1),
        **{name: getattr(args, name) for name in ("workers", "rounds", "warmup", "duration")},
        **{name: getattr(args, name) for name in ("rate_rounds", "rate_duration", "rate_basis")},
        "rate_attempts": args.rate_attempts,
        "metrics_rounds": args.metrics_rounds,
        "api_app": args.api_app,
        "connections": args.levels,
        "metrics_servers_confined": asdict(confined) if (confined := confinement()) else None,
    }
    return BenchReport(
        machine=machine_info(),
        settings=settings,
        measurements=bench.measurements,
        rss=served.rss(),
        sql=sql,
        notes=micro,
        probes=bench.probes,
        coherence=bench.coherence,
        scaling=bench.scaling,
        fixed_rate=bench.fixed_rate,
        fixed_rate_set_aside=bench.fixed_rate_set_aside,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = set(args.only.split(",")) if args.only else set()
    chosen = [s for s in scenarios(args.users) if not only or s.name in only | {"baseline"}]
    run_dir = args.out / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir.mkdir(parents=True)
    bench = Bench(args, ensure_wrk(), run_dir, chosen)
    report = run(bench)
    if args.only:
        print(tables(report))
        return 0
    return print_results(report, run_dir)


if __name__ == "__main__":
    sys.exit(main())
