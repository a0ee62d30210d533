"""`make bench`: the API as production runs it, next to a bare baseline, under wrk.

One run: a throw-away embedded PostgreSQL (under `.local/bench/`), migrated and bulk-loaded
(100k users, 1M cases by default), a local JWKS server, the API (`uvicorn app.main:app`, the
production flags, JSON access log at INFO into a file) and the baseline (`bench.baseline_app`,
same server and flags), each with the same number of workers. Every scenario runs at each
concurrency level once to warm up (the run's first half), then in measured rounds (the second
half), each API round right after a baseline round at the same level, so that every ratio
compares neighbours (`bench.report` says how rounds become figures). The API worker's RSS is
sampled throughout.

Results go to `bench-results/<timestamp>/` (results.json, table.md, chart.png, the server
logs); the table and PASS/FAIL per target are printed; the exit status is 1 if any target
was missed.

    PYTHONPATH=backend python -m bench.run [--users N] [--cases N] [--duration S] ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx

from bench import data
from bench.report import (
    COHERENCE_BOUND_S,
    COLD_ME_SCENARIO,
    CONTROL_SCENARIO,
    BenchReport,
    CoherenceFigures,
    Measurement,
    ProbeFigures,
    RssSummary,
    ScalingRun,
    SqlTiming,
    TargetOutcome,
    WrkResult,
    evaluate_targets,
    format_probes,
    format_scaling,
    format_table,
    format_tails,
    format_targets,
    parse_wrk_output,
    to_json,
    write_chart,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
BACKEND = REPO_ROOT / "backend"
LUA_SCRIPT = Path(__file__).with_name("auth.lua")
PAGE_SIZE = 20
ME_TOKENS = 256
# The cold path: more distinct users than the user cache (10,000) and the verified-claims cache
# (1,024) hold, asked for in a rotation that continues from run to run, so every request
# verifies a token and reads its user.
COLD_TOKENS = 12_000
# Served by default: the production app plus the bench's instruments (`bench.probe`).
PROBED_APP = "bench.probe:app"
# What runs at 2 workers and on 2 instances beside the 1-worker figures.
SCALING_SCENARIOS = (
    "baseline",
    "health/live",
    "users/me",
    COLD_ME_SCENARIO,
    "service-types",
    "users first page",
)
COHERENCE_TRIALS = 100
COHERENCE_SUB_NUMBER = 3  # a dispatcher, active, outside the rotations above
# The production command line of the Dockerfile, less host and port.
UVICORN_FLAGS = [
    "--proxy-headers",
    "--timeout-keep-alive",
    "15",
    "--timeout-graceful-shutdown",
    "20",
    "--no-server-header",
]


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    server: str  # "api" or "baseline"
    path: str
    tokens: str  # "admin", "users" or "none"


def scenarios(users: int) -> list[Scenario]:
    last_page = math.ceil(users / PAGE_SIZE)
    users_path = "/api/v1/users?"
    return [
        Scenario("baseline", "baseline", "/", "admin"),
        # The baseline against its own neighbouring rounds: how far this box alone moves a ratio.
        Scenario(CONTROL_SCENARIO, "baseline", "/", "admin"),
        Scenario("health/live", "api", "/health/live", "admin"),
        Scenario("users/me", "api", "/api/v1/users/me", "users"),
        Scenario(COLD_ME_SCENARIO, "api", "/api/v1/users/me", "cold"),
        Scenario("service-types", "api", "/api/v1/reference/service-types", "users"),
        Scenario("users first page", "api", users_path + urlencode({"page": 1}), "admin"),
        Scenario(
            "users middle page",
            "api",
            users_path + urlencode({"page": max(1, last_page // 2)}),
            "admin",
        ),
        Scenario("users last page", "api", users_path + urlencode({"page": last_page}), "admin"),
        Scenario(
            "users role+province",
            "api",
            users_path + urlencode({"role": "OFFICER", "province": data.province_name(7)}),
            "admin",
        ),
        Scenario("users q", "api", users_path + urlencode({"q": "user1234"}), "admin"),
        Scenario("provinces", "api", "/api/v1/reference/provinces", "users"),
    ]


# ---------------------------------------------------------------------------------------------
# Machine and tools


def machine_info() -> dict[str, Any]:
    cpu_model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    ram_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram_gib = int(line.split()[1]) / 1024 / 1024
    return {
        "cores": os.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gib": round(ram_gib, 1),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() != 0:
        raise SystemExit(
            "wrk is not installed; install the `wrk` package (e.g. apt-get install wrk)"
        )
    print("installing wrk ...", flush=True)
    install = ["apt-get", "install", "-y", "-qq", "wrk"]
    if subprocess.run(install, check=False).returncode != 0:  # noqa: S603 - constant command
        subprocess.run(["apt-get", "update", "-qq"], check=True)  # noqa: S607
        subprocess.run(install, check=True)  # noqa: S603
    found = shutil.which("wrk")
    if not found:
        raise SystemExit("wrk could not be installed")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# ---------------------------------------------------------------------------------------------
# Database


@contextlib.contextmanager
def bench_database(run_root: Path) -> Iterator[str]:
    """A fresh embedded PostgreSQL with a migrated `bench` database; yields its asyncpg DSN."""
    from alembic import command
    from alembic.config import Config

    from devtools.postgres import EmbeddedPostgres

    data_dir = Path(tempfile.mkdtemp(prefix="pg-", dir=run_root))
    server = EmbeddedPostgres(data_dir, durable=False)
    try:
        server.start()
        server.create_database("bench")
        config = Config(str(REPO_ROOT / "alembic.ini"))
        config.set_main_option("sqlalchemy.url", server.url("bench").replace("%", "%%"))
        config.attributes["configure_logger"] = False
        command.upgrade(config, "head")
        yield f"postgresql://postgres@127.0.0.1:{server.port}/bench"
    finally:
        server.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


async def time_sql(dsn: str, statement: str, samples: int) -> float:
    connection = await asyncpg.connect(dsn)
    try:
        await connection.fetch(statement)  # warm the buffer cache and the plan
        durations = []
        for _ in range(samples):
            started = time.perf_counter()
            await connection.fetch(statement)
            durations.append((time.perf_counter() - started) * 1000)
    finally:
        await connection.close()
    return statistics.median(durations)


def users_list_sql(users: int) -> list[tuple[str, str]]:
    page = "SELECT * FROM users ORDER BY created_at DESC, id DESC LIMIT 20 OFFSET {}"
    last_offset = (math.ceil(users / PAGE_SIZE) - 1) * PAGE_SIZE
    return [
        ("users count(*)", "SELECT count(*) FROM users"),
        ("users first page", page.format(0)),
        ("users last page", page.format(last_offset)),
    ]


def provinces_sql() -> str:
    from sqlalchemy.dialects import postgresql

    from app.services.reference import DISTINCT_PROVINCES

    compiled = DISTINCT_PROVINCES.compile(
        dialect=postgresql.dialect(),  # type: ignore[no-untyped-call]
        compile_kwargs={"literal_binds": True},
    )
    return str(compiled)


# ---------------------------------------------------------------------------------------------
# Servers


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: uvicorn itself, or its children with --workers."""
        try:
            children = (
                Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
                .read_text()
                .split()
            )
        except OSError:
            children = []
        workers = [int(pid) for pid in children if _is_python(int(pid))]
        return workers or [self.process.pid]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=25)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _is_python(pid: int) -> bool:
    try:
        return b"python" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def start_server(
    name: str, app_path: str, env: dict[str, str], workers: int, log_dir: Path
) -> Server:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", app_path, "--host", "127.0.0.1"]
    command += ["--port", str(port), *UVICORN_FLAGS, "--workers", str(workers)]
    with (log_dir / f"{name}.log").open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            command, env=env, cwd=log_dir, stdout=log, stderr=subprocess.STDOUT
        )
    return Server(name, port, process)


