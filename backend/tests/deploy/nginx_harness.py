"""Run the committed nginx configuration for real, in front of any upstream on loopback.

The committed files in nginx/ are production-correct (the upstream included from the file the
deploy script writes, listen 8080, the site's files under /etc/nginx/one-system/).
``render_nginx_conf`` rewrites exactly those environment-specific lines, and fails loudly if
one of them is no longer found, so every other directive is exercised as committed; it writes
the site's files for loopback (``SiteFiles``) into ``prefix/one-system/``.

Reuse from another test module::

    from tests.deploy.nginx_harness import run_nginx, run_uvicorn

    with run_uvicorn("app.main:app", env=...) as app_port, run_nginx(app_port) as proxy:
        httpx.get(proxy.url("/api/v1/users/me"), headers=...)

or request the ``nginx_in_front`` fixture (import it into the module or a conftest).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
NGINX_DIR = REPO_ROOT / "nginx"
MAIN_CONF = NGINX_DIR / "nginx.conf"
SITE_CONF = NGINX_DIR / "one-system.conf"

# The production-only lines of nginx/one-system.conf and what a loopback test uses instead.
PROD_UPSTREAM_INCLUDE = "include /etc/nginx/one-system-release/upstream.conf;"
PROD_LISTEN = "listen 8080 default_server;"
PROD_NAMED_LISTEN = "listen 8080;"
PROD_METRICS_LISTEN = "listen 9145;"
PROD_SITE_DIR = "/etc/nginx/one-system/"
SITE_FILE_EXAMPLES = REPO_ROOT / "deploy" / "nginx"
SITE_FILE_NAMES = ("trusted-proxies.conf", "server-name.conf", "cors-origins.map")
PROD_SITE_INCLUDE = "include /etc/nginx/conf.d/one-system.conf;"
PROD_WORKERS = "worker_processes auto;"

STARTUP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class RateLimit:
    """A limit_req zone's ``rate=`` and its ``burst=`` in location /api/, for a test config."""

    rate: str
    burst: int


@dataclass(frozen=True)
class SiteFiles:
    """The site's files for a loopback run: 127.0.0.1 plays the ALB (its only trusted address),
    so a client on 127.0.0.2 plays another host of the VPC."""

    trusted_proxies: tuple[str, ...] = ("127.0.0.1/32",)
    server_names: tuple[str, ...] = ("api.example.test", "127.0.0.1", "localhost")
    cors_origins: tuple[str, ...] = ("https://spa.example.test",)

    def write(self, directory: Path) -> None:
        directory.mkdir()
        trusted = "".join(f"set_real_ip_from {cidr};\n" for cidr in self.trusted_proxies)
        (directory / "trusted-proxies.conf").write_text(trusted)
        (directory / "server-name.conf").write_text(f"server_name {' '.join(self.server_names)};\n")
        origins = "".join(f'"{origin}" 1;\n' for origin in self.cors_origins)
        (directory / "cors-origins.map").write_text(origins)


