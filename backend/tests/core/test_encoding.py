"""Bodies sent many times are gzipped once, for the requests that accept gzip."""

from __future__ import annotations

import gzip

from starlette.requests import Request

from app.core.encoding import GZIP_MIN_BYTES, ReusedBody

LARGE = b'{"items": [' + b'{"name": "Somchai"},' * 100 + b"{}]}"


def request(*accept_encoding: bytes) -> Request:
    headers = [(b"accept-encoding", value) for value in accept_encoding]
    return Request({"type": "http", "method": "GET", "headers": headers})


def header(response: object, name: bytes) -> list[bytes]:
    return [value for key, value in response.raw_headers if key == name]  # type: ignore[attr-defined]


def test_a_large_body_is_gzipped_once_for_every_request_that_accepts_gzip() -> None:
    body = ReusedBody(LARGE)
    first, second = body.response(request(b"gzip, br")), body.response(request(b"gzip"))
    assert gzip.decompress(first.body) == LARGE
    assert first.body is second.body  # compressed once
    assert header(first, b"content-encoding") == [b"gzip"]
    assert header(first, b"vary") == [b"Accept-Encoding"]
    assert header(first, b"content-length") == [str(len(first.body)).encode()]


def test_the_body_as_it_is_without_gzip_accepted_and_the_same_vary() -> None:
    body = ReusedBody(LARGE)
    # No header; gzip refused with q=0; several field lines are one list (one of them gzip).
    for asked in (request(), request(b"br, gzip;q=0"), request(b"identity")):
        response = body.response(asked)
        assert response.body == LARGE
        assert header(response, b"content-encoding") == []
        assert header(response, b"vary") == [b"Accept-Encoding"]
    assert header(body.response(request(b"br", b"gzip")), b"content-encoding") == [b"gzip"]


def test_a_small_body_is_sent_as_it_is() -> None:
    small = b"x" * (GZIP_MIN_BYTES - 1)
    response = ReusedBody(small).response(request(b"gzip"))
    assert response.body == small
    assert header(response, b"content-encoding") == []
    assert header(response, b"vary") == []
