"""The faults the hardening tests inflict: an HTTP proxy that breaks AWS calls on demand, and a
PostgreSQL server of their own that they stop, freeze and reconfigure; and how they time what
follows (`timed`; waiting for a condition is `tests.support.harness.wait_until`).

The app itself they start with `tests/support/harness.py`, like every other test directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import httpx
from botocore.config import Config

from app.core.aws import client_config
from app.core.config import Settings
from app.services.cognito import CognitoUserPool, single_attempt
from devtools.postgres import EmbeddedPostgres
from tests.support.jwt_tokens import TEST_REGION
from tests.support.moto_cognito import MotoCognito
from tests.support.servers import BackgroundServer

if TYPE_CHECKING:
    from mypy_boto3_cognito_idp import CognitoIdentityProviderClient


# ---------------------------------------------------------------------------------------------
# A PostgreSQL server of the hardening tests alone (the `own_pg` fixture)


class OwnPostgres(EmbeddedPostgres):
    """The dedicated server, with the faults the tests inflict on it."""

    def postmaster_pid(self) -> int:
        return int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])

    def server_pids(self) -> list[int]:
        """The postmaster and every backend and worker it forked."""
        parent = self.postmaster_pid()
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
        return [parent, *map(int, children)]

    def freeze(self) -> list[int]:
        """SIGSTOP every server process: connections hang instead of failing."""
        pids = self.server_pids()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    @staticmethod
    def thaw(pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def hba_prepend(self, line: str) -> None:
        """Put an authentication rule first in pg_hba.conf and reload the server."""
        hba = self.pgdata / "pg_hba.conf"
        stat = hba.stat()
        hba.write_text(f"{line}\n{hba.read_text()}")
        os.chown(hba, stat.st_uid, stat.st_gid)
        self.execute("SELECT pg_reload_conf()")


# ---------------------------------------------------------------------------------------------
# An AWS endpoint that breaks on demand


@dataclass
class Fault:
    """What the proxy does to matching calls: `times` of them (None: all), then pass through."""

    kind: str  # "status", "hang", "drop", "lost", "slow" (reaches the emulator after `delay`)
    times: int | None = None
    delay: float = 0.0
    status: int = 500
    error_type: str = "InternalErrorException"
    seen: int = 0


@dataclass
class _ProxyState:
    upstream: tuple[str, int]
    faults: dict[str, Fault] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)


class _ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _ProxyServer

    def do_POST(self) -> None:
        state = self.server.state
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        # JSON-protocol services (Cognito, Secrets Manager) name the operation in X-Amz-Target.
        operation = (self.headers.get("X-Amz-Target") or "").rsplit(".", 1)[-1]
        with state.lock:
            state.calls.append(operation)
            fault = state.faults.get(operation)
            if fault is not None and (fault.times is None or fault.seen < fault.times):
                fault.seen += 1
            else:
                fault = None
        if fault is not None and fault.kind == "hang":
            state.release.wait(60)
            self.close_connection = True
            return
        if fault is not None and fault.kind == "slow":
            # Carried out late: after the caller may have given up, as a call held up on its way.
            time.sleep(fault.delay)
        if fault is not None and fault.kind == "drop":
            self.close_connection = True  # no response at all: the connection just closes
            return
        if fault is not None and fault.kind == "status":
            payload = json.dumps({"__type": fault.error_type, "message": "injected"}).encode()
            self.send_response(fault.status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("x-amzn-ErrorType", fault.error_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        upstream = HTTPConnection(*state.upstream, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            upstream.request("POST", self.path, body=body, headers=headers)
            reply = upstream.getresponse()
            payload = reply.read()
        finally:
            upstream.close()
        if fault is not None and fault.kind == "lost":
            # Done upstream, but the answer never arrives: what a timeout after the fact looks like.
            self.close_connection = True
            return
        self.send_response(reply.status)
        for name, value in reply.getheaders():
            if name.lower() not in ("connection", "transfer-encoding", "content-length", "date"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: _ProxyState, port: int) -> None:
        self.state = state
        self.connections: set[socket.socket] = set()
        super().__init__(("127.0.0.1", port), _ProxyHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.state.lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.state.lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def sever(self) -> None:
        """Cut every open connection, as a server that goes away does."""
        with self.state.lock:
            connections = list(self.connections)
        for connection in connections:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that give up on a hanging call close their end


class FaultProxy:
    """An HTTP proxy on loopback in front of an AWS emulator, injecting faults per operation.

    `fail(op, Fault(...))` makes calls of `op` (e.g. "AdminAddUserToGroup", "GetSecretValue")
    answer an error status, hang, drop the connection, or reach the emulator and lose the answer.
    `refuse()` closes the port (connection refused) until `accept()`. `calls` lists every
    operation that reached the proxy, faulted or not.
    """

    def __init__(self, upstream_url: str) -> None:
        host, port = httpx.URL(upstream_url).host, httpx.URL(upstream_url).port
        assert port is not None
        self._state = _ProxyState(upstream=(host, port))
        self._running: BackgroundServer | None = None
        self._port: int | None = None
        self._refusing = False

    def start(self) -> FaultProxy:
        self._state.release.clear()
        # After `refuse()`, back on the port the clients already know.
        server = _ProxyServer(self._state, self._port or 0)
        self._port = server.server_address[1]
        self._running = BackgroundServer(server)
        return self

    def stop(self) -> None:
        self._state.release.set()
        if self._running is not None:
            self._running.stop()
            assert isinstance(self._running.server, _ProxyServer)
            self._running.server.sever()
            self._running = None

    def refuse(self) -> None:
        """Close the port: new connections are refused (kept-alive ones are closed too)."""
        self.stop()

    def accept(self) -> None:
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def fail(self, operation: str, fault: Fault) -> Fault:
        with self._state.lock:
            self._state.faults[operation] = fault
        return fault

    def heal(self) -> None:
        with self._state.lock:
            self._state.faults.clear()
        self._state.release.set()
        self._state.release = threading.Event()

    @property
    def calls(self) -> list[str]:
        with self._state.lock:
            return list(self._state.calls)

    def count(self, operation: str) -> int:
        return self.calls.count(operation)


def proxied_adapter(proxy: FaultProxy, moto: MotoCognito, settings: Settings) -> CognitoUserPool:
    """The adapter `CognitoUserPool.from_settings` builds, its calls going through `proxy`."""

    def client(config: Config) -> CognitoIdentityProviderClient:
        return boto3.client(
            "cognito-idp",
            region_name=TEST_REGION,
            endpoint_url=proxy.url,
            config=config,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    config = client_config(settings)
    return CognitoUserPool(
        client(config),
        moto.user_pool_id,
        create_client=client(single_attempt(config)),
        deadline_seconds=settings.cognito_deadline_seconds,
    )


@contextmanager
def fault_proxy(upstream_url: str) -> Iterator[FaultProxy]:
    proxy = FaultProxy(upstream_url).start()
    try:
        yield proxy
    finally:
        proxy.stop()


async def timed(awaitable: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = await awaitable
    return result, time.monotonic() - started
