"""nginx in front of the app: the committed config parses, and a live nginx forwards correctly."""

from __future__ import annotations

import gzip
import ipaddress
import re
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import httpx
import pytest

from .nginx_harness import (
    APP_CSP,
    ECHO_APP,
    ECHO_APP_DIR,
    MAIN_CONF,
    SITE_CONF,
    SITE_FILE_EXAMPLES,
    SITE_FILE_NAMES,
    RateLimit,
    RunningNginx,
    SiteFiles,
    free_port,
    nginx_config_test,
    offline_app_env,
    render_nginx_conf,
    run_nginx,
    run_uvicorn,
)

ALB_IDLE_TIMEOUT_S = 60


def directive_seconds(name: str) -> int:
    """The longest value of a timeout set in the server blocks (the file after ``server {``)."""
    server_blocks = SITE_CONF.read_text().split("\nserver {", 1)[1]
    values = re.findall(rf"^\s*{name}\s+(\d+)s;", server_blocks, re.MULTILINE)
    assert values, name
    return max(int(value) for value in values)


def test_rendered_config_passes_nginx_t(tmp_path: Path) -> None:
    conf = render_nginx_conf(tmp_path, upstream="127.0.0.1:8000", listen_port=free_port())
    result = nginx_config_test(tmp_path, conf)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_committed_config_is_the_production_one() -> None:
    site = SITE_CONF.read_text()
    release = "/etc/nginx/one-system-release/upstream.conf"
    upstream = rf"upstream app \{{[^}}]*include {release};[^}}]*keepalive \d+;"
    assert re.search(upstream, site)
    assert "listen 8080 default_server;" in site
    assert "listen 8080;" in site
    assert "include /etc/nginx/conf.d/one-system.conf;" in MAIN_CONF.read_text()
    assert "listen 9145;" in site
    # No catch-all proxy: every proxied prefix is listed explicitly. /health twice: for the
    # service's name and for any other Host (the ALB's health check).
    proxied = [
        where
        for where, block in re.findall(r"^\s*location ([^{\n]+?) \{([^}]*)\}", site, re.M)
        if "proxy_pass" in block
    ]
    assert sorted(proxied) == sorted(
        [
            "/api/",
            "= /health",
            "= /health",
            "/health/",
            "= /docs",
            "/docs/",
            "= /docs/oauth2-redirect",
            "= /openapi.json",
            # On the metrics server (listen 9145), which compose publishes on loopback only.
            "= /metrics",
        ]
    )


def test_timeouts_stay_inside_the_alb_idle_timeout() -> None:
    assert directive_seconds("proxy_connect_timeout") <= 5
    assert directive_seconds("proxy_read_timeout") < ALB_IDLE_TIMEOUT_S
    assert directive_seconds("proxy_send_timeout") < ALB_IDLE_TIMEOUT_S
    # Towards the ALB nginx must hold idle connections longer than the ALB does.
    assert directive_seconds("keepalive_timeout") > ALB_IDLE_TIMEOUT_S
    # Towards uvicorn nginx must give up idle connections before uvicorn does.
    dockerfile = (SITE_CONF.parents[1] / "Dockerfile").read_text()
    (uvicorn_keepalive,) = re.findall(r'"--timeout-keep-alive", "(\d+)"', dockerfile)
    upstream_block = re.search(r"upstream app \{[^}]*\}", SITE_CONF.read_text())
    assert upstream_block is not None
    (upstream_keepalive,) = re.findall(r"keepalive_timeout (\d+)s;", upstream_block.group())
    assert int(upstream_keepalive) < int(uvicorn_keepalive)


@pytest.fixture(scope="module")
def echo_proxy() -> Iterator[RunningNginx]:
    with run_uvicorn(ECHO_APP, app_dir=ECHO_APP_DIR) as app_port, run_nginx(app_port) as proxy:
        yield proxy


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:
        yield http


def test_health_is_proxied(echo_proxy: RunningNginx, client: httpx.Client) -> None:
    for path in ["/health", "/health/live"]:
        response = client.get(echo_proxy.url(path))
        assert response.status_code == 200
        assert response.json()["path"] == path


