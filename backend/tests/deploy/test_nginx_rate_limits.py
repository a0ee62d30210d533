"""Rate limits at the edge, through a live nginx running the committed config.

The zones keep their committed keys, locations and error handling; only their rates and bursts
are lowered (1 request a minute), so a limit is reached by the request count alone: a test
finishes long before a minute has given any allowance back, and no assertion depends on time.
Each test speaks for client addresses of its own (sent as the ALB would, in X-Forwarded-For
from loopback), so the tests do not share an allowance.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import httpx
import pytest

from .nginx_harness import (
    ECHO_APP,
    ECHO_APP_DIR,
    SITE_CONF,
    RateLimit,
    RunningNginx,
    run_nginx,
    run_uvicorn,
)

# A client's first burst + 1 requests pass and the next is refused (nginx wants burst >= 1).
API_BURST = 6
ACCOUNT_WRITE_BURST = 1
TEST_LIMITS = {
    "one_system_api": RateLimit(rate="1r/m", burst=API_BURST),
    "one_system_account_writes": RateLimit(rate="1r/m", burst=ACCOUNT_WRITE_BURST),
}


@pytest.fixture(scope="module")
def proxy() -> Iterator[RunningNginx]:
    with (
        run_uvicorn(ECHO_APP, app_dir=ECHO_APP_DIR) as app_port,
        run_nginx(app_port, rate_limits=TEST_LIMITS) as running,
    ):
        yield running


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


def as_client(address: str, **headers: str) -> dict[str, str]:
    """Headers of a request the ALB forwards for ``address``."""
    return {"X-Forwarded-For": address, **headers}


def use_up_the_api_allowance(proxy: RunningNginx, http: httpx.Client, address: str) -> None:
    for _ in range(API_BURST + 1):
        response = http.get(proxy.url("/api/v1/echo"), headers=as_client(address))
        assert response.status_code == 200, response.text


def assert_refused_by_nginx(response: httpx.Response, retry_after: str) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body == {
        "detail": "Too many requests; retry after the number of seconds in Retry-After",
        "code": "too_many_requests",
        "request_id": response.headers["x-request-id"],
    }
    assert response.headers.get_list("retry-after") == [retry_after]
    # Still a response of this edge: the security headers apply to it too.
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["strict-transport-security"].startswith("max-age=")


def test_api_requests_over_the_limit_get_a_json_429_with_retry_after(
    proxy: RunningNginx, http: httpx.Client
) -> None:
    address = "203.0.113.10"
    use_up_the_api_allowance(proxy, http, address)

    refused = http.get(
        proxy.url("/api/v1/echo"), headers=as_client(address, **{"X-Request-ID": "over-1"})
    )
    assert_refused_by_nginx(refused, retry_after="1")
    assert refused.json()["request_id"] == "over-1"
    unnamed = http.get(proxy.url("/api/v1/reference/provinces"), headers=as_client(address))
    assert_refused_by_nginx(unnamed, retry_after="1")
    assert re.fullmatch(r"[0-9a-f]{32}", unnamed.json()["request_id"])
    assert "limiting requests" in proxy.log_text


def test_health_is_never_limited(proxy: RunningNginx, http: httpx.Client) -> None:
    address = "203.0.113.20"
    use_up_the_api_allowance(proxy, http, address)
    assert http.get(proxy.url("/api/v1/echo"), headers=as_client(address)).status_code == 429

    for path in ["/health", "/health/live"] * 10:
        response = http.get(proxy.url(path), headers=as_client(address))
        assert response.status_code == 200, path
        assert "retry-after" not in response.headers


def test_limits_are_per_client_address_as_the_alb_saw_it(
    proxy: RunningNginx, http: httpx.Client
) -> None:
    limited, other = "203.0.113.30", "203.0.113.31"
    use_up_the_api_allowance(proxy, http, limited)

    assert http.get(proxy.url("/api/v1/echo"), headers=as_client(other)).status_code == 200
    # An entry the client adds to X-Forwarded-For is left of the ALB's and changes nothing.
    forged = http.get(
        proxy.url("/api/v1/echo"), headers=as_client(f"198.51.100.{limited[-2:]}, {limited}")
    )
    assert forged.status_code == 429


@pytest.mark.parametrize(
    ("path", "address", "other"),
    [
        ("/api/v1/users", "203.0.113.40", "203.0.113.41"),
        ("/api/v1/users/{id}/reset-password", "203.0.113.42", "203.0.113.43"),
    ],
    ids=["create-user", "reset-password"],
)
def test_account_writes_have_a_stricter_limit_of_their_own(
    proxy: RunningNginx, http: httpx.Client, path: str, address: str, other: str
) -> None:
    url = proxy.url(path.format(id=uuid.uuid4()))

    for _ in range(ACCOUNT_WRITE_BURST + 1):
        assert http.post(url, json={}, headers=as_client(address)).status_code == 200
    assert_refused_by_nginx(http.post(url, json={}, headers=as_client(address)), retry_after="6")

    # Reads and other writes of the same client keep the ordinary /api/ allowance.
    assert http.get(proxy.url("/api/v1/users"), headers=as_client(address)).status_code == 200
    user = proxy.url(f"/api/v1/users/{uuid.uuid4()}")
    assert http.put(user, json={}, headers=as_client(address)).status_code == 200
    # Another client may still write.
    assert http.post(url, json={}, headers=as_client(other)).status_code == 200


def test_an_encoded_path_is_the_same_account_write(proxy: RunningNginx, http: httpx.Client) -> None:
    """The app decodes %75 to u; the limit must see the path the app routes on."""
    address = "203.0.113.50"
    for _ in range(ACCOUNT_WRITE_BURST + 1):
        response = http.post(proxy.url("/api/v1/users"), headers=as_client(address))
        assert response.status_code == 200
    encoded = http.post(proxy.url("/api/v1/%75sers"), headers=as_client(address))
    assert_refused_by_nginx(encoded, retry_after="6")


def test_the_apps_own_429_passes_through_with_its_own_retry_after(
    proxy: RunningNginx, http: httpx.Client
) -> None:
    response = http.get(
        proxy.url("/api/v1/echo?status=429&retry_after=30"), headers=as_client("203.0.113.60")
    )
    assert response.status_code == 429
    assert response.json()["path"] == "/api/v1/echo"
    assert response.headers.get_list("retry-after") == ["30"]


def test_retry_after_is_the_time_one_request_of_allowance_takes() -> None:
    """The committed Retry-After values stay in step with the committed rates."""
    site = SITE_CONF.read_text()
    rates = dict(re.findall(r"limit_req_zone \S+ zone=(\w+):\S+ rate=(\d+r/[sm]);", site))
    retry_map = re.search(r"map \$one_system_account_write \$\w+retry_after \{([^}]*)\}", site)
    assert retry_map is not None
    retry = dict(re.findall(r"^\s*(\S+) (\d+);", retry_map.group(1), re.MULTILINE))

    def seconds_per_request(rate: str) -> int:
        count, unit = re.fullmatch(r"(\d+)r/([sm])", rate).groups()  # type: ignore[union-attr]
        return max(1, -(-{"s": 1, "m": 60}[unit] // int(count)))

    assert int(retry["1"]) == seconds_per_request(rates["one_system_account_writes"])
    assert int(retry["default"]) == seconds_per_request(rates["one_system_api"])
