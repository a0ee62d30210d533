"""`/metrics` of an instance with two web workers: one view, whichever worker answers the scrape.

The server is started as the image starts it (`python -m app.serve`, uvicorn with `--workers 2`,
`PROMETHEUS_MULTIPROC_DIR` set), on the migrated schema.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from app.core.metrics import FLUSH_INTERVAL_SECONDS
from tests.support.app_env import app_environment
from tests.support.database import REPO_ROOT

from .nginx_harness import run_uvicorn

REQUESTS = 300
ROUTE = "/health/live"


def served_by_each_process(directory: Path) -> list[float]:
    """Requests to ROUTE counted in each process's own file (public API: one file a registry)."""
    counts = []
    for file in sorted(directory.glob("counter_*.db")):
        alone = Path(tempfile.mkdtemp(prefix="onesys-metrics-one-"))
        try:
            shutil.copy(file, alone)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
            labels = {"route": ROUTE, "method": "GET", "status": "2xx"}
            counts.append(registry.get_sample_value("one_system_http_requests_total", labels) or 0)
        finally:
            shutil.rmtree(alone)
    return counts


def stale_count_from_an_earlier_run(directory: Path) -> None:
    """A process of an earlier run that counted 1000 requests, as its file would hold them."""
    script = (
        "from app.core import metrics\n"
        f"metrics.HTTP_REQUESTS.labels({ROUTE!r}, 'GET', '2xx').inc(1000)\n"
    )
    subprocess.run(
        [sys.executable, "-c", script],
        env={"PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(REPO_ROOT / "backend")},
        check=True,
        timeout=30,
    )


@pytest.fixture
def metrics_dir() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="onesys-metrics-"))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def two_workers(fresh_database_url: str, metrics_dir: Path) -> Iterator[str]:
    stale_count_from_an_earlier_run(metrics_dir)
    env = app_environment(
        fresh_database_url,
        "http://127.0.0.1:9/jwks.json",
        PROMETHEUS_MULTIPROC_DIR=str(metrics_dir),
        LOG_LEVEL="WARNING",
        APP_RELEASE="metrics-test",
    )
    args = ("--workers", "2", "--no-access-log")
    with run_uvicorn("app.main:app", args=args, env=env, launcher="app.serve") as port:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while len(list(metrics_dir.glob("counter_*.db"))) < 2 or not _answers(url):
            assert time.monotonic() < deadline, "the two workers did not start"
            time.sleep(0.2)
        yield url


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


async def _send(url: str, count: int, concurrency: int) -> None:
    async def one_connection_each(share: int) -> None:
        for _ in range(share):
            # A new connection per request, so the kernel hands them to either worker.
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                assert (await client.get(ROUTE)).status_code == 200

    await asyncio.gather(*(one_connection_each(count // concurrency) for _ in range(concurrency)))


async def test_one_scrape_counts_the_requests_of_both_workers(
    two_workers: str, metrics_dir: Path
) -> None:
    await _send(two_workers, REQUESTS, concurrency=20)
    # Each worker adds its requests to its file within a flush interval.
    deadline = time.monotonic() + 10 * FLUSH_INTERVAL_SECONDS
    while sum(per_process := served_by_each_process(metrics_dir)) < REQUESTS:
        assert time.monotonic() < deadline, per_process
        await asyncio.sleep(0.1)
    assert sum(1 for count in per_process if count > 0) == 2, per_process
    labels = {"route": ROUTE, "method": "GET", "status": "2xx"}
    async with httpx.AsyncClient(base_url=two_workers, timeout=10) as client:
        for _ in range(4):  # whichever worker answers, the same total
            scrape = await client.get("/metrics")
            assert scrape.status_code == 200
            registry_text = scrape.text
            line = f'one_system_http_requests_total{{method="GET",route="{ROUTE}",status="2xx"}}'
            values = [
                float(row.rsplit(" ", 1)[1])
                for row in registry_text.splitlines()
                if row.startswith(line)
            ]
            # The stale file of the earlier run was removed at start: exactly this run's.
            assert values == [float(REQUESTS)], (values, labels)
            assert 'one_system_release_info{release="metrics-test"' in registry_text
