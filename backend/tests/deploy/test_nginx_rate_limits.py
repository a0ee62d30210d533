"""Rate limits at the edge, through a live nginx running the committed config.

The zones keep their committed keys, locations and error handling; only their rates and bursts
are lowered (1 request a minute), so a limit is reached by the request count alone: a test
finishes long before a minute has given any allowance back, and no assertion depends on time.
Each test speaks for client addresses and bearer tokens of its own (addresses sent as the ALB
would, in X-Forwarded-For from loopback), so the tests do not share an allowance.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import uuid
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from app.core import cors

from .nginx_harness import (
    ECHO_APP,
    ECHO_APP_DIR,
    SITE_CONF,
    RateLimit,
    RunningNginx,
    SiteFiles,
    run_nginx,
    run_uvicorn,
)

# A key's first burst + 1 requests pass and the next is refused (nginx wants burst >= 1).
API_BURST = 6  # an address's requests without a bearer token
USER_BURST = 3  # each bearer token's requests
# Every /api/ request of an address. Above an office's worth of users' bursts (below), so that
# only a flood reaches it.
ADDRESS_BURST = 150
ACCOUNT_WRITE_BURST = 1
# CORS preflights of an address, and /health, /docs, /openapi.json of an address.
PREFLIGHT_BURST = 150
PUBLIC_BURST = 40
TEST_LIMITS = {
    "one_system_api_address": RateLimit(rate="1r/m", burst=ADDRESS_BURST),
    "one_system_api_user": RateLimit(rate="1r/m", burst=USER_BURST),
    "one_system_api_anonymous": RateLimit(rate="1r/m", burst=API_BURST),
    "one_system_account_writes": RateLimit(rate="1r/m", burst=ACCOUNT_WRITE_BURST),
    "one_system_api_preflights": RateLimit(rate="1r/m", burst=PREFLIGHT_BURST),
    "one_system_public": RateLimit(rate="1r/m", burst=PUBLIC_BURST),
}
# The SPA's origin, as the harness's cors-origins.map lists it.
SPA_ORIGIN = SiteFiles().cors_origins[0]
# The office: 20 staff behind one NAT address, each with the SPA open.
SPA_OFFICE_STAFF = 20
# Staff of one provincial office, behind one NAT address, each on the SPA at once.
OFFICE_STAFF = 30


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


def bearer_token() -> str:
    """A fresh token shaped like a Cognito access token: three base64url parts, RS256-long."""

    def part(value: dict[str, str]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    header = part({"kid": "test", "alg": "RS256"})
    claims = part({"sub": str(uuid.uuid4()), "token_use": "access"})
    # An RS256 signature is 256 bytes: 342 base64url characters.
    return f"{header}.{claims}.{secrets.token_urlsafe(256)}"


def signed_in(address: str, token: str, **headers: str) -> dict[str, str]:
    """Headers of a signed-in caller's request the ALB forwards for ``address``."""
    return as_client(address, Authorization=f"Bearer {token}", **headers)


def responses(
    proxy: RunningNginx, requests: list[dict[str, str]], *, method: str = "GET"
) -> list[httpx.Response]:
    """Send one ``method`` /api/v1/echo per header set, all at once; the answers in order."""

    async def send_all() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=20)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            url = proxy.url("/api/v1/echo")
            return await asyncio.gather(*(client.request(method, url, headers=h) for h in requests))

    return asyncio.run(send_all())


def statuses(
    proxy: RunningNginx, requests: list[dict[str, str]], *, method: str = "GET"
) -> Counter[int]:
    """Send one ``method`` /api/v1/echo per header set, all at once; count them by status."""
    return Counter(response.status_code for response in responses(proxy, requests, method=method))


def preflight(address: str, origin: str = SPA_ORIGIN) -> dict[str, str]:
    """A browser's CORS preflight for a signed-in GET: no Authorization, ever."""
    return as_client(
        address,
        Origin=origin,
        **{
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization",
        },
    )


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


def test_health_does_not_share_the_api_allowance(proxy: RunningNginx, http: httpx.Client) -> None:
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


def test_an_office_behind_one_address_gets_an_allowance_per_signed_in_user(
    proxy: RunningNginx,
) -> None:
    """Each user's burst is answered whoever else shares the address; past it, only theirs ends."""
    office = "203.0.113.70"
    tokens = [bearer_token() for _ in range(OFFICE_STAFF)]

    # Interleaved, as a page load of every user at once would arrive.
    bursts = [signed_in(office, token) for _ in range(USER_BURST + 1) for token in tokens]
    assert statuses(proxy, bursts) == {200: OFFICE_STAFF * (USER_BURST + 1)}

    assert statuses(proxy, [signed_in(office, token) for token in tokens]) == {429: OFFICE_STAFF}
    # A colleague signing in now, and the office's anonymous calls, still get theirs.
    assert statuses(proxy, [signed_in(office, bearer_token())] * (USER_BURST + 1)) == {
        200: USER_BURST + 1
    }
    assert statuses(proxy, [as_client(office)] * (API_BURST + 1)) == {200: API_BURST + 1}


