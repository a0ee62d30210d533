"""Every rule of the access-token contract, each against a real JWKS served over HTTP."""

from __future__ import annotations

import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from app.core.jwks import (
    JWKSCache,
    JWKSUnavailableError,
    TokenError,
    cognito_issuer,
    cognito_jwks_url,
)
from app.core.tokens import AccessClaims, AccessTokenVerifier
from tests.support.jwt_tokens import (
    OMIT,
    TEST_CLIENT_ID,
    TEST_ISSUER,
    FakeClock,
    JWKSServer,
    RSAKeyPair,
    access_token_claims,
    b64url,
    encode_jws,
    id_token_claims,
    mint_token,
    shared_rsa_key,
)

NOW = float(int(time.time()))


@pytest.fixture
def key() -> RSAKeyPair:
    return shared_rsa_key("main-key")


@pytest.fixture
def jwks_server(key: RSAKeyPair) -> Iterator[JWKSServer]:
    with JWKSServer(key) as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(NOW)


@pytest.fixture
async def jwks(jwks_server: JWKSServer) -> AsyncIterator[JWKSCache]:
    cache = JWKSCache(jwks_server.url, timeout=2.0)
    yield cache
    await cache.aclose()


@pytest.fixture
def verifier(jwks: JWKSCache, clock: FakeClock) -> AccessTokenVerifier:
    return AccessTokenVerifier(jwks, issuer=TEST_ISSUER, client_id=TEST_CLIENT_ID, clock=clock)


def claims(**overrides: object) -> dict[str, object]:
    return access_token_claims(overrides, now=NOW)


async def rejected(verifier: AccessTokenVerifier, token: str, reason: str) -> TokenError:
    with pytest.raises(TokenError, match=reason) as caught:
        await verifier.verify(token)
    return caught.value


def test_cognito_urls() -> None:
    assert cognito_issuer("eu-west-1", "eu-west-1_Abc") == (
        "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Abc"
    )
    assert cognito_jwks_url("eu-west-1", "eu-west-1_Abc") == (
        "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Abc/.well-known/jwks.json"
    )


async def test_valid_access_token(verifier: AccessTokenVerifier, key: RSAKeyPair) -> None:
    token = mint_token(access_token_claims({"cognito:groups": ["admins", "staff"]}, now=NOW), key)

    assert await verifier.verify(token) == AccessClaims(
        sub="8f2c6a1e-0000-4000-8000-000000000001",
        username="test-user",
        client_id=TEST_CLIENT_ID,
        token_use="access",
        exp=int(NOW) + 3600,
        iat=int(NOW),
        auth_time=int(NOW),
        jti="0c0ffee0-0000-4000-8000-000000000004",
        groups=("admins", "staff"),
    )


async def test_optional_claims_may_be_absent(
    verifier: AccessTokenVerifier, key: RSAKeyPair
) -> None:
    token = mint_token(claims(username=OMIT, jti=OMIT), key)

    verified = await verifier.verify(token)

    assert (verified.username, verified.jti, verified.groups) == (None, None, ())


async def test_jwk_without_alg_is_usable(
    verifier: AccessTokenVerifier, key: RSAKeyPair, jwks_server: JWKSServer
) -> None:
    jwks_server.serve_keys(key, alg=None)

    assert (await verifier.verify(mint_token(claims(), key))).sub


# --- time ---------------------------------------------------------------------------------------


async def test_expired_token(verifier: AccessTokenVerifier, key: RSAKeyPair) -> None:
    await rejected(verifier, mint_token(claims(exp=int(NOW) - 1), key), "expired")


async def test_exp_gets_no_leeway(
    verifier: AccessTokenVerifier, key: RSAKeyPair, clock: FakeClock
) -> None:
    token = mint_token(claims(exp=int(NOW) + 10), key)
    await verifier.verify(token)

    clock.advance(10)

    await rejected(verifier, token, "expired")


async def test_expiry_is_enforced_on_cached_claims(
    verifier: AccessTokenVerifier, key: RSAKeyPair, clock: FakeClock
) -> None:
    token = mint_token(claims(), key)
    await verifier.verify(token)
    await verifier.verify(token)

    clock.advance(3600)

    await rejected(verifier, token, "expired")


