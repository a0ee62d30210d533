"""wrk, the closed-loop load: its command line, its runs and its summary line.

Each wrk connection sends its next request when the previous answer arrives, so under
saturation it measures throughput (and a p99 that is mostly queueing); `bench.openloop` is the
fixed-rate counterpart for tails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.servers import Confinement

LUA_SCRIPT = Path(__file__).with_name("auth.lua")
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


def wrk_command(
    wrk: str,
    url: str,
    connections: int,
    seconds: int,
    tokens_file: Path | None,
    tokens_start: int | None = None,
    confined: Confinement | None = None,
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
    return (command if confined is None else confined.client_command(command)), env


def run_wrk(
    wrk: str,
    url: str,
    connections: int,
    seconds: int,
    tokens_file: Path | None,
    tokens_start: int | None = None,
    confined: Confinement | None = None,
) -> str:
    command, env = wrk_command(wrk, url, connections, seconds, tokens_file, tokens_start, confined)
    completed = subprocess.run(  # noqa: S603 - wrk against our own loopback servers
        command, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if completed.returncode != 0:
        raise SystemExit(
            f"wrk failed ({completed.returncode}): {completed.stdout}{completed.stderr}"
        )
    return completed.stdout


def run_wrk_at_once(
    wrk: str,
    loads: Sequence[tuple[str, int]],
    seconds: int,
    tokens_file: Path | None,
    tokens_start: int | None,
    confined: Confinement | None = None,
) -> list[WrkResult]:
    """One wrk process per (url, connections), all at once; their results in that order."""
    processes = []
    for url, connections in loads:
        command, env = wrk_command(
            wrk, url, connections, seconds, tokens_file, tokens_start, confined
        )
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
    return results


def run_wrk_pair(
    wrk: str,
    urls: tuple[str, str],
    connections: int,
    seconds: int,
    tokens_file: Path | None,
    tokens_start: int | None,
) -> WrkResult:
    """Two wrk processes at once, one per instance, `connections` split between them."""
    shares = (connections // 2 + connections % 2, connections // 2)
    first, second = run_wrk_at_once(
        wrk, list(zip(urls, shares, strict=True)), seconds, tokens_file, tokens_start
    )
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
