"""Measurements beside the load: the probe's figures, coherence between two instances, py-spy,
and the token verifier's cost in process."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.report import COHERENCE_BOUND_S, CoherenceFigures
from bench.servers import Server


def read_probe(server: Server, *, reset: bool, done: bool = False) -> dict[str, Any]:
    """The server's probe figures; it watches its loop from the first read until a `done` one."""
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        response = client.get("/__bench/probe", params={"reset": reset, "done": done})
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
