"""The servers under load: the API and the baseline under uvicorn, their workers' RSS, the box.

Both are started as the Dockerfile starts the API (the same flags, less host and port), each on
a free loopback port, with their output in the run's directory.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
BACKEND = REPO_ROOT / "backend"
BASELINE_APP = "bench.baseline_app:app"
# The production command line of the Dockerfile, less host and port.
UVICORN_FLAGS = [
    "--proxy-headers",
    "--timeout-keep-alive",
    "15",
    "--timeout-graceful-shutdown",
    "20",
    "--no-server-header",
]


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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True, slots=True)
class Confinement:
    """Servers on one CPU and their load generators on another, each server's memory laid out
    and its strings hashed the same way at every start.

    For servers compared with each other on CPU per request, loaded at once (the metrics' on,
    off and A/A, `Bench._metrics_rounds`): sharing a CPU, they share what the box does to it;
    and two identical servers started without this differed by 4 % from their address space
    layouts and hash seeds alone, near the 5 % the comparison must resolve
    (docs/performance.md).
    """

    server_cpu: int
    client_cpu: int

    def server_command(self, command: list[str]) -> list[str]:
        # taskset and setarch are util-linux's; -R turns address space randomisation off.
        pinned = ["taskset", "--cpu-list", str(self.server_cpu)]
        return [*pinned, "setarch", platform.machine(), "-R", *command]

    def client_command(self, command: list[str]) -> list[str]:
        return ["taskset", "--cpu-list", str(self.client_cpu), *command]

    @staticmethod
    def server_env(env: dict[str, str]) -> dict[str, str]:
        return {**env, "PYTHONHASHSEED": "0"}


def confinement() -> Confinement | None:
    """The last CPU this process may use for servers, the first for load; None on one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    return Confinement(cpus[-1], cpus[0]) if len(cpus) > 1 else None


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    confinement: Confinement | None = None

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
    name: str,
    app_path: str,
    env: dict[str, str],
    workers: int,
    log_dir: Path,
    confined: Confinement | None = None,
) -> Server:
    port = free_port()
    # As the image starts it: app.serve empties the metrics directory, then runs uvicorn.
    command = [sys.executable, "-m", "app.serve", app_path, "--host", "127.0.0.1"]
    command += ["--port", str(port), *UVICORN_FLAGS, "--workers", str(workers)]
    if confined is not None:
        command, env = confined.server_command(command), confined.server_env(env)
    metrics_dir = log_dir / f"{name}-metrics"
    with (log_dir / f"{name}.log").open("wb") as log:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            command,
            env={**env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
            cwd=log_dir,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Server(name, port, process, confined)


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


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of the processes' threads so far: the first field of each thread's
    /proc/<pid>/task/<tid>/schedstat (time on a CPU, in ns), where /proc/<pid>/stat counts in
    clock ticks (10 ms, 2 % of a 1 s round's CPU). The servers' threads live as long as they do.
    """
    nanoseconds = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):  # a thread that ended meanwhile
                nanoseconds += int((task / "schedstat").read_text().split()[0])
    return nanoseconds / 1e9


def proc_status_bytes(pid: int, field: str) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
