"""Soak: mixed traffic at 50 connections against a real uvicorn server on PostgreSQL.

`make test` runs 10 s of it; `make soak` runs 60 s (SOAK_SECONDS) and prints the numbers.
Passes when every answer is the expected one (no transport error, no unexpected status), the
server's resident memory after warm-up stays flat, nothing is logged at ERROR and no token is
logged, and afterwards PostgreSQL sees the app's connections ('one-system-api') all idle and no
more of them than its pool allows.
"""

from __future__ import annotations

import asyncio
import os
import random
import statistics
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from app.core.roles import Role
from devtools.postgres import PsqlAdmin
from tests.support.database import cloned_database
from tests.support.harness import AppProcess, add_user, app_process, bearer
from tests.support.jwt_tokens import JWKSServer

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "10"))
CONNECTIONS = int(os.environ.get("SOAK_CONNECTIONS", "50"))
POOL_SIZE, MAX_OVERFLOW = 5, 2
# Growth of the server's RSS from the end of warm-up to the end; a leak of even a few hundred
# bytes per request passes this within a minute at these rates.
RSS_GROWTH_LIMIT_BYTES = 24 * 1024 * 1024


@pytest.fixture(scope="module")
async def soak_database(pg: PsqlAdmin, migrated_template: str) -> AsyncIterator[str]:
    async with cloned_database(pg, migrated_template, "soak") as url:
        yield url


@pytest.fixture(scope="module")
def server(soak_database: str, jwks_server: JWKSServer) -> Iterator[AppProcess]:
    """The app as uvicorn serves it, its pool at the size whose bound the test checks."""
    with app_process(
        soak_database,
        jwks_server.url,
        DB_POOL_SIZE=str(POOL_SIZE),
        DB_MAX_OVERFLOW=str(MAX_OVERFLOW),
        ENVIRONMENT="soak",
        LOG_LEVEL="WARNING",
    ) as running:
        yield running


@dataclass
class Tally:
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


@dataclass
class Traffic:
    admin: dict[str, str]
    dispatcher: dict[str, str]
    targets: list[str]
    etag: str = ""

    def requests(self, rng: random.Random) -> tuple[str, str, dict[str, Any], set[int]]:
        """One request of the mix: (label, method, httpx arguments, accepted statuses)."""
        roll = rng.random()
        caller = self.admin if rng.random() < 0.5 else self.dispatcher
        if roll < 0.08:
            return "health", "GET", {"url": "/health"}, {200}
        if roll < 0.12:
            return "live", "GET", {"url": "/health/live"}, {200}
        if roll < 0.35:
            return "me", "GET", {"url": "/api/v1/users/me", "headers": caller}, {200}
        if roll < 0.45:
            headers = {**caller, "If-None-Match": self.etag} if self.etag else caller
            url = "/api/v1/reference/service-types"
            return "service-types", "GET", {"url": url, "headers": headers}, {200, 304}
        if roll < 0.50:
            url = f"/api/v1/reference/complaint-types?service_type_id={rng.randint(1, 12)}"
            return "complaint-types", "GET", {"url": url, "headers": caller}, {200}
        if roll < 0.55:
            return (
                "handlers",
                "GET",
                {"url": "/api/v1/reference/handlers", "headers": caller},
                {200},
            )
        if roll < 0.60:
            url = "/api/v1/reference/provinces"
            return "provinces", "GET", {"url": url, "headers": caller}, {200}
        if roll < 0.70:
            params = {"q": rng.choice(["soak", "target", "x", "@example"]), "page_size": 5}
            return (
                "list",
                "GET",
                {"url": "/api/v1/users", "params": params, "headers": self.admin},
                {200},
            )
        if roll < 0.80:
            url = f"/api/v1/users/{rng.choice(self.targets)}"
            return "read", "GET", {"url": url, "headers": self.admin}, {200}
        if roll < 0.87:
            url = f"/api/v1/users/{rng.choice(self.targets)}"
            body = {"full_name": f"Soak Target {rng.randint(0, 10**6)}"}
            return "rename", "PUT", {"url": url, "json": body, "headers": self.admin}, {200}
        if roll < 0.93:
            url = "/api/v1/reference/sla-config"
            return "sla-forbidden", "GET", {"url": url, "headers": self.dispatcher}, {403}
        return "anonymous", "GET", {"url": "/api/v1/users/me"}, {401}


