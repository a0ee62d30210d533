"""JWKS faults at runtime, through the whole app: the key server goes down, hangs, serves garbage
or rotates its keys while requests arrive.

Known keys keep verifying whatever the key server does; a new key costs one fetch; no request
waits longer than the fetch timeout; an unknown key that cannot be looked up is a 503, not a 500.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Iterator

import pytest

import app.main
from app.core.jwks import JWKSCache
from app.core.roles import Role
from tests.hardening.faults import timed
from tests.support.harness import LiveApp, add_user, bearer, live_app, make_settings
from tests.support.jwt_tokens import JWKSServer, shared_rsa_key

ME = "/api/v1/users/me"
OLD_KID, NEW_KID = "hardening-old", "hardening-new"
FETCH_TIMEOUT = 3.0  # JWKSCache's default, what the app uses
FAST = 1.0  # a request that needs no fetch; generous for a loaded machine
REFETCH_INTERVAL = 0.5


@pytest.fixture
def key_server() -> Iterator[JWKSServer]:
    with JWKSServer(shared_rsa_key(OLD_KID)) as server:
        yield server


@pytest.fixture
async def running(
    fresh_database_url: str, key_server: JWKSServer, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[LiveApp, str]]:
    # The penalty window for unknown kids (10 s) shortened, so a test can rotate right after
    # startup; everything else is the app's own key cache.
    monkeypatch.setattr(
        app.main, "JWKSCache", functools.partial(JWKSCache, refetch_interval=REFETCH_INTERVAL)
    )
    user = await add_user(fresh_database_url, Role.DISPATCHER)
    settings = make_settings(fresh_database_url, cognito_jwks_url=key_server.url)
    async with live_app(settings) as live:
        response = await live.client.get(ME, headers=bearer(user.cognito_user_id, kid=OLD_KID))
        assert response.status_code == 200, response.text
        yield live, user.cognito_user_id


async def test_known_keys_keep_verifying_whatever_the_key_server_does(
    running: tuple[LiveApp, str], key_server: JWKSServer
) -> None:
    live, sub = running
    fetches = key_server.request_count
    faults = {
        "error status": lambda: key_server.serve_status(500),
        "garbage": lambda: key_server.serve_body(b"<html>not json"),
        "no keys": lambda: key_server.serve_json({"keys": []}),
        "hanging": lambda: key_server.hang(30),
        "down": key_server.stop,
    }
    for name, inflict in faults.items():
        inflict()
        # A fresh token each time, so the verified-claims cache cannot answer for the key cache.
        response, seconds = await timed(live.client.get(ME, headers=bearer(sub, kid=OLD_KID)))
        assert response.status_code == 200, (name, response.text)
        assert seconds < FAST, (name, seconds)
    assert key_server.request_count == fetches


async def test_rotated_key_is_picked_up_with_one_fetch(
    running: tuple[LiveApp, str], key_server: JWKSServer
) -> None:
    live, sub = running
    key_server.serve_keys(shared_rsa_key(OLD_KID), shared_rsa_key(NEW_KID))
    await asyncio.sleep(REFETCH_INTERVAL)  # past the window the startup fetch opened
    fetches = key_server.request_count
    responses = await asyncio.gather(
        *(live.client.get(ME, headers=bearer(sub, kid=NEW_KID)) for _ in range(10))
    )
    assert [response.status_code for response in responses] == [200] * 10
    assert key_server.request_count == fetches + 1  # single-flight: one fetch for all ten
    old = await live.client.get(ME, headers=bearer(sub, kid=OLD_KID))
    assert old.status_code == 200
    assert key_server.request_count == fetches + 1


@pytest.mark.parametrize("fault", ["down", "garbage", "hanging"])
async def test_unknown_kid_with_the_key_server_failing_is_503_within_the_fetch_timeout(
    running: tuple[LiveApp, str], key_server: JWKSServer, fault: str
) -> None:
    live, sub = running
    if fault == "down":
        key_server.stop()
    elif fault == "garbage":
        key_server.serve_body(b'{"keys": "nope"}')
    else:
        key_server.hang(30)
    await asyncio.sleep(REFETCH_INTERVAL)
    unknown = [timed(live.client.get(ME, headers=bearer(sub, kid=NEW_KID))) for _ in range(10)]
    known = [timed(live.client.get(ME, headers=bearer(sub, kid=OLD_KID))) for _ in range(10)]
    results = await asyncio.gather(*unknown, *known)
    for response, seconds in results[:10]:
        assert response.status_code == 503, response.text
        assert int(response.headers["Retry-After"]) > 0
        assert response.json()["code"] == "service_unavailable"
        assert seconds < FETCH_TIMEOUT + 1, seconds
    for response, seconds in results[10:]:
        # Requests with a known key never queue behind the fetch.
        assert response.status_code == 200
        assert seconds < FAST, seconds
    assert live.checked_out() == 0