@pytest.mark.parametrize(
    "exp",
    [OMIT, None, str(int(NOW) + 600), NOW + 600.5, True],
    ids=["missing", "null", "a string", "a float", "a boolean"],
)
async def test_exp_must_be_an_integer(
    verifier: AccessTokenVerifier, key: RSAKeyPair, exp: object
) -> None:
    await rejected(verifier, mint_token(claims(exp=exp), key), "exp")


async def test_iat_in_the_future(verifier: AccessTokenVerifier, key: RSAKeyPair) -> None:
    await rejected(verifier, mint_token(claims(iat=int(NOW) + 61), key), "iat in the future")


async def test_iat_within_leeway(verifier: AccessTokenVerifier, key: RSAKeyPair) -> None:
    assert await verifier.verify(mint_token(claims(iat=int(NOW) + 60), key))


async def test_iat_is_required(verifier: AccessTokenVerifier, key: RSAKeyPair) -> None:
    await rejected(verifier, mint_token(claims(iat=OMIT), key), "iat missing")


async def test_a_refreshed_token_keeps_its_session_start(
    verifier: AccessTokenVerifier, key: RSAKeyPair
) -> None:
    # Cognito keeps `auth_time` across refreshes; each refreshed token has a new `iat`.
    signed_in = int(NOW) - 7200
    verified = await verifier.verify(mint_token(claims(auth_time=signed_in), key))
    assert (verified.iat, verified.session_started_at) == (int(NOW), signed_in)


async def test_a_token_without_auth_time_began_at_iat(
    verifier: AccessTokenVerifier, key: RSAKeyPair
) -> None:
    verified = await verifier.verify(mint_token(claims(auth_time=OMIT), key))
    assert verified.session_started_at == verified.iat == int(NOW)


async def test_auth_time_after_iat(verifier: AccessTokenVerifier, key: RSAKeyPair) -> None:
    token = mint_token(claims(auth_time=int(NOW) + 61), key)
    await rejected(verifier, token, "auth_time after iat")


@pytest.mark.parametrize(
    "auth_time", [str(int(NOW)), NOW - 0.5, True], ids=["a string", "a float", "a boolean"]
)
async def test_auth_time_must_be_an_integer(
    verifier: AccessTokenVerifier, key: RSAKeyPair, auth_time: object
) -> None:
    await rejected(verifier, mint_token(claims(auth_time=auth_time), key), "auth_time")


async def test_nbf_in_the_future(verifier: AccessTokenVerifier, key: RSAKeyPair) -> None:
    await rejected(verifier, mint_token(claims(nbf=int(NOW) + 120), key), "nbf")


async def test_nbf_in_the_past(verifier: AccessTokenVerifier, key: RSAKeyPair) -> None:
    assert await verifier.verify(mint_token(claims(nbf=int(NOW) - 5), key))


# --- who issued it, for whom, and what it is ----------------------------------------------------


@pytest.mark.parametrize(
    "issuer",
    [
        "https://cognito-idp.ap-southeast-1.amazonaws.com/ap-southeast-1_OtherPool",
        TEST_ISSUER + "/",
        TEST_ISSUER.upper(),
        OMIT,
    ],
)
async def test_wrong_issuer(verifier: AccessTokenVerifier, key: RSAKeyPair, issuer: object) -> None:
    await rejected(verifier, mint_token(claims(iss=issuer), key), "issuer")


async def test_id_token_is_rejected(verifier: AccessTokenVerifier, key: RSAKeyPair) -> None:
    await rejected(verifier, mint_token(id_token_claims(now=NOW), key), "token_use")


@pytest.mark.parametrize("token_use", [OMIT, "id", "ACCESS", ["access"]])
async def test_token_use_must_be_access(
    verifier: AccessTokenVerifier, key: RSAKeyPair, token_use: object
) -> None:
    await rejected(verifier, mint_token(claims(token_use=token_use), key), "token_use")


@pytest.mark.parametrize("client_id", [OMIT, "another-client", ""])
async def test_wrong_client_id(
    verifier: AccessTokenVerifier, key: RSAKeyPair, client_id: object
) -> None:
    await rejected(verifier, mint_token(claims(client_id=client_id), key), "client_id")