def wait_until_ok(url: str, process: subprocess.Popen[bytes], within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited while starting ({url}); see its log")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our loopback
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not answer 200 within {within:.0f} s")


def server_env(dsn: str, jwks_url: str) -> dict[str, str]:
    from tests.support.app_env import app_environment

    return app_environment(
        dsn,
        jwks_url,
        PYTHONPATH=str(BACKEND),
        ENVIRONMENT="bench",
        LOG_LEVEL="INFO",
        # As docker-compose.prod.yml runs it: Nginx writes the access log there.
        ACCESS_LOG="false",
        FORWARDED_ALLOW_IPS="127.0.0.1",
    )


class RssSampler:
    """Samples VmRSS of some processes every `interval` seconds in a background thread."""

    def __init__(self, pids: list[int], interval: float = 0.2) -> None:
        self.pids = pids
        self.samples: dict[int, list[tuple[float, int]]] = {pid: [] for pid in pids}
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                rss = proc_status_bytes(pid, "VmRSS")
                if rss is not None:
                    self.samples[pid].append((time.monotonic(), rss))
            self._stop.wait(self._interval)


def proc_status_bytes(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# ---------------------------------------------------------------------------------------------
# Load


def wrk_command(
    wrk: str,
    url: str,
    connections: int,
    seconds: int,
    tokens_file: Path | None,
    tokens_start: int | None = None,
) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ}
    env.pop("BENCH_TOKENS_FILE", None)
    env.pop("BENCH_TOKENS_START", None)
    if tokens_file is not None:
        env["BENCH_TOKENS_FILE"] = str(tokens_file)
    if tokens_start is not None:
        env["BENCH_TOKENS_START"] = str(tokens_start)
    # One wrk thread is plenty against one Python worker, and leaves it the other core.
    threads = 1
    command = [wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s"]
    command += ["--timeout", "10s", "-s", str(LUA_SCRIPT), url]
    return command, env


def run_wrk(
    wrk: str,
    url: str,
    connections: int,
    seconds: int,
    tokens_file: Path | None,
    tokens_start: int | None = None,
) -> str:
    command, env = wrk_command(wrk, url, connections, seconds, tokens_file, tokens_start)
    completed = subprocess.run(  # noqa: S603 - wrk against our own loopback servers
        command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if completed.returncode != 0:
        raise SystemExit(
            f"wrk failed ({completed.returncode}): {completed.stdout}{completed.stderr}"
        )
    return completed.stdout


def run_wrk_pair(
    wrk: str,
    urls: tuple[str, str],
    connections: int,
    seconds: int,
    tokens_file: Path | None,
    tokens_start: int | None,
) -> WrkResult:
    """Two wrk processes at once, one per instance, `connections` split between them."""
    processes = []
    for index, url in enumerate(urls):
        share = connections // 2 + (connections % 2 if index == 0 else 0)
        command, env = wrk_command(wrk, url, share, seconds, tokens_file, tokens_start)
        processes.append(
            subprocess.Popen(  # noqa: S603 - wrk against our own loopback servers
                command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    results = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=seconds + 60)
        if process.returncode != 0:
            raise SystemExit(f"wrk failed ({process.returncode}): {stdout}{stderr}")
        results.append(parse_wrk_output(stdout))
    first, second = results
    # Throughput adds up; of the percentiles, the worse instance's is the honest one to show.
    return WrkResult(
        requests=first.requests + second.requests,
        duration_s=max(first.duration_s, second.duration_s),
        non2xx=first.non2xx + second.non2xx,
        socket_errors=first.socket_errors + second.socket_errors,
        p50_ms=max(first.p50_ms, second.p50_ms),
        p90_ms=max(first.p90_ms, second.p90_ms),
        p99_ms=max(first.p99_ms, second.p99_ms),
        max_ms=max(first.max_ms, second.max_ms),
        mean_ms=(first.mean_ms + second.mean_ms) / 2,
    )


def read_probe(server: Server, *, reset: bool) -> dict[str, Any]:
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        response = client.get("/__bench/probe", params={"reset": reset})
        response.raise_for_status()
        figures: dict[str, Any] = response.json()
        return figures


def coherence_trials(a: Server, b: Server, sub: str, token: str, trials: int) -> CoherenceFigures:
    """Deactivate a user through A, poll B with the user's token until it refuses; reactivate.

    The delay runs from A's answer (its transaction committed before it answered) to B's first
    401. B holds the user in its cache at the start of every trial (a 200 just before).
    """
    me = "/api/v1/users/me"
    headers = {"Authorization": f"Bearer {token}"}
    delays: list[float] = []
    refused = 0
    with (
        httpx.Client(base_url=a.base_url, timeout=10) as client_a,
        httpx.Client(base_url=b.base_url, timeout=10) as client_b,
    ):

        def set_active(active: bool) -> None:
            url = f"/__bench/users/{sub}/active"
            client_a.post(url, params={"active": active}).raise_for_status()

        def b_answers(status: int, within: float) -> float | None:
            started = time.perf_counter()
            while time.perf_counter() - started < within:
                if client_b.get(me, headers=headers).status_code == status:
                    return time.perf_counter() - started
            return None

        for _ in range(trials):
            if b_answers(200, COHERENCE_BOUND_S) is None:
                raise SystemExit("instance B does not accept the coherence user's token")
            set_active(False)
            delay = b_answers(401, COHERENCE_BOUND_S)
            delays.append(COHERENCE_BOUND_S if delay is None else delay)
            refused += delay is not None
            set_active(True)
    return CoherenceFigures(delays_s=delays, refused=refused)


def start_profiler(
    pid: int, run_dir: Path, scenario: str, level: int, seconds: int
) -> subprocess.Popen[bytes]:
    """py-spy (bench extra) sampling `pid` for `seconds`, as collapsed stacks in the run dir."""
    py_spy = Path(sys.executable).with_name("py-spy")
    name = scenario.replace("/", "-").replace(" ", "-")
    output = run_dir / f"profile-{name}-c{level}.txt"
    command = [str(py_spy), "record", "--pid", str(pid), "--duration", str(seconds)]
    command += ["--rate", "250", "--format", "raw", "--nonblocking", "--output", str(output)]
    return subprocess.Popen(  # noqa: S603 - our own tool and arguments
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def active_numbers(users: int, count: int, *, skip: frozenset[int] = frozenset()) -> list[int]:
    """`count` active user rows spread over the table, all roles."""
    step = max(1, users // count)
    numbers = [
        n
        for n in range(1, users + 1, step)
        if (n == 1 or n % data.INACTIVE_EVERY) and n not in skip
    ]
    return numbers[:count]


def mint_tokens(
    run_dir: Path, admin_sub: str, users: int, *, with_cold: bool = True
) -> dict[str, Path]:
    from tests.support.jwt_tokens import access_token_claims, mint_token, shared_rsa_key

    key = shared_rsa_key("bench-signing-key")

    def token(sub: str) -> str:
        return mint_token(
            access_token_claims({"sub": sub, "username": sub}, lifetime=6 * 3600), key
        )

    # Active users spread over the table, all roles: /users/me and the reference lists are
    # asked for by many callers, not one.
    numbers = active_numbers(users, ME_TOKENS, skip=frozenset({COHERENCE_SUB_NUMBER}))
    # Every active user but the warm set and the coherence user, in table order.
    cold = (
        []
        if not with_cold
        else [
            n
            for n in range(1, users + 1)
            if n % data.INACTIVE_EVERY and n not in numbers and n != COHERENCE_SUB_NUMBER
        ][:COLD_TOKENS]
    )
    if with_cold and len(cold) < COLD_TOKENS:
        raise SystemExit(
            f"the cold-cache scenario needs --users of at least {COLD_TOKENS * 1.1:,.0f}"
        )
    files = {
        "admin": run_dir / "tokens-admin.txt",
        "users": run_dir / "tokens-users.txt",
        "cold": run_dir / "tokens-cold.txt",
        "coherence": run_dir / "tokens-coherence.txt",
    }
    files["admin"].write_text(token(admin_sub) + "\n")
    files["users"].write_text("".join(token(data.bench_sub(n)) + "\n" for n in numbers))
    files["cold"].write_text("".join(token(data.bench_sub(n)) + "\n" for n in cold))
    files["coherence"].write_text(token(data.bench_sub(COHERENCE_SUB_NUMBER)) + "\n")
    return files


async def verify_micro(jwks_url: str, token: str, rounds: int = 2000) -> dict[str, float]:
    """Mean cost of AccessTokenVerifier.verify with and without its verified-claims cache."""
    from app.core.jwks import JWKSCache
    from app.core.tokens import AccessTokenVerifier
    from tests.support.jwt_tokens import TEST_CLIENT_ID, TEST_ISSUER

    jwks = JWKSCache(jwks_url)
    results: dict[str, float] = {}
    try:
        for label, size in (("verify_uncached_us", 0), ("verify_cached_us", 1024)):
            verifier = AccessTokenVerifier(
                jwks, issuer=TEST_ISSUER, client_id=TEST_CLIENT_ID, claims_cache_size=size
            )
            await verifier.verify(token)
            started = time.perf_counter()
            for _ in range(rounds):
                await verifier.verify(token)
            results[label] = round((time.perf_counter() - started) / rounds * 1e6, 1)
    finally:
        await jwks.aclose()
    return results


class Rotations:
    """Where each token file's rotation stands: the cold scenario never repeats a token soon."""

    def __init__(self) -> None:
        self._served: dict[str, int] = {}

    def start(self, tokens: str) -> int | None:
        return self._served.get(tokens, 0) if tokens == "cold" else None

    def advance(self, tokens: str, result: WrkResult) -> None:
        if tokens == "cold":
            self._served[tokens] = self._served.get(tokens, 0) + result.requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--connections", default="1,16,64", help="comma-separated levels")
    parser.add_argument("--duration", type=int, default=2, help="seconds per measured round")
    parser.add_argument(
        "--rounds", type=int, default=5, help="measured rounds per scenario and level"
    )
    parser.add_argument("--warmup", type=int, default=2, help="seconds per warm-up run")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers, both servers")
    parser.add_argument("--only", default="", help="comma-separated scenario names (debugging)")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy the API worker in each measured API run"
    )
    parser.add_argument(
        "--no-probe",
        action="store_true",
        help="serve app.main:app without the bench's instruments (bench.probe)",
    )
    parser.add_argument(
        "--no-scaling",
        action="store_true",
        help="skip the 2-worker and 2-instance runs and the coherence trials",
    )
    parser.add_argument("--hold", action="store_true", help="keep servers up after the load")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench-results")
    args = parser.parse_args(argv)
    levels = [int(level) for level in args.connections.split(",")]
    saturated = [level for level in levels if level >= 16]
    api_app = "app.main:app" if args.no_probe else PROBED_APP

    from tests.support.jwt_tokens import JWKSServer, shared_rsa_key

    wrk = ensure_wrk()
    run_dir = args.out / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir.mkdir(parents=True)
    scratch = REPO_ROOT / ".local" / "bench"
    scratch.mkdir(parents=True, exist_ok=True)
    chosen = [
        s
        for s in scenarios(args.users)
        if not args.only or s.name in args.only.split(",") or s.name == "baseline"
    ]
    baseline_scenario = next(s for s in chosen if s.name == "baseline")
    rotations = Rotations()

    def measure(
        server: Server, scenario: Scenario, level: int, seconds: int, tokens: dict[str, Path]
    ) -> WrkResult:
        url = server.base_url + scenario.path
        output = run_wrk(
            wrk, url, level, seconds, tokens.get(scenario.tokens), rotations.start(scenario.tokens)
        )
        result = parse_wrk_output(output)
        rotations.advance(scenario.tokens, result)
        return result

    scaling: list[ScalingRun] = []

    def record_scaling(scenario: Scenario, level: int, layout: str, result: WrkResult) -> None:
        scaling.append(ScalingRun(scenario.name, level, layout, result))
        print(
            f"{scenario.name:>20} c={level:<3} {layout} "
            f"{result.rps:>8,.0f} req/s  p99 {result.p99_ms:7.2f} ms",
            flush=True,
        )

    with bench_database(scratch) as dsn, JWKSServer(shared_rsa_key("bench-signing-key")) as jwks:
        started = time.monotonic()
        loaded = asyncio.run(data.load(dsn, users=args.users, cases=args.cases))
        load_seconds = time.monotonic() - started
        print(
            f"loaded {loaded.users:,} users and {loaded.cases:,} cases in {load_seconds:.0f} s",
            flush=True,
        )
        tokens = mint_tokens(
            run_dir,
            loaded.admin_sub,
            args.users,
            with_cold=any(scenario.tokens == "cold" for scenario in chosen),
        )
        admin_token = tokens["admin"].read_text().strip()
        micro = asyncio.run(verify_micro(jwks.url, admin_token))

        env = server_env(dsn, jwks.url)
        api = start_server("api", api_app, env, args.workers, run_dir)
        baseline = start_server("baseline", "bench.baseline_app:app", env, args.workers, run_dir)
        servers = {"api": api, "baseline": baseline}
        measurements: list[Measurement] = []
        probes: list[ProbeFigures] = []
        coherence: CoherenceFigures | None = None
        probing = not args.no_probe and args.workers == 1
        try:
            wait_until_ok(api.base_url + "/health", api.process)
            wait_until_ok(baseline.base_url + "/", baseline.process)
            api_workers = api.worker_pids()
            with RssSampler(api_workers) as sampler:
                # Warm-up: every scenario once at each level (the run's first half).
                for level in levels:
                    for scenario in chosen:
                        if scenario.name == CONTROL_SCENARIO:
                            continue
                        result = measure(
                            servers[scenario.server], scenario, level, args.warmup, tokens
                        )
                        measurements.append(Measurement(scenario.name, level, result, True))
                split_at = time.monotonic()
                # Measured: each scenario in rounds, each right after a baseline round.
                for level in levels:
                    for scenario in chosen:
                        if scenario.name == "baseline":
                            continue
                        instrumented = scenario.server == "api"
                        profiler = None
                        if args.profile and instrumented:
                            profiler = start_profiler(
                                api_workers[0],
                                run_dir,
                                scenario.name,
                                level,
                                2 * args.rounds * args.duration,
                            )
                        if probing and instrumented:
                            read_probe(api, reset=True)
                        for _ in range(args.rounds):
                            before = measure(
                                baseline, baseline_scenario, level, args.duration, tokens
                            )
                            result = measure(
                                servers[scenario.server], scenario, level, args.duration, tokens
                            )
                            measurements.append(Measurement("baseline", level, before))
                            measurements.append(
                                Measurement(scenario.name, level, result, baseline=before)
                            )
                            print(
                                f"{scenario.name:>20} c={level:<3} {result.rps:>8,.0f} req/s"
                                f"  p50 {result.p50_ms:7.2f} ms  p99 {result.p99_ms:7.2f} ms"
                                f"  errors {result.errors}   baseline {before.rps:>8,.0f} req/s"
                                f"  p99 {before.p99_ms:7.2f} ms",
                                flush=True,
                            )
                        if probing and instrumented:
                            figures = read_probe(api, reset=True)
                            probes.append(ProbeFigures(scenario.name, level, figures))
                        if profiler is not None:
                            profiler.wait(timeout=60)
                if args.hold:
                    input(f"API at {api.base_url}, pids {api_workers}; Enter to finish ")
            high_water = {pid: proc_status_bytes(pid, "VmHWM") or 0 for pid in api_workers}

            if not args.no_scaling and not args.only and args.workers == 1:
                scaled = [s for s in chosen if s.name in SCALING_SCENARIOS]
                # The same scenarios with two workers per server: one process per core.
                api2 = start_server("api-2-workers", api_app, env, 2, run_dir)
                baseline2 = start_server(
                    "baseline-2-workers", "bench.baseline_app:app", env, 2, run_dir
                )
                try:
                    wait_until_ok(api2.base_url + "/health", api2.process)
                    wait_until_ok(baseline2.base_url + "/", baseline2.process)
                    doubled = {"api": api2, "baseline": baseline2}
                    for warmup in (True, False):
                        for level in saturated:
                            for scenario in scaled:
                                seconds = args.warmup if warmup else args.duration
                                result = measure(
                                    doubled[scenario.server], scenario, level, seconds, tokens
                                )
                                if not warmup:
                                    record_scaling(scenario, level, "2 workers", result)
                finally:
                    api2.stop()
                    baseline2.stop()

                # A second instance of one worker on the same database: throughput through
                # both at once, then how soon one refuses a user the other deactivated.
                second = start_server("api-instance-b", api_app, env, 1, run_dir)
                try:
                    wait_until_ok(second.base_url + "/health", second.process)
                    pair = (api.base_url, second.base_url)
                    for warmup in (True, False):
                        for level in saturated:
                            for scenario in scaled:
                                if scenario.server != "api":
                                    continue
                                urls = (pair[0] + scenario.path, pair[1] + scenario.path)
                                seconds = args.warmup if warmup else args.duration
                                result = run_wrk_pair(
                                    wrk,
                                    urls,
                                    level,
                                    seconds,
                                    tokens.get(scenario.tokens),
                                    rotations.start(scenario.tokens),
                                )
                                rotations.advance(scenario.tokens, result)
                                if not warmup:
                                    record_scaling(scenario, level, "2 instances", result)
                    if probing:
                        coherence = coherence_trials(
                            api,
                            second,
                            data.bench_sub(COHERENCE_SUB_NUMBER),
                            tokens["coherence"].read_text().strip(),
                            COHERENCE_TRIALS,
                        )
                        print(f"coherence: {coherence.summary()}", flush=True)
                finally:
                    second.stop()
        finally:
            api.stop()
            baseline.stop()

        sql = [
            SqlTiming(
                "naive DISTINCT",
                asyncio.run(
                    time_sql(dsn, "SELECT DISTINCT province FROM cases ORDER BY province", 10)
                ),
                10,
            ),
            SqlTiming("loose index scan", asyncio.run(time_sql(dsn, provinces_sql(), 200)), 200),
            # What the user list's pages cost in SQL alone: the count every page runs, and
            # the page query at the first and the last OFFSET.
            *[
                SqlTiming(name, asyncio.run(time_sql(dsn, statement, 50)), 50)
                for name, statement in users_list_sql(loaded.users)
            ],
        ]

    report = BenchReport(
        machine=machine_info(),
        settings={
            "users": loaded.users,
            "cases": loaded.cases,
            "workers": args.workers,
            "connections": levels,
            "duration_s": args.duration,
            "rounds": args.rounds,
            "warmup_s": args.warmup,
            "load_seconds": round(load_seconds, 1),
            "app": api_app,
        },
        measurements=measurements,
        rss=[
            RssSummary.from_samples(sampler.samples[pid], split_at, high_water[pid])
            for pid in api_workers
        ],
        sql=sql,
        notes=micro,
        probes=probes,
        scaling=scaling,
        coherence=coherence,
    )
    if args.only:
        print(format_table(report))
        if saturated:
            print()
            print(format_tails(report))
        if probes:
            print()
            print(format_probes(report))
        return 0
    try:
        outcomes = evaluate_targets(report)
    except KeyError as missing:
        # A shortened run (other --connections): the tables, but no verdict.
        outcomes = [TargetOutcome("every target measured", False, f"{missing}")]
    sections = [format_table(report), format_tails(report)]
    if probes:
        sections.append(format_probes(report))
    if scaling:
        sections.append(format_scaling(report))
    table = "\n\n".join(sections)
    (run_dir / "table.md").write_text(table + "\n")
    (run_dir / "results.json").write_text(json.dumps(to_json(report, outcomes), indent=2) + "\n")
    write_chart(report, run_dir / "chart.png")
    print()
    print(table)
    print()
    for timing in sql:
        print(f"SQL {timing.name}: p50 {timing.p50_ms:.2f} ms over {timing.samples} runs")
    print(f"AccessTokenVerifier.verify: {micro}")
    for pid, rss in zip(api_workers, report.rss, strict=True):
        print(
            f"API worker {pid}: peak RSS {rss.peak_mib:.1f} MiB; halves "
            f"{rss.first_half_peak_mib:.1f} -> {rss.second_half_peak_mib:.1f} MiB"
        )
    if coherence is not None:
        print(f"coherence (deactivated through A, refused by B): {coherence.summary()}")
    print()
    print(format_targets(outcomes))
    print(f"\nresults in {run_dir}")
    return 0 if all(outcome.passed for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
