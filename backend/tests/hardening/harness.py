"""What the hardening tests share: an app whose lifespan state they can inspect, committed users,
a dedicated PostgreSQL server they may stop, and an HTTP proxy that breaks AWS calls on demand.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import boto3
import httpx
from botocore.config import Config
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool
from starlette.types import ASGIApp, Receive, Scope, Send

from app.core.aws import client_config
from app.core.config import Settings
from app.core.roles import Role
from app.main import create_app
from app.models.user import User
from app.services.cognito import CognitoUserPool, single_attempt
from tests.api.conftest import background_beside, using_cognito

if TYPE_CHECKING:
    from mypy_boto3_cognito_idp import CognitoIdentityProviderClient
from tests.support.jwt_tokens import TEST_REGION, access_token_claims, mint_token, shared_rsa_key
from tests.support.moto_cognito import MotoCognito
from tests.support.servers import BackgroundServer

SIGNING_KEY_ID = "test-signing-key-1"  # the key the shared JWKS server of tests.api serves


# ---------------------------------------------------------------------------------------------
# The app, with its lifespan state at hand


class _WithState:
    def __init__(self, app: ASGIApp, state: Mapping[str, Any]) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app({**scope, "state": dict(self.state)}, receive, send)


@dataclass
class LiveApp:
    """An app after startup: its client (ASGI, in this event loop) and its lifespan state."""

    app: FastAPI
    client: httpx.AsyncClient
    state: Mapping[str, Any]

    @property
    def engine(self) -> AsyncEngine:
        engine: AsyncEngine = self.state["engine"]
        return engine

    def checked_out(self) -> int:
        """Connections the app's pool has handed out and not got back."""
        return int(self.engine.pool.checkedout())  # type: ignore[attr-defined]


@asynccontextmanager
async def live_app(
    settings: Settings,
    *,
    cognito: CognitoUserPool | None = None,
    customize: Callable[[FastAPI], None] | None = None,
    background: bool = True,
) -> AsyncIterator[LiveApp]:
    """`create_app(settings)`, its lifespan run here as a server would, and a client; with the
    worker process's background work beside it unless `background` is false (a test of the web
    process alone, e.g. of how often it reads the secret)."""
    app = create_app(settings)
    if customize is not None:
        customize(app)
    async with (
        app.router.lifespan_context(app) as lifespan_state,
        background_beside(lifespan_state or {}) if background else nullcontext() as switch,
    ):
        state = lifespan_state or {}
        transport = httpx.ASGITransport(app=_WithState(app, state))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            if cognito is None:
                yield LiveApp(app, client, state)
            else:
                with using_cognito(app, state, cognito, switch):
                    yield LiveApp(app, client, state)


def bearer(sub: str, *, kid: str = SIGNING_KEY_ID, **claims: object) -> dict[str, str]:
    """Authorization header with a fresh token (its own jti, so no verified-claims cache hit)."""
    token = mint_token(
        access_token_claims({"sub": sub, "jti": str(uuid.uuid4()), **claims}),
        shared_rsa_key(kid),
    )
    return {"Authorization": f"Bearer {token}"}


async def add_user(
    database_url: str,
    role: Role = Role.ADMIN,
    *,
    email: str | None = None,
    sub: str | None = None,
    province: str | None = None,
) -> User:
    """A committed user row (no Cognito side unless `sub` names one)."""
    unique = uuid.uuid4().hex[:12]
    if role is Role.OFFICER and province is None:
        province = "Chiang Mai"
    user = User(
        cognito_user_id=sub or str(uuid.uuid4()),
        email=email or f"{role.lower()}-{unique}@example.gov",
        full_name=f"Hardening {role.title()} {unique}",
        role=role,
        responsible_province=province,
        is_active=True,
    )
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            session.add(user)
            await session.commit()
    finally:
        await engine.dispose()
    return user


async def execute_sql(database_url: str, *statements: str) -> list[Any]:
    """Run statements in one committed transaction; the rows of the last one."""
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.begin() as connection:
            rows: list[Any] = []
            for statement in statements:
                result = await connection.execute(text(statement))
                rows = list(result.all()) if result.returns_rows else []
            return rows
    finally:
        await engine.dispose()


async def timed(awaitable: Any) -> tuple[Any, float]:
    started = time.monotonic()
    result = await awaitable
    return result, time.monotonic() - started


# ---------------------------------------------------------------------------------------------
# Logs


def _app_formatter() -> logging.Formatter:
    # The JSON formatter `configure_logging` installs, so `extra=` fields are searched too.
    for handler in logging.getLogger().handlers:
        if handler.formatter is not None and not isinstance(handler, RecordingHandler):
            return handler.formatter
    return logging.Formatter()


class RecordingHandler(logging.Handler):
    """Keeps every record, formatted the way the app formats them for production."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        # The production formatter, so `extra=` fields and tracebacks are searched as well.
        self.lines.append(_app_formatter().format(record))

    def at_least(self, level: int) -> list[logging.LogRecord]:
        return [record for record in self.records if record.levelno >= level]


@contextmanager
def recorded_logs() -> Iterator[RecordingHandler]:
    """Every log record of the process while the block runs (attach after `create_app`)."""
    handler = RecordingHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


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


def port_is_open(port: int) -> bool:
    with socket.socket() as probe, suppress(OSError):
        probe.settimeout(0.5)
        probe.connect(("127.0.0.1", port))
        return True
    return False


async def wait_until(predicate: Callable[[], Any], *, within: float, every: float = 0.1) -> None:
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within} s")
        await asyncio.sleep(every)