def test_one_address_cannot_pass_the_ceiling_with_made_up_tokens(
    proxy: RunningNginx, http: httpx.Client
) -> None:
    flooder, other = "203.0.113.80", "203.0.113.81"
    flood = [signed_in(flooder, bearer_token()) for _ in range(ADDRESS_BURST + 1 + 40)]

    assert statuses(proxy, flood) == {200: ADDRESS_BURST + 1, 429: 40}

    # The ceiling holds every /api/ request of that address, with a token or without.
    refused = http.get(proxy.url("/api/v1/echo"), headers=signed_in(flooder, bearer_token()))
    assert_refused_by_nginx(refused, retry_after="1")
    assert http.get(proxy.url("/api/v1/echo"), headers=as_client(flooder)).status_code == 429
    assert http.get(proxy.url("/health"), headers=as_client(flooder)).status_code == 200
    # Another address is not affected.
    response = http.get(proxy.url("/api/v1/echo"), headers=signed_in(other, bearer_token()))
    assert response.status_code == 200
    assert 'by zone "one_system_api_address"' in proxy.log_text


def test_a_token_has_one_allowance_from_any_address(
    proxy: RunningNginx, http: httpx.Client
) -> None:
    address, elsewhere = "203.0.113.90", "203.0.113.91"
    token = bearer_token()
    for _ in range(USER_BURST + 1):
        response = http.get(proxy.url("/api/v1/echo"), headers=signed_in(address, token))
        assert response.status_code == 200, response.text

    refused = http.get(
        proxy.url("/api/v1/echo"), headers=signed_in(address, token, **{"X-Request-ID": "user-1"})
    )
    assert_refused_by_nginx(refused, retry_after="1")
    assert refused.json()["request_id"] == "user-1"
    # Moving to another address does not renew it; "bearer" in any case is the same scheme.
    moved = http.get(proxy.url("/api/v1/echo"), headers=signed_in(elsewhere, token))
    assert moved.status_code == 429
    lower = http.get(
        proxy.url("/api/v1/echo"), headers=as_client(elsewhere, Authorization=f"bearer {token}")
    )
    assert lower.status_code == 429
    # The address's other users and its anonymous calls keep their allowances.
    other_user = http.get(proxy.url("/api/v1/echo"), headers=signed_in(address, bearer_token()))
    assert other_user.status_code == 200
    assert http.get(proxy.url("/api/v1/echo"), headers=as_client(address)).status_code == 200
    assert 'by zone "one_system_api_user"' in proxy.log_text


def test_a_users_state_is_keyed_on_the_end_of_the_signature_only(
    proxy: RunningNginx, http: httpx.Client
) -> None:
    """43 characters a state instead of the whole ~1 KB token (a zone stores keys verbatim).

    Sharing a tail means sharing a signature, which only the token's holder has.
    """
    address = "203.0.113.95"
    token = bearer_token()
    header, _, rest = token.partition(".")
    signature = rest.partition(".")[2]
    for _ in range(USER_BURST + 1):
        assert http.get(proxy.url("/api/v1/echo"), headers=signed_in(address, token)).is_success

    same_tail = f"{header}.e30.{signature[-43:]}"
    response = http.get(proxy.url("/api/v1/echo"), headers=signed_in(address, same_tail))
    assert response.status_code == 429
    other_tail = f"{header}.e30.{signature[:-1]}{'A' if signature[-1] != 'A' else 'B'}"
    response = http.get(proxy.url("/api/v1/echo"), headers=signed_in(address, other_tail))
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("authorization", "address"),
    [
        ("Basic b2ZmaWNlcjpwYXNzd29yZA==", "203.0.113.100"),
        ("Bearer short.token.value", "203.0.113.101"),
        ("Bearer " + "x" * 400, "203.0.113.102"),
        ("Bearer header." + "y" * 400, "203.0.113.103"),
        ("Token " + bearer_token(), "203.0.113.104"),
        ("Bearer " + bearer_token() + "." + "z" * 64, "203.0.113.105"),
    ],
    ids=["basic", "short-signature", "one-part", "two-parts", "other-scheme", "four-parts"],
)
def test_an_authorization_that_is_no_bearer_jwt_counts_as_anonymous(
    proxy: RunningNginx, http: httpx.Client, authorization: str, address: str
) -> None:
    """Garbage in Authorization neither escapes the limits nor buys a fresh allowance."""
    use_up_the_api_allowance(proxy, http, address)

    response = http.get(
        proxy.url("/api/v1/echo"), headers=as_client(address, Authorization=authorization)
    )
    assert_refused_by_nginx(response, retry_after="1")


