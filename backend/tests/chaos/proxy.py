"""An HTTP proxy between the app instances and the Cognito emulator that breaks calls at random.

While a fault kind's window is open, each call has an even chance of meeting one of the open
kinds (several may be open at once; one is drawn per call):

- `cognito_error`:    Cognito answers 500 InternalErrorException; nothing is done.
- `cognito_throttle`: Cognito answers 400 TooManyRequestsException; nothing is done.
- `cognito_hang`:     the call is held past every client timeout, then the connection closes;
                      nothing is done.
- `cognito_lost`:     the call is done, and its answer dropped (the connection closes).
- `cognito_late`:     the call is held until the client has given up (past the 5 s read
                      timeout), then done; its answer goes nowhere. A disable that lands after
                      the enable that followed it, a create that lands after its request
                      answered 503.

The proxy speaks the JSON protocol Cognito's API uses (`X-Amz-Target` names the operation).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from contextlib import suppress
from http.client import HTTPConnection
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from tests.support.servers import BackgroundServer

COGNITO_FAULTS: Final = (
    "cognito_error",
    "cognito_throttle",
    "cognito_hang",
    "cognito_lost",
    "cognito_late",
)
# Past the SDK's 5 s read timeout and the 8 s deadline of a request's Cognito work.
HANG_SECONDS: Final = 12.0
LATE_SECONDS: Final = (6.0, 9.0)
FAULT_CHANCE: Final = 0.5


class CognitoFaults:
    """The open fault windows and what they did; shared by the proxy's threads."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._lock = threading.Lock()
        self._open_until: dict[str, float] = {}
        # Kinds opened that no call has met yet: the next call meets one, whatever the chance,
        # so that a short run (make test's 30 s) never opens a window no call falls into.
        self._unmet: set[str] = set()
        self.injected: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        # Set when the run is over: held calls are let go at once.
        self.released = threading.Event()

    def open(self, kind: str, seconds: float) -> None:
        with self._lock:
            until = time.monotonic() + seconds
            self._open_until[kind] = max(self._open_until.get(kind, 0.0), until)
            if not self.injected[kind]:
                self._unmet.add(kind)

    def close_all(self) -> None:
        with self._lock:
            self._open_until.clear()
            self._unmet.clear()
        self.released.set()

    def draw(self, operation: str) -> str | None:
        """The fault this call meets, if any."""
        now = time.monotonic()
        with self._lock:
            self.calls[operation] += 1
            if self._unmet:
                kind = min(self._unmet)
                self._unmet.discard(kind)
                self.injected[kind] += 1
                return kind
            open_kinds = sorted(kind for kind, until in self._open_until.items() if until > now)
            if not open_kinds or self._rng.random() >= FAULT_CHANCE:
                return None
            kind = self._rng.choice(open_kinds)
            self.injected[kind] += 1
            return kind

    def late_seconds(self) -> float:
        with self._lock:
            return self._rng.uniform(*LATE_SECONDS)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_POST(self) -> None:
        faults = self.server.faults
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        operation = (self.headers.get("X-Amz-Target") or "").rsplit(".", 1)[-1]
        fault = faults.draw(operation)
        if fault == "cognito_error":
            self._error(500, "InternalErrorException")
        elif fault == "cognito_throttle":
            self._error(400, "TooManyRequestsException")
        elif fault == "cognito_hang":
            faults.released.wait(HANG_SECONDS)
            self.close_connection = True
        elif fault == "cognito_late":
            faults.released.wait(faults.late_seconds())
            self._forward(body)
            self.close_connection = True
        elif fault == "cognito_lost":
            self._forward(body)
            self.close_connection = True
        else:
            self._answer(*self._forward(body))

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        upstream = HTTPConnection(*self.server.upstream, timeout=30)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
            upstream.request("POST", self.path, body=body, headers=headers)
            reply = upstream.getresponse()
            return reply.status, reply.getheaders(), reply.read()
        finally:
            upstream.close()

    def _answer(self, status: int, headers: list[tuple[str, str]], payload: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in ("connection", "transfer-encoding", "content-length", "date"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _error(self, status: int, error_type: str) -> None:
        payload = json.dumps({"__type": error_type, "message": "injected by the chaos run"})
        headers = [
            ("Content-Type", "application/x-amz-json-1.1"),
            ("x-amzn-ErrorType", error_type),
        ]
        self._answer(status, headers, payload.encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, faults: CognitoFaults, upstream: tuple[str, int]) -> None:
        self.faults = faults
        self.upstream = upstream
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that gave up on a held call have closed their end


class CognitoFaultProxy:
    """The proxy on a loopback port; `url` is what the apps use as Cognito's endpoint."""

    def __init__(self, upstream_url: str, faults: CognitoFaults) -> None:
        host, _, port = upstream_url.removeprefix("http://").partition(":")
        self.faults = faults
        self._server = _Server(faults, (host, int(port)))
        self._running = BackgroundServer(self._server)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self.faults.close_all()
        with suppress(OSError):
            self._running.stop()
