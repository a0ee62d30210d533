"""CORS for the browser SPA: what it may send and read, and refusals in the API's error shape.

Starlette's middleware does the work; this subclass only changes how a refused preflight is
answered: a JSON error body with a `code` and the request id, like every other error, instead of
Starlette's text/plain. The browser fails the cross-origin call either way (the status is not
2xx); the body is for whoever debugs it. A request without `Origin` (same-origin, a script, the
ALB's probe) skips Starlette's header parsing: its answer only gets the `Vary: Origin` Starlette
would have added, so that a cache never hands it to a cross-origin caller.
"""

from __future__ import annotations

from typing import Final

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from app.core.errors import error_response

# Every request header the API documents or reads. Accept and Content-Type are CORS-safelisted
# for some values only (Content-Type: application/json is not), so Content-Type is named too.
REQUEST_HEADERS: Final = ("Authorization", "Content-Type", "If-None-Match", "X-Request-ID")
# Response headers a script may read: the cache validator, the request id to quote in a bug
# report, where a created user lives, and when to retry a 429 or 503.
EXPOSED_HEADERS: Final = ("ETag", "Location", "Retry-After", "X-Request-ID")
METHODS: Final = ("GET", "POST", "PUT")
PREFLIGHT_MAX_AGE_SECONDS: Final = 600

REFUSED_STATUS: Final = 400
REFUSED_CODE: Final = "cors_refused"

# Starlette's own body headers of the text answer it built; the JSON error sets its own.
_BODY_HEADERS: Final = frozenset({"content-length", "content-type"})
# A field line of its own: several Vary lines mean their values joined (RFC 9110 §5.3).
_VARY_ORIGIN: Final = (b"vary", b"Origin")


def _varying_by_origin(send: Send) -> Send:
    async def send_varying_by_origin(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [*message.get("headers", ()), _VARY_ORIGIN]
        await send(message)

    return send_varying_by_origin


class ApiCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware; a refused preflight is a JSON error of the API's shape."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not any(name == b"origin" for name, _ in scope["headers"]):
            await self.app(scope, receive, _varying_by_origin(send))
            return
        if scope["type"] == "http" and scope["method"] == "OPTIONS":
            headers = Headers(scope=scope)
            if "origin" in headers and "access-control-request-method" in headers:
                preflight = self.preflight_response(request_headers=headers)
                if preflight.status_code >= 400:
                    # Starlette's text names what was refused: "Disallowed CORS origin, headers".
                    detail = bytes(preflight.body).decode()
                    cors_headers = {
                        name: value
                        for name, value in preflight.headers.items()
                        if name not in _BODY_HEADERS
                    }
                    preflight = error_response(
                        Request(scope), REFUSED_STATUS, REFUSED_CODE, detail, cors_headers
                    )
                await preflight(scope, receive, send)
                return
        await super().__call__(scope, receive, send)