async def test_aud_is_not_required(verifier: AccessTokenVerifier, key: RSAKeyPair) -> None:
    assert "aud" not in claims()
    assert await verifier.verify(mint_token(claims(), key))


@pytest.mark.parametrize("sub", [OMIT, "", 42])
async def test_sub_is_required(verifier: AccessTokenVerifier, key: RSAKeyPair, sub: object) -> None:
    await rejected(verifier, mint_token(claims(sub=sub), key), "sub")


@pytest.mark.parametrize(
    ("name", "value"),
    [("username", 7), ("jti", ["x"]), ("cognito:groups", "admins"), ("cognito:groups", [1])],
)
async def test_malformed_optional_claims(
    verifier: AccessTokenVerifier, key: RSAKeyPair, name: str, value: object
) -> None:
    await rejected(verifier, mint_token(access_token_claims({name: value}, now=NOW), key), name)


# --- header and algorithm -----------------------------------------------------------------------


async def test_alg_none(verifier: AccessTokenVerifier, key: RSAKeyPair) -> None:
    await rejected(verifier, mint_token(claims(), key, alg="none", signing_key=None), "alg")


async def test_hs256_signed_with_the_public_key(
    verifier: AccessTokenVerifier, key: RSAKeyPair
) -> None:
    for secret in (key.public_pem(), json.dumps(key.public_jwk()).encode()):
        token = mint_token(claims(), key, alg="HS256", signing_key=secret)
        await rejected(verifier, token, "alg")


@pytest.mark.parametrize("alg", ["RS512", "PS256", "RS384", "rs256", "RS256 "])
async def test_other_rsa_algorithms(
    verifier: AccessTokenVerifier, key: RSAKeyPair, alg: str
) -> None:
    signable = alg if alg in ("RS512", "PS256", "RS384") else "RS256"
    header = {"alg": alg, "kid": key.kid}
    token = encode_jws(header, claims(), key=key, alg=signable)
    await rejected(verifier, token, "alg")


async def test_es256(verifier: AccessTokenVerifier, key: RSAKeyPair) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    token = mint_token(claims(), key, alg="ES256", signing_key=ec_key)
    await rejected(verifier, token, "alg")


async def test_alg_missing(verifier: AccessTokenVerifier, key: RSAKeyPair) -> None:
    token = encode_jws({"kid": key.kid}, claims(), key=key, alg="RS256")
    await rejected(verifier, token, "alg")


async def test_header_alg_must_match_the_jwk_alg(
    verifier: AccessTokenVerifier, key: RSAKeyPair, jwks_server: JWKSServer
) -> None:
    # A JWK that declares another algorithm is never used to verify an RS256 signature.
    jwks_server.serve_keys(key, alg="RS512")
    await rejected(verifier, mint_token(claims(), key), "kid|JWKS")


async def test_missing_kid(verifier: AccessTokenVerifier, key: RSAKeyPair) -> None:
    await rejected(verifier, mint_token(claims(), key, headers={"kid": OMIT}), "kid")


@pytest.mark.parametrize("kid", [123, None, "", ["main-key"], {"k": 1}, "k" * 257])
async def test_kid_must_be_a_short_string(
    verifier: AccessTokenVerifier, key: RSAKeyPair, jwks_server: JWKSServer, kid: object
) -> None:
    await rejected(verifier, mint_token(claims(), key, headers={"kid": kid}), "kid")
    assert jwks_server.request_count == 0


async def test_unknown_kid(
    verifier: AccessTokenVerifier, key: RSAKeyPair, jwks_server: JWKSServer
) -> None:
    error = await rejected(
        verifier, mint_token(claims(), key, headers={"kid": "not-in-the-jwks"}), "kid"
    )
    assert not isinstance(error, JWKSUnavailableError)


async def test_key_from_another_pool(verifier: AccessTokenVerifier, key: RSAKeyPair) -> None:
    stranger = shared_rsa_key("stranger")
    token = mint_token(claims(), stranger, headers={"kid": key.kid})
    await rejected(verifier, token, "signature")


async def test_crit_header(verifier: AccessTokenVerifier, key: RSAKeyPair) -> None:
    token = mint_token(claims(), key, headers={"crit": ["exp"], "exp": int(NOW) + 60})
    await rejected(verifier, token, "crit")