async def drive(
    client: httpx.AsyncClient, traffic: Traffic, seconds: float, seed: int, tally: Tally
) -> None:
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        label, method, arguments, accepted = traffic.requests(rng)
        started = time.perf_counter()
        try:
            response = await client.request(method, **arguments)
        except httpx.HTTPError as error:
            tally.unexpected.append(f"{label}: {type(error).__name__}")
            continue
        tally.latencies.append(time.perf_counter() - started)
        tally.statuses[(label, response.status_code)] += 1
        if response.status_code not in accepted:
            tally.unexpected.append(f"{label}: {response.status_code} {response.text[:200]}")
        if label == "service-types" and response.status_code == 200:
            traffic.etag = response.headers.get("ETag", "")


async def app_connections(database_url: str) -> list[str]:
    url = make_url(database_url)
    admin = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, database=url.database
    )
    try:
        rows = await admin.fetch(
            "SELECT state FROM pg_stat_activity "
            "WHERE application_name = 'one-system-api' AND datname = $1",
            url.database,
        )
    finally:
        await admin.close()
    return [str(row["state"]) for row in rows]


@pytest.mark.long
async def test_soak_mixed_traffic_at_fifty_connections(
    server: AppProcess, soak_database: str
) -> None:
    admin = await add_user(
        soak_database, Role.ADMIN, email=f"soak-admin-{uuid.uuid4().hex[:8]}@example.gov"
    )
    dispatcher = await add_user(soak_database, Role.DISPATCHER)
    targets = [str((await add_user(soak_database, Role.EXECUTIVE)).id) for _ in range(20)]
    traffic = Traffic(bearer(admin.cognito_user_id), bearer(dispatcher.cognito_user_id), targets)
    tally = Tally()
    limits = httpx.Limits(max_connections=CONNECTIONS, max_keepalive_connections=CONNECTIONS)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=15) as client:
        warmup = max(2.0, SOAK_SECONDS * 0.25)
        await asyncio.gather(
            *(drive(client, traffic, warmup, seed, Tally()) for seed in range(CONNECTIONS))
        )
        rss_after_warmup = server.rss_bytes()
        cpu_before, own_cpu_before = server.cpu_seconds(), time.process_time()
        started = time.monotonic()
        await asyncio.gather(
            *(
                drive(client, traffic, SOAK_SECONDS, 1000 + seed, tally)
                for seed in range(CONNECTIONS)
            )
        )
        elapsed = time.monotonic() - started
        rss_at_end = server.rss_bytes()
        server_cpu = server.cpu_seconds() - cpu_before
        client_cpu = time.process_time() - own_cpu_before

    await asyncio.sleep(0.5)  # the last responses' sessions return their connections
    states = await app_connections(soak_database)
    total = sum(tally.statuses.values())
    latencies = sorted(tally.latencies)
    print(
        f"\nsoak: {total} requests in {elapsed:.1f} s ({total / elapsed:.0f}/s) over "
        f"{CONNECTIONS} connections; latency p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99)] * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms; RSS {rss_after_warmup / 2**20:.1f} -> "
        f"{rss_at_end / 2**20:.1f} MiB; CPU server {server_cpu:.1f} s, load generator "
        f"{client_cpu:.1f} s; app connections after: {Counter(states)}"
    )
    print("statuses:", dict(sorted(tally.statuses.items())))
    assert tally.unexpected == [], tally.unexpected[:20]
    assert total > 0
    assert rss_at_end - rss_after_warmup < RSS_GROWTH_LIMIT_BYTES
    assert [state for state in states if state != "idle"] == []
    # The pool, plus the app's own: the user cache's listener and its heartbeat's sender,
    # /health's connection and the directory worker's.
    assert len(states) <= POOL_SIZE + MAX_OVERFLOW + 4
    log = server.log.read_text()
    assert '"level": "ERROR"' not in log, log[-3000:]
    for header in (traffic.admin, traffic.dispatcher):
        assert header["Authorization"].removeprefix("Bearer ") not in log
    assert server.process.poll() is None