def test_docs_openapi_and_swagger_assets_are_proxied(
    echo_proxy: RunningNginx, client: httpx.Client
) -> None:
    for path in ["/docs", "/docs/oauth2-redirect", "/docs/static/swagger-ui.css", "/openapi.json"]:
        response = client.get(echo_proxy.url(path))
        assert response.status_code == 200, path
        assert response.json()["path"] == path


def test_unlisted_paths_are_not_proxied(echo_proxy: RunningNginx, client: httpx.Client) -> None:
    for path in ["/", "/admin", "/redoc", "/apix"]:
        response = client.get(echo_proxy.url(path))
        assert response.status_code == 404, path
        body = response.json()
        assert body == {
            "detail": "Not Found",
            "code": "not_found",
            "request_id": body["request_id"],
        }
        assert response.headers.get_list("x-request-id") == [body["request_id"]]


def test_app_sees_client_address_and_scheme_sent_by_the_alb(
    echo_proxy: RunningNginx, client: httpx.Client
) -> None:
    # Loopback plays the ALB. A client-forged entry left of the ALB's must not win.
    response = client.get(
        echo_proxy.url("/api/v1/echo"),
        headers={
            "X-Forwarded-For": "198.51.100.1, 203.0.113.7",
            "X-Forwarded-Proto": "https",
            "Host": "api.example.test",
        },
    )
    seen = response.json()
    assert seen["client"] == "203.0.113.7"
    assert seen["scheme"] == "https"
    assert seen["headers"]["x-forwarded-for"] == "203.0.113.7"
    assert seen["headers"]["x-forwarded-host"] == "api.example.test"
    assert seen["headers"]["host"] == "api.example.test"


def test_scheme_falls_back_to_nginx_scheme_without_a_sane_forwarded_proto(
    echo_proxy: RunningNginx, client: httpx.Client
) -> None:
    assert client.get(echo_proxy.url("/api/v1/echo")).json()["scheme"] == "http"
    odd = client.get(echo_proxy.url("/api/v1/echo"), headers={"X-Forwarded-Proto": "javascript"})
    assert odd.json()["scheme"] == "http"
    direct = client.get(echo_proxy.url("/api/v1/echo")).json()
    assert direct["client"] == "127.0.0.1"