async def test_jku_is_never_followed(verifier: AccessTokenVerifier) -> None:
    attacker_key = shared_rsa_key("attacker")
    with JWKSServer(attacker_key) as attacker:
        token = mint_token(claims(), attacker_key, headers={"jku": attacker.url})

        await rejected(verifier, token, "key URL")

        assert attacker.request_count == 0


@pytest.mark.parametrize("header", ["jku", "x5u", "jwk", "x5c"])
async def test_key_carrying_headers_are_refused_unfollowed(
    verifier: AccessTokenVerifier, key: RSAKeyPair, header: str
) -> None:
    attacker_key = shared_rsa_key("attacker")
    with JWKSServer(attacker_key) as attacker:
        embedded = {
            "jku": attacker.url,
            "x5u": attacker.base_url + "/cert.pem",
            "jwk": attacker_key.public_jwk(),
            "x5c": ["MIIB"],
        }
        # Naming the real kid, signed by the attacker or even by the real key: both refused.
        forged = mint_token(
            claims(), key, headers={header: embedded[header]}, signing_key=attacker_key
        )
        genuine = mint_token(claims(), key, headers={header: embedded[header]})

        await rejected(verifier, forged, "key URL")
        await rejected(verifier, genuine, "key URL")

        assert attacker.request_count == 0


# --- shape --------------------------------------------------------------------------------------


async def test_tampered_payload(verifier: AccessTokenVerifier, key: RSAKeyPair) -> None:
    header, _, signature = mint_token(claims(), key).split(".")
    forged_payload = b64url(json.dumps(claims(sub="someone-else")).encode())
    await rejected(verifier, f"{header}.{forged_payload}.{signature}", "signature")


async def test_truncated_signature(verifier: AccessTokenVerifier, key: RSAKeyPair) -> None:
    token = mint_token(claims(), key)
    await rejected(verifier, token[:-8], "signature")
    await rejected(verifier, token.rsplit(".", 1)[0] + ".", "signature")


@pytest.mark.parametrize("count", [1, 2, 4, 5])
async def test_segment_count(verifier: AccessTokenVerifier, key: RSAKeyPair, count: int) -> None:
    parts = mint_token(claims(), key).split(".")
    token = ".".join((parts * 2)[:count])
    await rejected(verifier, token, "segments")


async def test_empty_token(verifier: AccessTokenVerifier) -> None:
    await rejected(verifier, "", "segments")


@pytest.mark.parametrize("segment", ["!!!!", "abc=", "a b", "a", "ey+/"])
async def test_header_not_base64url(
    verifier: AccessTokenVerifier, key: RSAKeyPair, segment: str
) -> None:
    _, payload, signature = mint_token(claims(), key).split(".")
    await rejected(verifier, f"{segment}.{payload}.{signature}", "header")


async def test_signature_not_base64url(verifier: AccessTokenVerifier, key: RSAKeyPair) -> None:
    header, payload, _ = mint_token(claims(), key).split(".")
    await rejected(verifier, f"{header}.{payload}.%%%", "signature")


