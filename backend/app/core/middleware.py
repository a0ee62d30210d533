"""Pure ASGI middleware: request id in and out, and one access-log line per request."""

from __future__ import annotations

import logging
import random
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.logging import request_id_var

REQUEST_ID_HEADER = "x-request-id"
# Also kept in the scope: Starlette's outermost error middleware answers a crash after this
# middleware has returned, and must still be able to name the request.
REQUEST_ID_SCOPE_KEY = "one_system.request_id"
_ACCEPTABLE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

access_logger = logging.getLogger("app.access")


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            # An id we cannot trust in a log line is replaced, not echoed.
            return candidate if _ACCEPTABLE_REQUEST_ID.fullmatch(candidate) else None
    return None


def _new_request_id() -> str:
    # 32 hex digits, as a uuid4's: unique enough to find a request in the logs. Not from
    # os.urandom (uuid4): a request id needs no secrecy, and that is a system call per request.
    return f"{random.getrandbits(128):032x}"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or _new_request_id()
        scope[REQUEST_ID_SCOPE_KEY] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status_code = 500
        header = (b"x-request-id", request_id.encode("latin-1"))

        async def send_with_request_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                headers = message.setdefault("headers", [])
                # Error responses name their request themselves; everything else gets it here.
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    message["headers"] = [*headers, header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            if self.access_log:
                self._log(scope, status_code, started)
            request_id_var.reset(token)

    @staticmethod
    def _log(scope: Scope, status_code: int, started: float) -> None:
        access_logger.info(
            "%s %s %s",
            scope["method"],
            scope["path"],
            status_code,
            extra={
                "method": scope["method"],
                "path": scope["path"],
                "status": status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
                "client": scope["client"][0] if scope.get("client") else None,
            },
        )
