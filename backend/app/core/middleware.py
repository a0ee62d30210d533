"""Pure ASGI middleware: request id in and out, the request metrics, and an access-log line."""

from __future__ import annotations

import logging
import random
import re
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core import metrics
from app.core.logging import request_id_var

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


def route_template(scope: Scope) -> str:
    """The template of the route that served the request, with the prefix it was included under.

    FastAPI keeps the route's own template (`/users/{user_id}`) in `scope["route"]` and the
    prefix of its router elsewhere; the prefix is the part of the path before the route's
    segments (no route of this app has a parameter that spans segments).
    """
    route_path = getattr(scope.get("route"), "path", None)
    if not isinstance(route_path, str):
        return metrics.UNMATCHED_ROUTE
    # The path less as many segments as the template has: the prefix.
    path: str = scope["path"]
    prefix = path.rsplit("/", route_path.count("/"))[0]
    return prefix + route_path


# Indexed by a status code's hundreds: a request builds no string for its label.
_STATUS_CLASSES = tuple(f"{hundreds}xx" for hundreds in range(10))
# Each route's template, worked out on its first request, by the route object's id (routes
# are not hashable); the entry holds the route, so its id is never another's. A route is
# included under one prefix in this app, so its object names one template.
_TEMPLATES: dict[int, tuple[object, str]] = {}


def _count(scope: Scope, status_code: int, seconds: float) -> None:
    """The request in this process's counts (`app.core.metrics`, flushed once a second)."""
    route = scope.get("route")
    known = _TEMPLATES.get(id(route))
    if known is None:
        known = _TEMPLATES[id(route)] = (route, route_template(scope))
    template = known[1]
    labels = (template, scope["method"], _STATUS_CLASSES[status_code // 100 % 10])
    metrics.PER_REQUEST.requests.observe(labels, seconds)


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, access_log: bool = True, metrics: bool = True) -> None:
        self.app = app
        self.access_log = access_log
        self.metrics = metrics

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
                # Error responses (and only they) name their request themselves
                # (`app.core.errors`); everything else gets it here.
                if status_code < 400 or not any(
                    name.lower() == b"x-request-id" for name, _ in headers
                ):
                    message["headers"] = [*headers, header]
            await send(message)

        if self.metrics:
            metrics.PER_REQUEST.in_flight += 1
        try:
            await self.app(scope, receive, send_with_request_id)
        finally:
            if self.metrics:
                metrics.PER_REQUEST.in_flight -= 1
                _count(scope, status_code, time.perf_counter() - started)
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


class HeadAsGetMiddleware:
    """HEAD answered wherever GET is: the GET route runs and its body is not sent.

    RFC 9110 §9.3.2: a HEAD answer is the GET answer's status and headers (Content-Length and
    ETag included) without the content. FastAPI routes answer GET only, so monitors and
    clients that probe with HEAD met 405. The request is routed as GET and shows as HEAD again
    to the middleware around this one (the access log, the metrics) once it is answered.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_content(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body", False):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        scope["method"] = "GET"
        try:
            await self.app(scope, receive, without_content)
        finally:
            scope["method"] = "HEAD"