def other_spellings(segment: str) -> list[str]:
    """``segment`` with its last character swapped for each one that decodes to the same bytes."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    spare_bits = {2: 4, 3: 2}[len(segment) % 4]
    last = alphabet.index(segment[-1])
    same = [alphabet[last & ~((1 << spare_bits) - 1) | low] for low in range(1 << spare_bits)]
    return [segment[:-1] + char for char in same if char != segment[-1]]


async def test_only_the_canonical_spelling_of_a_signature_is_accepted(
    verifier: AccessTokenVerifier, key: RSAKeyPair
) -> None:
    """A 256-byte signature has 4 unused bits in its last character: 15 other spellings decode
    to the same bytes and would each get an allowance of their own at the edge."""
    token = mint_token(claims(), key)
    header, payload, signature = token.split(".")
    spellings = other_spellings(signature)
    assert len(spellings) == 15
    assert (await verifier.verify(token)).sub == claims()["sub"]

    for spelling in spellings:
        await rejected(verifier, f"{header}.{payload}.{spelling}", "signature is not canonical")


async def test_a_non_canonical_payload_is_refused_before_its_signature_is_checked(
    verifier: AccessTokenVerifier, key: RSAKeyPair
) -> None:
    # A payload whose length leaves spare bits in its last character (not a multiple of 3 bytes).
    header, payload, signature = next(
        parts
        for pad in ("", "x", "xx")
        if len((parts := mint_token(claims(pad=pad), key).split("."))[1]) % 4
    )
    (spelling, *_) = other_spellings(payload)
    await rejected(verifier, f"{header}.{spelling}.{signature}", "payload is not canonical")


async def test_payload_not_base64url(verifier: AccessTokenVerifier, key: RSAKeyPair) -> None:
    header, _, signature = mint_token(claims(), key).split(".")
    await rejected(verifier, f"{header}.pay*load.{signature}", "payload")


@pytest.mark.parametrize(
    "header", [b"not json", b'["alg", "RS256"]', b'"RS256"', b"\xff\xfe", b"[" * 5000]
)
async def test_header_not_a_json_object(
    verifier: AccessTokenVerifier, key: RSAKeyPair, header: bytes
) -> None:
    await rejected(verifier, encode_jws(header, claims(), key=key, alg="RS256"), "header")


@pytest.mark.parametrize(
    "payload", [b"not json", b"[1, 2, 3]", b'"sub"', b"null", b"\xff", b"{" * 5000]
)
async def test_signed_payload_not_a_json_object(
    verifier: AccessTokenVerifier, key: RSAKeyPair, payload: bytes
) -> None:
    # Signed with the real key, so only the payload shape can be the reason.
    token = encode_jws({"alg": "RS256", "kid": key.kid}, payload, key=key, alg="RS256")
    await rejected(verifier, token, "payload")


async def test_oversized_token_is_rejected_before_parsing(
    verifier: AccessTokenVerifier, key: RSAKeyPair, jwks_server: JWKSServer
) -> None:
    token = mint_token(claims(padding="x" * 20_000), key)
    assert len(token) > 20_000

    await rejected(verifier, token, "size")

    # A well-formed, correctly signed token: rejected for size alone, with no key lookup.
    assert jwks_server.request_count == 0
    roomy_jwks = JWKSCache(jwks_server.url)
    roomy = AccessTokenVerifier(
        roomy_jwks,
        issuer=TEST_ISSUER,
        client_id=TEST_CLIENT_ID,
        max_token_bytes=32 * 1024,
        clock=lambda: NOW,
    )
    assert (await roomy.verify(token)).sub
    await roomy_jwks.aclose()


async def test_non_ascii_token(verifier: AccessTokenVerifier, key: RSAKeyPair) -> None:
    header, payload, signature = mint_token(claims(), key).split(".")
    await rejected(verifier, f"{header}.{payload}é.{signature}", "ASCII")


async def test_garbage_never_escapes_as_another_exception(
    verifier: AccessTokenVerifier, key: RSAKeyPair
) -> None:
    token = mint_token(claims(), key)
    alphabet = "ABCxyz019-_.=+/ {}\"'\\\x00é"
    rng = random.Random(20240501)
    for _ in range(400):
        chars = list(token)
        for _ in range(rng.randint(1, 4)):
            position = rng.randrange(len(chars))
            action = rng.choice(("replace", "delete", "insert"))
            if action == "replace":
                chars[position] = rng.choice(alphabet)
            elif action == "delete":
                del chars[position]
            else:
                chars.insert(position, rng.choice(alphabet))
        mutated = "".join(chars)
        with contextlib.suppress(TokenError):
            await verifier.verify(mutated)


async def test_claims_cache_drops_tokens_whose_key_left_the_jwks(
    key: RSAKeyPair, jwks_server: JWKSServer
) -> None:
    jwks_clock = FakeClock()
    cache = JWKSCache(jwks_server.url, clock=jwks_clock, ttl=60)
    verifier = AccessTokenVerifier(
        cache, issuer=TEST_ISSUER, client_id=TEST_CLIENT_ID, clock=lambda: NOW
    )
    old_token = mint_token(claims(), key)
    assert await verifier.verify(old_token)

    successor = shared_rsa_key("successor")
    jwks_server.serve_keys(successor)
    jwks_clock.advance(61)
    assert await verifier.verify(mint_token(claims(), successor))

    await rejected(verifier, old_token, "kid")
    await cache.aclose()
