"""JWKSCache against a real HTTP server: rotation, penalty window, outages and hostile documents."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from app.core.jwks import JWKSCache, JWKSUnavailableError, TokenError
from tests.support.jwt_tokens import (
    FakeClock,
    JWKSServer,
    RSAKeyPair,
    b64url,
    generate_rsa_key,
    jwks_document,
    shared_rsa_key,
)

SIGNING_INPUT = b"header.payload"


@pytest.fixture
def old_key() -> RSAKeyPair:
    return shared_rsa_key("rotation-old")


@pytest.fixture
def new_key() -> RSAKeyPair:
    return shared_rsa_key("rotation-new")


@pytest.fixture
def server(old_key: RSAKeyPair) -> Iterator[JWKSServer]:
    with JWKSServer(old_key) as jwks_server:
        yield jwks_server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def cache(server: JWKSServer, clock: FakeClock) -> AsyncIterator[JWKSCache]:
    jwks = JWKSCache(server.url, timeout=0.5, clock=clock)
    yield jwks
    await jwks.aclose()


@pytest.fixture
async def loaded(cache: JWKSCache, server: JWKSServer) -> JWKSCache:
    assert await cache.preload()
    assert server.request_count == 1
    return cache


def signed(key: RSAKeyPair) -> bytes:
    return key.private_key.sign(SIGNING_INPUT, padding.PKCS1v15(), hashes.SHA256())


async def assert_usable(cache: JWKSCache, key: RSAKeyPair) -> None:
    verification_key = await cache.get_key(key.kid)
    assert verification_key.kid == key.kid
    assert verification_key.verify(SIGNING_INPUT, signed(key))


# --- caching and rotation -----------------------------------------------------------------------


async def test_keys_are_fetched_once_and_reused(
    cache: JWKSCache, server: JWKSServer, old_key: RSAKeyPair
) -> None:
    first = await cache.get_key(old_key.kid)
    for _ in range(20):
        assert await cache.get_key(old_key.kid) is first

    assert server.request_count == 1
    assert first.alg == "RS256"


async def test_rotation_refetches_once(
    loaded: JWKSCache,
    server: JWKSServer,
    clock: FakeClock,
    old_key: RSAKeyPair,
    new_key: RSAKeyPair,
) -> None:
    server.serve_keys(old_key, new_key)
    clock.advance(11)

    await assert_usable(loaded, new_key)
    await assert_usable(loaded, new_key)
    await assert_usable(loaded, old_key)

    assert server.request_count == 2


async def test_unknown_kid_inside_the_penalty_window_does_not_fetch(
    loaded: JWKSCache, server: JWKSServer, clock: FakeClock, new_key: RSAKeyPair
) -> None:
    server.serve_keys(new_key)
    clock.advance(9.9)

    with pytest.raises(TokenError, match="kid not in JWKS") as caught:
        await loaded.get_key(new_key.kid)

    assert not isinstance(caught.value, JWKSUnavailableError)
    assert server.request_count == 1


async def test_penalty_window_after_an_unknown_kid(
    loaded: JWKSCache, server: JWKSServer, clock: FakeClock, new_key: RSAKeyPair
) -> None:
    clock.advance(11)
    with pytest.raises(TokenError):
        await loaded.get_key("forged-1")
    assert server.request_count == 2

    server.serve_keys(new_key)
    clock.advance(5)
    for kid in ("forged-2", new_key.kid, "forged-3"):
        with pytest.raises(TokenError):
            await loaded.get_key(kid)
    assert server.request_count == 2

    clock.advance(5)
    await assert_usable(loaded, new_key)
    assert server.request_count == 3


async def test_concurrent_unknown_kids_share_one_fetch(
    loaded: JWKSCache,
    server: JWKSServer,
    clock: FakeClock,
    old_key: RSAKeyPair,
    new_key: RSAKeyPair,
) -> None:
    server.serve_keys(old_key, new_key)
    clock.advance(11)

    keys = await asyncio.gather(*(loaded.get_key(new_key.kid) for _ in range(100)))

    assert {key.kid for key in keys} == {new_key.kid}
    assert server.request_count == 2


async def test_concurrent_first_use_shares_one_fetch(
    cache: JWKSCache, server: JWKSServer, old_key: RSAKeyPair
) -> None:
    outcomes = await asyncio.gather(
        *(cache.get_key(kid) for kid in [old_key.kid] * 50 + ["forged"] * 50),
        return_exceptions=True,
    )

    assert sum(isinstance(outcome, TokenError) for outcome in outcomes) == 50
    assert server.request_count == 1


async def test_ttl_expiry_refreshes(
    loaded: JWKSCache, server: JWKSServer, clock: FakeClock, old_key: RSAKeyPair
) -> None:
    clock.advance(86_399)
    await assert_usable(loaded, old_key)
    assert server.request_count == 1

    clock.advance(1)
    await assert_usable(loaded, old_key)
    assert server.request_count == 2


async def test_ttl_refresh_drops_retired_keys(
    loaded: JWKSCache,
    server: JWKSServer,
    clock: FakeClock,
    old_key: RSAKeyPair,
    new_key: RSAKeyPair,
) -> None:
    server.serve_keys(new_key)
    clock.advance(86_400)

    await assert_usable(loaded, new_key)
    assert not loaded.holds(old_key.kid)
    with pytest.raises(TokenError):
        await loaded.get_key(old_key.kid)


# --- outages ------------------------------------------------------------------------------------


async def test_server_down_keeps_cached_keys_and_fails_fast(
    loaded: JWKSCache, server: JWKSServer, clock: FakeClock, old_key: RSAKeyPair
) -> None:
    server.stop()
    clock.advance(11)

    await assert_usable(loaded, old_key)
    with pytest.raises(JWKSUnavailableError):
        await asyncio.wait_for(loaded.get_key("new-kid"), timeout=2)
    # Inside the penalty window nothing waits on the network at all.
    with pytest.raises(JWKSUnavailableError):
        await asyncio.wait_for(loaded.get_key("another-new-kid"), timeout=0.1)
    await assert_usable(loaded, old_key)


async def test_failed_ttl_refresh_keeps_last_good_keys(
    loaded: JWKSCache, server: JWKSServer, clock: FakeClock, old_key: RSAKeyPair
) -> None:
    server.serve_status(503)
    clock.advance(86_400)

    await assert_usable(loaded, old_key)
    await assert_usable(loaded, old_key)
    assert server.request_count == 2  # retried only after the refetch interval

    clock.advance(10)
    server.serve_keys(old_key)
    await assert_usable(loaded, old_key)
    assert server.request_count == 3


async def test_hanging_server_is_cut_off_at_the_timeout(
    loaded: JWKSCache, server: JWKSServer, clock: FakeClock, old_key: RSAKeyPair
) -> None:
    server.hang(30)
    clock.advance(11)

    with pytest.raises(JWKSUnavailableError):
        await asyncio.wait_for(loaded.get_key("new-kid"), timeout=3)

    await asyncio.wait_for(assert_usable(loaded, old_key), timeout=0.5)


async def test_trickling_server_is_cut_off_at_the_total_timeout(
    loaded: JWKSCache, server: JWKSServer, clock: FakeClock
) -> None:
    # Each byte arrives well within a per-read timeout; only a deadline on the whole exchange helps.
    server.trickle(0.05)
    clock.advance(11)

    with pytest.raises(JWKSUnavailableError):
        await asyncio.wait_for(loaded.get_key("new-kid"), timeout=3)


async def test_hanging_server_blocks_only_the_refreshing_request(
    loaded: JWKSCache, server: JWKSServer, clock: FakeClock, old_key: RSAKeyPair
) -> None:
    server.hang(30)
    clock.advance(86_400)

    refresh = asyncio.create_task(loaded.get_key(old_key.kid))
    await asyncio.sleep(0.05)
    # While one request waits on the IdP, others keep verifying with the stale keys.
    await asyncio.wait_for(assert_usable(loaded, old_key), timeout=0.1)
    assert (await asyncio.wait_for(refresh, timeout=3)).kid == old_key.kid


async def test_unreachable_before_any_load(old_key: RSAKeyPair) -> None:
    with JWKSServer(old_key) as server:
        url = server.url
    cache = JWKSCache(url, timeout=0.5, clock=FakeClock())

    assert await cache.preload() is False
    with pytest.raises(JWKSUnavailableError):
        await cache.get_key(old_key.kid)
    await cache.aclose()


@pytest.mark.parametrize("url", ["not a url", "ftp://127.0.0.1/jwks.json", "http://[::1"])
async def test_preload_never_raises(url: str) -> None:
    cache = JWKSCache(url, timeout=0.5)
    assert await cache.preload() is False
    await cache.aclose()


async def test_preload_of_a_hanging_server_returns_in_time(server: JWKSServer) -> None:
    server.hang(30)
    cache = JWKSCache(server.url, timeout=0.5)
    assert await asyncio.wait_for(cache.preload(), timeout=3) is False
    await cache.aclose()


# --- hostile or broken documents ----------------------------------------------------------------


GARBAGE = {
    "not json": b"<html>hello</html>",
    "empty": b"",
    "json array": b"[]",
    "keys not a list": b'{"keys": {"kid": "x"}}',
    "no keys": b'{"keys": []}',
    "not utf-8": b'{"keys": "\xff"}',
    "deeply nested": b'{"keys": ' + b"[" * 10_000,
    "only unusable keys": json.dumps(
        {"keys": [{"kid": "ec", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}
    ).encode(),
}


@pytest.mark.parametrize("body", GARBAGE.values(), ids=GARBAGE.keys())
async def test_garbage_document_keeps_previous_keys(
    loaded: JWKSCache, server: JWKSServer, clock: FakeClock, old_key: RSAKeyPair, body: bytes
) -> None:
    server.serve_body(body)
    clock.advance(86_400)

    await assert_usable(loaded, old_key)
    with pytest.raises(JWKSUnavailableError):
        await loaded.get_key("new-kid")
    assert server.request_count == 2


@pytest.mark.parametrize("declare_length", [True, False])
async def test_oversized_document_is_ignored(
    loaded: JWKSCache,
    server: JWKSServer,
    clock: FakeClock,
    old_key: RSAKeyPair,
    new_key: RSAKeyPair,
    declare_length: bool,
) -> None:
    # A valid JWKS, padded past the cap: only the size can be the reason it is refused.
    body = json.dumps(jwks_document(old_key, new_key)).encode() + b" " * (64 * 1024)
    server.serve_body(body, declare_length=declare_length)
    clock.advance(11)

    with pytest.raises(JWKSUnavailableError):
        await loaded.get_key(new_key.kid)
    await assert_usable(loaded, old_key)


async def test_document_just_under_the_cap_is_accepted(
    cache: JWKSCache, server: JWKSServer, old_key: RSAKeyPair
) -> None:
    body = json.dumps(jwks_document(old_key)).encode()
    server.serve_body(body + b" " * (64 * 1024 - len(body)), declare_length=False)

    await assert_usable(cache, old_key)


async def test_bad_keys_are_skipped_and_good_ones_kept(
    cache: JWKSCache, server: JWKSServer, old_key: RSAKeyPair
) -> None:
    weak = generate_rsa_key("weak", bits=1024)
    server.serve_json(
        {
            "keys": [
                "not an object",
                {"kty": "RSA", "n": "AQAB", "e": "AQAB"},  # no kid
                {"kid": 7, "kty": "RSA", "n": "AQAB", "e": "AQAB"},
                {"kid": "ec", "kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"},
                {"kid": "oct", "kty": "oct", "k": b64url(b"secret"), "alg": "HS256"},
                shared_rsa_key("rs512").public_jwk(alg="RS512"),
                shared_rsa_key("enc").public_jwk(use="enc"),
                {**shared_rsa_key("private").public_jwk(), "d": "AQAB"},
                {"kid": "broken-n", "kty": "RSA", "n": "!!!", "e": "AQAB"},
                {"kid": "zero-n", "kty": "RSA", "n": "", "e": "AQAB"},
                {"kid": "no-n", "kty": "RSA", "e": "AQAB"},
                weak.public_jwk(),
                old_key.public_jwk(),
            ]
        }
    )

    await assert_usable(cache, old_key)
    for kid in ("ec", "oct", "rs512", "enc", "private", "broken-n", "zero-n", "no-n", "weak"):
        assert not cache.holds(kid)


async def test_duplicate_kids_are_not_trusted(
    cache: JWKSCache, server: JWKSServer, old_key: RSAKeyPair, new_key: RSAKeyPair
) -> None:
    impostor = {**new_key.public_jwk(), "kid": old_key.kid}
    server.serve_json({"keys": [old_key.public_jwk(), impostor, new_key.public_jwk()]})

    await assert_usable(cache, new_key)
    assert not cache.holds(old_key.kid)


async def test_redirects_are_not_followed(old_key: RSAKeyPair) -> None:
    with JWKSServer(old_key) as elsewhere, JWKSServer() as server:
        server.serve_body(b"", status=302, headers={"Location": elsewhere.url})
        # Even a caller-supplied client that follows redirects must not follow this one.
        async with httpx.AsyncClient(follow_redirects=True) as http:
            cache = JWKSCache(server.url, http=http, timeout=0.5)
            assert await cache.preload() is False
            await cache.aclose()
            assert not http.is_closed  # not ours to close
        assert elsewhere.request_count == 0