@dataclass(frozen=True)
class RunningNginx:
    """An nginx master process listening on 127.0.0.1:``port``."""

    port: int
    prefix: Path
    process: subprocess.Popen[bytes]
    # Where the metrics server listens (the host's 127.0.0.1:9145 in production).
    metrics_port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def log_text(self) -> str:
        """nginx's stdout (access log) and stderr (error log), for assertion messages."""
        return (self.prefix / "nginx.log").read_text(errors="replace")

    def log_once_it_holds(self, text: str, within: float = 5.0) -> str:
        """The log, once `text` is in it (or as it is after `within` seconds): nginx writes a
        request's access-log line after its answer, so a client can read the answer first."""
        deadline = time.monotonic() + within
        while text not in (log := self.log_text) and time.monotonic() < deadline:
            time.sleep(0.02)
        return log


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def tool(name: str) -> str:
    """Path of a tool in the project venv or on PATH; fails (never skips) with the fix."""
    venv_bin = str(Path(sys.executable).parent)
    search_path = os.pathsep.join([venv_bin, os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=search_path)
    if found is None:
        pytest.fail(f"{name} is not installed: run scripts/install_test_tools.sh")
    return found


def nginx_binary() -> str:
    return tool("nginx")


def _replace_once(text: str, old: str, new: str, source: Path) -> str:
    count = text.count(old)
    if count != 1:
        raise AssertionError(f"expected {old!r} exactly once in {source.name}, found {count}")
    return text.replace(old, new)


def _set_rate_limit(site: str, zone: str, limit: RateLimit) -> str:
    """``site`` with the rate and burst of ``zone`` replaced; each must be found exactly once."""
    patterns = [
        (rf"(limit_req_zone \S+ zone={zone}:\S+ rate=)[^;]+;", rf"\g<1>{limit.rate};"),
        (rf"(limit_req zone={zone} burst=)\d+", rf"\g<1>{limit.burst}"),
    ]
    for pattern, replacement in patterns:
        site, count = re.subn(pattern, replacement, site)
        # A zone is declared once; it may be applied in several places (each server).
        if count == 0 or (count > 1 and "limit_req_zone" in pattern):
            raise AssertionError(f"expected {pattern!r} once in {SITE_CONF.name}, found {count}")
    return site


def render_nginx_conf(
    prefix: Path,
    *,
    upstream: str | Path,
    listen_port: int,
    rate_limits: Mapping[str, RateLimit] | None = None,
    site_files: SiteFiles | None = None,
    metrics_port: int | None = None,
) -> Path:
    """Write a loopback copy of the committed config into ``prefix``; return the main file.

    ``upstream`` is ``host:port`` of the app, or the path of an upstream file that replaces the
    deploy script's (which a test then rewrites and reloads nginx for). ``site_files`` are the
    site's files (default: ``SiteFiles()``, where 127.0.0.1 plays the ALB). ``rate_limits``
    replaces the committed rate and burst of the zones it names, so that a test can reach a
    limit with a few requests instead of a race against the clock.
    """
    site = SITE_CONF.read_text()
    for zone, limit in (rate_limits or {}).items():
        site = _set_rate_limit(site, zone, limit)
    upstream_line = f"include {upstream};" if isinstance(upstream, Path) else f"server {upstream};"
    site = _replace_once(site, PROD_UPSTREAM_INCLUDE, upstream_line, SITE_CONF)
    site = _replace_once(
        site, PROD_LISTEN, f"listen 127.0.0.1:{listen_port} default_server;", SITE_CONF
    )
    site = _replace_once(site, PROD_NAMED_LISTEN, f"listen 127.0.0.1:{listen_port};", SITE_CONF)
    metrics_listen = f"listen 127.0.0.1:{metrics_port or free_port()};"
    site = _replace_once(site, PROD_METRICS_LISTEN, metrics_listen, SITE_CONF)
    site_dir = prefix / "one-system"
    if site.count(f"include {PROD_SITE_DIR}") != len(SITE_FILE_NAMES):
        raise AssertionError(f"expected {len(SITE_FILE_NAMES)} includes of {PROD_SITE_DIR}")
    site = site.replace(PROD_SITE_DIR, f"{site_dir}/")
    (site_files or SiteFiles()).write(site_dir)
    site_path = prefix / "one-system.conf"
    site_path.write_text(site)

    main = MAIN_CONF.read_text()
    if main.count("/tmp/") < 6:
        raise AssertionError("nginx.conf no longer keeps its pid and temp paths under /tmp/")
    main = main.replace("/tmp/", f"{prefix}/")
    main = _replace_once(main, PROD_SITE_INCLUDE, f"include {site_path};", MAIN_CONF)
    main = _replace_once(main, PROD_WORKERS, "worker_processes 1;", MAIN_CONF)
    main_path = prefix / "nginx.conf"
    main_path.write_text(main)
    return main_path


def nginx_command(prefix: Path, conf: Path, *extra: str) -> list[str]:
    directives = "daemon off;"
    if os.geteuid() == 0:
        # Workers would otherwise run as "nobody" and could not use the temp dirs made by root.
        directives += " user root;"
    return [
        nginx_binary(),
        "-p",
        str(prefix),
        "-c",
        str(conf),
        "-e",
        "stderr",
        "-g",
        directives,
        *extra,
    ]


def nginx_config_test(prefix: Path, conf: Path) -> subprocess.CompletedProcess[str]:
    """``nginx -t`` on a rendered config."""
    return subprocess.run(
        nginx_command(prefix, conf, "-t"), capture_output=True, text=True, check=False, timeout=30
    )


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on {port} in {STARTUP_TIMEOUT_S} s")


def _stop(process: subprocess.Popen[bytes], sig: int) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


@contextmanager
def run_nginx(
    upstream_port: int,
    *,
    upstream_host: str = "127.0.0.1",
    rate_limits: Mapping[str, RateLimit] | None = None,
    site_files: SiteFiles | None = None,
    upstream_file: Path | None = None,
) -> Iterator[RunningNginx]:
    """Start nginx with the committed config in front of ``upstream_host:upstream_port``.

    With ``upstream_file``, the upstream is that file's content instead (``upstream_port`` is
    then ignored): what the deploy script writes.
    """
    with tempfile.TemporaryDirectory(prefix="nginx-") as tmp:
        prefix = Path(tmp)
        port, metrics_port = free_port(), free_port()
        conf = render_nginx_conf(
            prefix,
            upstream=upstream_file or f"{upstream_host}:{upstream_port}",
            listen_port=port,
            rate_limits=rate_limits,
            site_files=site_files,
            metrics_port=metrics_port,
        )
        log_path = prefix / "nginx.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                nginx_command(prefix, conf), stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_for_port(port, process, "nginx", log_path)
            yield RunningNginx(port, prefix, process, metrics_port)
        finally:
            _stop(process, signal.SIGQUIT)


def offline_app_env() -> dict[str, str]:
    """Settings that let the real app start with no database and no Cognito reachable.

    Every address is a loopback port nothing listens on, so startup probes fail fast instead
    of waiting; ``/health/live`` answers anyway.
    """
    dead = f"127.0.0.1:{free_port()}"
    return {
        "ENVIRONMENT": "test",
        "DB_HOST": "127.0.0.1",
        "DB_PORT": dead.rpartition(":")[2],
        "DB_NAME": "one_system",
        "DB_USER": "one_system",
        "DB_PASSWORD": "not-used",
        "AWS_REGION": "ap-southeast-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "COGNITO_USER_POOL_ID": "ap-southeast-1_offline",
        "COGNITO_APP_CLIENT_ID": "offline-client",
        "COGNITO_JWKS_URL": f"http://{dead}/.well-known/jwks.json",
        "S3_ATTACHMENTS_BUCKET": "attachments",
        "S3_EXPORTS_BUCKET": "exports",
        "S3_AUDIT_BUCKET": "audit",
        "S3_LANDING_BUCKET": "landing",
        "SQS_NOTIFICATION_QUEUE_URL": f"http://{dead}/000000000000/notifications",
        "SQS_EXPORT_QUEUE_URL": f"http://{dead}/000000000000/exports",
    }


@contextmanager
def run_uvicorn(
    app: str,
    *,
    args: tuple[str, ...] = (),
    env: Mapping[str, str] | None = None,
    app_dir: Path | None = None,
    launcher: str = "uvicorn",
) -> Iterator[int]:
    """Start ``uvicorn app`` as a subprocess on a free loopback port; yield the port.

    Only nginx's address (127.0.0.1) is trusted for X-Forwarded-* unless ``env`` or ``args``
    say otherwise, as in production. ``launcher="app.serve"`` starts it as the image does.
    """
    port = free_port()
    command = [sys.executable, "-m", launcher, app, "--host", "127.0.0.1", "--port", str(port)]
    command += ["--app-dir", str(app_dir or REPO_ROOT / "backend")]
    full_env = {**os.environ, "FORWARDED_ALLOW_IPS": "127.0.0.1", "WEB_CONCURRENCY": "1"}
    full_env.pop("PYTHONWARNINGS", None)
    full_env.update(env or {})
    with tempfile.TemporaryDirectory(prefix="uvicorn-") as tmp:
        log_path = Path(tmp) / "uvicorn.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*command, *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=tmp,
            )
        try:
            wait_for_port(port, process, f"uvicorn {app}", log_path)
            yield port
        finally:
            _stop(process, signal.SIGTERM)


