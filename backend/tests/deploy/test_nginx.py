"""nginx in front of the app: the committed config parses, and a live nginx forwards correctly."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .nginx_harness import (
    APP_CSP,
    ECHO_APP,
    ECHO_APP_DIR,
    MAIN_CONF,
    SITE_CONF,
    RunningNginx,
    free_port,
    nginx_config_test,
    offline_app_env,
    render_nginx_conf,
    run_nginx,
    run_uvicorn,
)

ALB_IDLE_TIMEOUT_S = 60


def directive_seconds(name: str) -> int:
    """A timeout set in the server block (the part of the file after ``server {``)."""
    server_block = SITE_CONF.read_text().split("\nserver {", 1)[1]
    (value,) = re.findall(rf"^\s*{name}\s+(\d+)s;", server_block, re.MULTILINE)
    return int(value)


def test_rendered_config_passes_nginx_t(tmp_path: Path) -> None:
    conf = render_nginx_conf(tmp_path, upstream="127.0.0.1:8000", listen_port=free_port())
    result = nginx_config_test(tmp_path, conf)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_committed_config_is_the_production_one() -> None:
    site = SITE_CONF.read_text()
    upstream = (
        r"upstream app \{[^}]*include /etc/nginx/one-system/upstream.conf;[^}]*keepalive \d+;"
    )
    assert re.search(upstream, site)
    assert "listen 8080 default_server;" in site
    assert "include /etc/nginx/conf.d/one-system.conf;" in MAIN_CONF.read_text()
    # No catch-all proxy: every proxied prefix is listed explicitly.
    proxied = re.findall(
        r"location ([^{]+?) \{\s*(?:(?:access_log off|limit_req [^;]+);\s*)*proxy_pass", site
    )
    assert sorted(proxied) == sorted(
        ["/api/", "= /health", "/health/", "= /docs", "/docs/", "= /openapi.json"]
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
    with run_nginx(free_port()) as proxy:
        response = client.get(proxy.url("/health"))
    assert response.status_code == 503
    assert response.json()["code"] == "service_unavailable"
    assert response.json()["request_id"] == response.headers["x-request-id"]


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