def test_request_id_is_forwarded_and_echoed(echo_proxy: RunningNginx, client: httpx.Client) -> None:
    sent = client.get(echo_proxy.url("/api/v1/echo"), headers={"X-Request-ID": "abc-123.4:5"})
    assert sent.json()["headers"]["x-request-id"] == "abc-123.4:5"
    assert sent.headers.get_list("x-request-id") == ["abc-123.4:5"]

    generated = client.get(echo_proxy.url("/api/v1/echo"))
    request_id = generated.json()["headers"]["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert generated.headers.get_list("x-request-id") == [request_id]

    hostile = client.get(echo_proxy.url("/api/v1/echo"), headers={"X-Request-ID": 'a b"c'})
    assert re.fullmatch(r"[0-9a-f]{32}", hostile.json()["headers"]["x-request-id"])


def test_security_headers_and_no_version_banner(
    echo_proxy: RunningNginx, client: httpx.Client
) -> None:
    api = client.get(echo_proxy.url("/api/v1/echo"))
    assert api.headers["server"] == "nginx"
    assert api.headers["x-content-type-options"] == "nosniff"
    # The app's own SAMEORIGIN is replaced, not duplicated.
    assert api.headers.get_list("x-frame-options") == ["DENY"]
    assert api.headers["referrer-policy"] == "no-referrer"
    assert api.headers["strict-transport-security"].startswith("max-age=31536000")
    assert api.headers["content-security-policy"].startswith("default-src 'none'")

    # Swagger UI keeps the app's policy (it alone knows the Hosted-UI domain), exactly once.
    for path in ("/docs", "/docs/static/swagger-ui.css"):
        docs = client.get(echo_proxy.url(path))
        assert docs.headers.get_list("content-security-policy") == [APP_CSP]


def test_json_is_gzipped(echo_proxy: RunningNginx, client: httpx.Client) -> None:
    response = client.get(echo_proxy.url("/api/v1/echo-large"), headers={"Accept-Encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert response.json()["padding"][0] == "one-system"


def test_oversized_body_is_refused_with_413_before_the_app(
    echo_proxy: RunningNginx, client: httpx.Client
) -> None:
    small = client.post(echo_proxy.url("/api/v1/echo"), content=b"x" * 512 * 1024)
    assert small.json()["body_size"] == 512 * 1024

    large = client.post(echo_proxy.url("/api/v1/echo"), content=b"x" * (1024 * 1024 + 1))
    assert large.status_code == 413
    assert large.json()["code"] == "payload_too_large"
    assert large.json()["request_id"] == large.headers["x-request-id"]
    assert large.headers["x-content-type-options"] == "nosniff"


def test_upstream_down_is_a_json_503(client: httpx.Client) -> None:
    spa = SiteFiles().cors_origins[0]
    with run_nginx(free_port()) as proxy:
        response = client.get(proxy.url("/health"))
        api = client.get(proxy.url("/api/v1/users/me"), headers={"Origin": spa})
    assert response.status_code == 503
    assert response.json()["code"] == "service_unavailable"
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert response.headers.get_list("retry-after") == ["5"]
    # Readable by the SPA, like Nginx's other refusals.
    assert api.status_code == 503
    assert api.headers.get_list("access-control-allow-origin") == [spa]
    assert api.headers.get_list("vary") == ["Origin"]
    assert "Retry-After" in api.headers["access-control-expose-headers"]


def test_real_app_liveness_through_nginx(client: httpx.Client) -> None:
    with (
        run_uvicorn("app.main:app", env=offline_app_env()) as app_port,
        run_nginx(app_port) as proxy,
    ):
        response = client.get(proxy.url("/health/live"), headers={"X-Request-ID": "live-1"})
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers.get_list("x-request-id") == ["live-1"]


def test_nginx_refuses_a_broken_config(tmp_path: Path) -> None:
    """Guards the guard: nginx -t really rejects what it cannot run."""
    conf = render_nginx_conf(tmp_path, upstream="127.0.0.1:8000", listen_port=free_port())
    site = tmp_path / "one-system.conf"
    site.write_text(site.read_text().replace("client_max_body_size 1m;", "client_max_body_size;"))
    result = nginx_config_test(tmp_path, conf)
    assert result.returncode != 0
    assert isinstance(result, subprocess.CompletedProcess)


def test_the_example_site_files_parse_and_trust_only_subnets(tmp_path: Path) -> None:
    """deploy/nginx/ holds what an operator copies to /etc/one-system/nginx/."""
    conf = render_nginx_conf(tmp_path, upstream="127.0.0.1:8000", listen_port=free_port())
    for name in SITE_FILE_NAMES:
        shutil.copy(SITE_FILE_EXAMPLES / name, tmp_path / "one-system" / name)
    result = nginx_config_test(tmp_path, conf)
    assert result.returncode == 0, result.stderr

    trusted = re.findall(
        r"^set_real_ip_from ([^;]+);",
        (SITE_FILE_EXAMPLES / "trusted-proxies.conf").read_text(),
        re.M,
    )
    assert trusted
    for cidr in trusted:
        # An ALB subnet, never a whole private range.
        assert ipaddress.ip_network(cidr).prefixlen >= 16, cidr


def test_only_the_site_file_names_trusted_proxies() -> None:
    """No private range is trusted by the committed config itself (it trusted 10/8, 172.16/12 and
    192.168/16: any host of the VPC, a peered network or a VPN chose its own identity)."""
    assert not re.search(r"^\s*set_real_ip_from", SITE_CONF.read_text(), re.MULTILINE)


def test_a_host_that_is_not_a_trusted_proxy_is_the_client(
    echo_proxy: RunningNginx, client: httpx.Client
) -> None:
    """127.0.0.2 plays another host of the VPC: its X-Forwarded-For is not believed."""
    headers = {"X-Forwarded-For": "203.0.113.7"}
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as vpc_host:
        seen = vpc_host.get(echo_proxy.url("/api/v1/echo"), headers=headers).json()
    assert seen["client"] == "127.0.0.2"
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.2"
    # The ALB's (127.0.0.1) is.
    assert client.get(echo_proxy.url("/api/v1/echo"), headers=headers).json()["client"] == (
        "203.0.113.7"
    )


def test_another_host_gets_a_json_421_but_for_health(
    echo_proxy: RunningNginx, client: httpx.Client
) -> None:
    for path in ["/api/v1/echo", "/docs", "/openapi.json", "/health/live", "/"]:
        response = client.get(echo_proxy.url(path), headers={"Host": "attacker.example"})
        assert response.status_code == 421, path
        body = response.json()
        assert body == {
            "detail": "Unknown host; call the service by its name",
            "code": "unknown_host",
            "request_id": response.headers["x-request-id"],
        }
        assert response.headers["x-content-type-options"] == "nosniff"

    # The ALB's health check may name the target's address (and port) as Host.
    for host in ["10.0.1.23", "10.0.1.23:80", "attacker.example"]:
        response = client.get(echo_proxy.url("/health"), headers={"Host": host})
        assert response.status_code == 200, host
        assert response.json()["path"] == "/health"
        assert response.headers.get_list("x-request-id") == [
            response.json()["headers"]["x-request-id"]
        ]


def test_plain_http_from_the_alb_is_refused_for_the_api(
    echo_proxy: RunningNginx, client: httpx.Client
) -> None:
    for proto in ["http", "HTTP"]:
        refused = client.post(
            echo_proxy.url("/api/v1/echo"), headers={"X-Forwarded-Proto": proto}, json={}
        )
        assert refused.status_code == 403
        assert refused.json()["code"] == "https_required"
        assert refused.json()["request_id"] == refused.headers["x-request-id"]
    https = client.get(echo_proxy.url("/api/v1/echo"), headers={"X-Forwarded-Proto": "https"})
    assert https.json()["scheme"] == "https"


def test_plain_http_from_the_alb_is_redirected_for_the_pages(
    echo_proxy: RunningNginx, client: httpx.Client
) -> None:
    headers = {"X-Forwarded-Proto": "http", "Host": "api.example.test"}
    response = client.get(echo_proxy.url("/docs?x=1"), headers=headers)
    assert response.status_code == 301
    assert response.headers["location"] == "https://api.example.test/docs?x=1"
    # A probe is answered, never redirected.
    for path in ["/health", "/health/live"]:
        assert client.get(echo_proxy.url(path), headers=headers).status_code == 200, path


def test_no_oauth_code_or_state_in_the_logs(client: httpx.Client) -> None:
    code, state = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    path = f"/docs/oauth2-redirect?code={code}&state={state}"
    limits = {"one_system_public": RateLimit(rate="1r/m", burst=1)}
    with (
        run_uvicorn(ECHO_APP, app_dir=ECHO_APP_DIR) as app_port,
        run_nginx(app_port, rate_limits=limits) as proxy,
    ):
        # Encoded, the same page: the app decodes the path.
        for url in [path, path.replace("oauth2", "%6fauth2"), path]:
            client.get(proxy.url(url))
        assert client.get(proxy.url(path)).status_code == 429  # the error log's turn
        client.get(proxy.url("/api/v1/echo?page=2"))
        # Elsewhere the query stays in the log (the last line nginx writes here).
        log = proxy.log_once_it_holds('"uri":"/api/v1/echo?page=2"')
    assert '"uri":"/docs/oauth2-redirect"' in log
    assert code not in log
    assert state not in log
    assert '"uri":"/api/v1/echo?page=2"' in log


def test_the_swagger_bundle_passes_through_as_the_app_compressed_it(client: httpx.Client) -> None:
    """The app gzips it once at start-up; Nginx does no work on it per request (its own gzip,
    level 5 and a header of its own, would give other bytes)."""
    bundle = resources.files("fastapi_swagger.resources").joinpath("swagger-ui-bundle.js")
    path = "/docs/static/swagger-ui-bundle.js"
    with (
        run_uvicorn("app.main:app", env=offline_app_env()) as app_port,
        run_nginx(app_port) as proxy,
        client.stream("GET", proxy.url(path), headers={"Accept-Encoding": "gzip"}) as response,
    ):
        raw = b"".join(response.iter_raw())
    assert response.status_code == 200
    assert response.headers["content-encoding"] == "gzip"
    assert raw == gzip.compress(bundle.read_bytes(), compresslevel=9, mtime=0)


def test_nginx_does_not_start_without_a_site_file(tmp_path: Path) -> None:
    conf = render_nginx_conf(tmp_path, upstream="127.0.0.1:8000", listen_port=free_port())
    (tmp_path / "one-system" / "trusted-proxies.conf").unlink()
    result = nginx_config_test(tmp_path, conf)
    assert result.returncode != 0
    assert "trusted-proxies.conf" in result.stderr