def test_retry_after_is_the_time_one_request_of_allowance_takes() -> None:
    """The committed Retry-After values stay in step with the committed rates."""
    site = SITE_CONF.read_text()
    rates = dict(re.findall(r"limit_req_zone \S+ zone=(\w+):\S+ rate=(\d+r/[sm]);", site))
    api_block = re.search(r"location /api/ \{([^}]*)\}", site)
    assert api_block is not None
    api_zones = set(re.findall(r"limit_req zone=(\w+)", api_block.group(1)))
    assert api_zones == set(rates) - {"one_system_public"}
    retry_map = re.search(r"map \$one_system_account_write \$\w+retry_after \{([^}]*)\}", site)
    assert retry_map is not None
    retry = dict(re.findall(r"^\s*(\S+) (\d+);", retry_map.group(1), re.MULTILINE))

    def seconds_per_request(rate: str) -> int:
        count, unit = re.fullmatch(r"(\d+)r/([sm])", rate).groups()  # type: ignore[union-attr]
        return max(1, -(-{"s": 1, "m": 60}[unit] // int(count)))

    assert int(retry["1"]) == seconds_per_request(rates["one_system_account_writes"])
    # Any zone but the account writes' may refuse a request that is not an account write.
    assert int(retry["default"]) == max(
        seconds_per_request(rates[zone]) for zone in set(rates) - {"one_system_account_writes"}
    )


def assert_readable_by(response: httpx.Response, origin: str) -> None:
    """The CORS headers a browser needs to show this refusal to the SPA's script."""
    assert response.headers.get_list("access-control-allow-origin") == [origin]
    assert response.headers.get_list("vary") == ["Origin"]
    exposed = {
        name.strip() for name in response.headers["access-control-expose-headers"].split(",")
    }
    assert exposed == set(cors.EXPOSED_HEADERS)


def test_an_office_spa_is_never_refused_for_its_preflights(proxy: RunningNginx) -> None:
    """20 staff behind one address, each call after its preflight: the preflights (which carry no
    Authorization) count in no user's and no anonymous allowance, and a refusal is readable."""
    office = "203.0.113.110"
    tokens = [bearer_token() for _ in range(SPA_OFFICE_STAFF)]
    calls = [token for _ in range(USER_BURST + 1) for token in tokens]

    for token in calls:  # each call's preflight, then the call
        assert statuses(proxy, [preflight(office)], method="OPTIONS") == {200: 1}
        assert statuses(proxy, [signed_in(office, token, Origin=SPA_ORIGIN)]) == {200: 1}

    # Past each user's own allowance their calls are refused, readably; preflights still pass.
    over = responses(proxy, [signed_in(office, token, Origin=SPA_ORIGIN) for token in tokens])
    assert Counter(response.status_code for response in over) == {429: SPA_OFFICE_STAFF}
    for response in over:
        assert_refused_by_nginx(response, retry_after="1")
        assert_readable_by(response, SPA_ORIGIN)
    preflights = [preflight(office)] * SPA_OFFICE_STAFF
    assert statuses(proxy, preflights, method="OPTIONS") == {200: SPA_OFFICE_STAFF}
    # Nor did they spend the office's anonymous allowance.
    assert statuses(proxy, [as_client(office)] * (API_BURST + 1)) == {200: API_BURST + 1}


def test_a_preflight_flood_is_held_and_counts_in_no_other_zone(proxy: RunningNginx) -> None:
    """A preflight with a made-up bearer token still counts as a preflight of its address."""
    flooder = "203.0.113.111"
    flood = [
        {**preflight(flooder), "Authorization": f"Bearer {bearer_token()}"}
        for _ in range(PREFLIGHT_BURST + 1 + 5)
    ]
    assert statuses(proxy, flood, method="OPTIONS") == {200: PREFLIGHT_BURST + 1, 429: 5}
    assert statuses(proxy, [as_client(flooder)] * (API_BURST + 1)) == {200: API_BURST + 1}


@pytest.mark.parametrize(
    ("origin", "address"),
    [(None, "203.0.113.120"), ("https://elsewhere.example", "203.0.113.121")],
    ids=["no-origin", "other-origin"],
)
def test_a_refusal_names_no_origin_but_a_configured_one(
    proxy: RunningNginx, http: httpx.Client, origin: str | None, address: str
) -> None:
    use_up_the_api_allowance(proxy, http, address)
    headers = as_client(address, **({"Origin": origin} if origin else {}))

    refused = http.get(proxy.url("/api/v1/echo"), headers=headers)

    assert_refused_by_nginx(refused, retry_after="1")
    assert "access-control-allow-origin" not in refused.headers
    assert "access-control-expose-headers" not in refused.headers
    assert refused.headers.get_list("vary") == ["Origin"]


def test_an_oversized_body_is_refused_readably(proxy: RunningNginx, http: httpx.Client) -> None:
    headers = as_client("203.0.113.123", Origin=SPA_ORIGIN)
    response = http.post(
        proxy.url("/api/v1/echo"), content=b"x" * (1024 * 1024 + 1), headers=headers
    )
    assert response.status_code == 413
    assert_readable_by(response, SPA_ORIGIN)

    # The app's own answers, its 429 included, get none from Nginx: its CORS middleware owns
    # them, and a second copy would make the browser refuse the answer.
    for path in ["/api/v1/echo", "/api/v1/echo?status=429&retry_after=3"]:
        answer = http.get(proxy.url(path), headers=headers)
        assert answer.json()["path"] == "/api/v1/echo"
        assert "access-control-allow-origin" not in answer.headers
        assert "vary" not in answer.headers


@pytest.mark.parametrize(
    ("flood_host", "flooder"),
    [("api.example.test", "203.0.113.130"), ("10.0.1.23", "203.0.113.131")],
    ids=["service-name", "target-address"],
)
def test_a_health_flood_is_held_while_the_albs_probe_answers(
    proxy: RunningNginx, http: httpx.Client, flood_host: str, flooder: str
) -> None:
    """The ALB's health check names the target's address as Host and comes from the ALB node's
    own address (loopback here), with no X-Forwarded-For; a client's flood through the ALB
    comes with the client's address, whatever Host it sends."""
    flood = [as_client(flooder, Host=flood_host)] * (PUBLIC_BURST + 1 + 10)
    answered = Counter(
        http.get(proxy.url("/health"), headers=headers).status_code for headers in flood
    )
    assert answered == {200: PUBLIC_BURST + 1, 429: 10}
    refused = http.get(proxy.url("/health"), headers=as_client(flooder, Host=flood_host))
    assert_refused_by_nginx(refused, retry_after="1")

    for _ in range(5):
        probe = http.get(proxy.url("/health"), headers={"Host": "10.0.1.23:8080"})
        assert probe.status_code == 200, probe.text
        assert probe.json()["path"] == "/health"


@pytest.mark.parametrize("path", ["/docs/static/swagger-ui-bundle.js", "/openapi.json"])
def test_a_docs_flood_is_held_per_address(
    proxy: RunningNginx, http: httpx.Client, path: str
) -> None:
    flooder, other = f"203.0.113.{140 + len(path) % 50}", "203.0.113.199"
    answered = Counter(
        http.get(proxy.url(path), headers=as_client(flooder)).status_code
        for _ in range(PUBLIC_BURST + 1 + 3)
    )
    assert answered == {200: PUBLIC_BURST + 1, 429: 3}
    assert http.get(proxy.url("/docs"), headers=as_client(flooder)).status_code == 429
    assert http.get(proxy.url(path), headers=as_client(other)).status_code == 200
    # /api/ keeps its own allowance.
    assert http.get(proxy.url("/api/v1/echo"), headers=as_client(flooder)).status_code == 200


def test_the_committed_limits_hold_an_office_of_twenty() -> None:
    """20 staff at their full per-user allowance fit under the address ceiling, and their
    preflights (one a call at most) under the preflight zone."""
    site = SITE_CONF.read_text()
    rates = {
        zone: int(rate)
        for zone, rate in re.findall(r"limit_req_zone \S+ zone=(\w+):\S+ rate=(\d+)r/s;", site)
    }
    bursts = dict(re.findall(r"limit_req zone=(\w+) burst=(\d+)", site))
    user_rate, user_burst = rates["one_system_api_user"], int(bursts["one_system_api_user"])
    for zone in ("one_system_api_address", "one_system_api_preflights"):
        assert rates[zone] >= SPA_OFFICE_STAFF * user_rate, zone
        assert int(bursts[zone]) >= SPA_OFFICE_STAFF * user_burst, zone


def test_the_refusals_expose_what_the_app_exposes() -> None:
    found = re.findall(r'"~\^1:[^"]+" "([^"]+)";', SITE_CONF.read_text())
    assert len(found) == 2
    for exposed in found:
        assert [name.strip() for name in exposed.split(",")] == list(cors.EXPOSED_HEADERS)