@pytest.fixture
def nginx_in_front() -> Iterator[Callable[[int], RunningNginx]]:
    """Factory fixture: ``nginx_in_front(upstream_port)`` starts nginx; stopped at teardown."""
    with ExitStack() as stack:
        yield lambda upstream_port: stack.enter_context(run_nginx(upstream_port))


# --- a tiny ASGI app that reports what it received, for header-forwarding tests -------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ECHO_APP = f"{Path(__file__).stem}:echo_app"
APP_CSP = "default-src 'self'; connect-src 'self' https://auth.example.gov"
ECHO_APP_DIR = Path(__file__).resolve().parent


async def echo_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer every HTTP request with JSON describing the request as the app saw it.

    ``/api/v1/echo-large`` pads the answer past nginx's gzip_min_length; ``?status=N`` sets
    the status code and ``retry_after=S`` adds a Retry-After header.
    """
    if scope["type"] != "http":
        return
    body_size = 0
    while True:
        message = await receive()
        body_size += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    client = scope.get("client")
    payload: dict[str, Any] = {
        "client": client[0] if client else None,
        "scheme": scope["scheme"],
        "path": scope["path"],
        "method": scope["method"],
        "body_size": body_size,
        "headers": {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]},
    }
    if scope["path"] == "/api/v1/echo-large":
        payload["padding"] = ["one-system"] * 500
    query = parse_qs(scope.get("query_string", b"").decode())
    status = int(query.get("status", ["200"])[0])
    extra_headers = [(b"retry-after", value.encode()) for value in query.get("retry_after", [])]
    body = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # nginx must replace these with its own single copy.
                (b"x-frame-options", b"SAMEORIGIN"),
                (b"x-request-id", b"set-by-app"),
                # Replaced everywhere except under /docs, whose policy the app owns.
                (b"content-security-policy", APP_CSP.encode()),
                *extra_headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
