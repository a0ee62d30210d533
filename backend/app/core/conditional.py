"""Conditional GET (RFC 9110 § 13.1.2): a body with its ETag, or a bodiless 304 when unchanged.

`ETaggedResponse` compares the request's `If-None-Match` with its own ETag when it is sent, as
Starlette's `FileResponse` does with its validators, so a route returns the current
representation and never handles the header itself. Reading the header here rather than as a
FastAPI `Header` parameter saves FastAPI's per-parameter validation on the hottest reads, and
nothing can fail: any value either matches or does not. A route that answers this way takes
`if_none_match_parameter()` as its `openapi_extra`, so the contract still documents the header.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Receive, Scope, Send


def if_none_match_parameter() -> dict[str, Any]:
    """The `openapi_extra` of a route that answers this way: its `If-None-Match` header.

    A new dict each call: FastAPI merges it into the operation it builds, and operations that
    shared one would share their parameter list too.
    """
    return {
        "parameters": [
            {
                "name": "If-None-Match",
                "in": "header",
                "required": False,
                "description": "An ETag from an earlier response, to get 304 if unchanged",
                "schema": {"type": "string", "title": "If-None-Match"},
            }
        ]
    }


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Weak comparison against a list of tags, or `*`."""
    candidates = (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
    return any(tag in ("*", etag) for tag in candidates)


class ETaggedResponse(Response):
    """A JSON body rendered ahead of time, with its strong ETag and caching policy."""

    media_type = "application/json"

    def __init__(self, body: bytes, *, etag: str, cache_control: str) -> None:
        super().__init__(body)
        # Appended as they are sent: Starlette would build and lower-case a header mapping.
        self.raw_headers += [
            (b"cache-control", cache_control.encode("latin-1")),
            (b"etag", etag.encode("latin-1")),
        ]
        self.etag = etag
        self.cache_control = cache_control

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Several field lines of one list header are one comma-separated list (§ 5.3).
        if_none_match = ", ".join(Headers(scope=scope).getlist("if-none-match"))
        if if_none_match and etag_matches(if_none_match, self.etag):
            # The 304 carries the validators a 200 would have (§ 15.4.5), and no body.
            headers = {"Cache-Control": self.cache_control, "ETag": self.etag}
            await Response(status_code=304, headers=headers)(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
