"""Response bodies sent many times, gzipped once: for clients that accept gzip, as browsers do.

Nginx gzips JSON of 1 KB or more (`gzip_min_length`, level 5) in every response it proxies, so
a body the API sends again and again from a cache (a page of the user list) was
compressed anew for each request, on the same box as the API. A `ReusedBody` keeps its gzip
encoding beside it, made on the first request that accepts gzip; Nginx passes a response that
already has a `Content-Encoding` through untouched (its gzip filter skips it), and the API
sends a fifth of the bytes. A body with both encodings is one resource negotiated by
`Accept-Encoding`, so each of its answers says `Vary: Accept-Encoding` (RFC 9110 § 12.5.5),
whichever it sent; a body under `GZIP_MIN_BYTES` has one encoding and no `Vary`. A request
without `Accept-Encoding` gets the body as it is.
"""

from __future__ import annotations

import functools
import gzip
from dataclasses import dataclass, field
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

# Smaller bodies gain too little to be worth a second encoding (as Nginx's `gzip_min_length`).
GZIP_MIN_BYTES: Final = 1024
# zlib's default level: made once per page and change (its cost: docs/performance.md).
GZIP_LEVEL: Final = 6
_VARY: Final = (b"vary", b"Accept-Encoding")
_GZIPPED: Final = (b"content-encoding", b"gzip")


@functools.lru_cache(maxsize=64)  # clients send a handful of distinct values
def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding value accepts gzip (RFC 9110 section 12.5.3: `q=0` refuses)."""
    for item in accept_encoding.split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip().lower() not in {"gzip", "x-gzip", "*"}:
            continue
        quality = params.strip().lower().removeprefix("q=").strip()
        if not params.strip() or quality.rstrip("0").rstrip(".") not in {"", "0"}:
            return True
    return False


@dataclass(slots=True, eq=False)
class ReusedBody:
    """A JSON body made once and sent many times, and its gzip encoding, made on first use.

    Never changed once made but for that memo: compressing has no await in it, so the first
    request that wants it makes it and every later one finds it.
    """

    body: bytes
    _gzipped: bytes | None = field(default=None, init=False, repr=False)

    @property
    def compressible(self) -> bool:
        return len(self.body) >= GZIP_MIN_BYTES

    def gzipped(self) -> bytes:
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.body, compresslevel=GZIP_LEVEL, mtime=0)
        return self._gzipped

    def response(self, request: Request) -> Response:
        """The body as `request` accepts it: gzipped if it does, else as it is."""
        if not self.compressible:
            return Response(self.body, media_type="application/json")
        accepted = ", ".join(request.headers.getlist("accept-encoding"))
        if accepted and accepts_gzip(accepted):
            response = Response(self.gzipped(), media_type="application/json")
            response.raw_headers += [_GZIPPED, _VARY]
        else:
            response = Response(self.body, media_type="application/json")
            response.raw_headers.append(_VARY)
        return response
