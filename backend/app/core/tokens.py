"""Verification of Cognito access tokens against the user pool's JWKS (`app.core.jwks`).

`AccessTokenVerifier.verify` accepts a token only when every check of the auth contract passes and
raises `TokenError` for anything else.

Nothing here knows about FastAPI: the request dependency maps `JWKSUnavailableError` to 503 and any
other `TokenError` to 401. `str(error)` is written for logs; it never contains token contents.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from cachetools import LRUCache

from app.core.jwks import ALGORITHM, MAX_KID_LENGTH, JWKSCache, TokenError

__all__ = ["AccessClaims", "AccessTokenVerifier"]

_BASE64URL: Final = re.compile(r"[A-Za-z0-9_-]*")
_KEY_CARRYING_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c"})


@dataclass(frozen=True, slots=True)
class AccessClaims:
    sub: str
    username: str | None
    client_id: str
    token_use: str
    exp: int
    iat: int
    # When the user signed in: Cognito keeps it across refreshes, while `iat` is new with each
    # refreshed token. None where a token carries none.
    auth_time: int | None
    jti: str | None
    groups: tuple[str, ...]

    @property
    def session_started_at(self) -> int:
        """When the token's session began: `auth_time`, or `iat` for a token without one."""
        return self.iat if self.auth_time is None else self.auth_time


def _b64url_decode(segment: str, part: str) -> bytes:
    """The bytes of one unpadded base64url segment, which must be their one canonical spelling.

    The stdlib decoder silently drops characters outside the alphabet, and ignores the unused
    low bits of the last character: a 256-byte RS256 signature (342 characters, 4 spare bits)
    decodes the same under 16 spellings of its last one, and Nginx keys each caller's allowance
    on the signature's spelling. RFC 7515 (section 2, "Base64url Encoding") builds segments with
    the standard encoder, which leaves those bits zero, so anything else is refused.
    """
    if len(segment) % 4 == 1 or not _BASE64URL.fullmatch(segment):
        raise TokenError(f"{part} is not base64url")
    data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=") != segment.encode("ascii"):
        raise TokenError(f"{part} is not canonical base64url")
    return data


def _json_object(data: bytes, part: str) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        raise TokenError(f"{part} is not JSON") from None
    if not isinstance(value, dict):
        raise TokenError(f"{part} is not a JSON object")
    return value


def _int_claim(claims: Mapping[str, Any], name: str) -> int | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TokenError(f"{name} is not an integer")
    return value


def _optional_str_claim(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is not None and not isinstance(value, str):
        raise TokenError(f"{name} is not a string")
    return value


class AccessTokenVerifier:
    """Checks Cognito access tokens for one user pool and one app client.

    Time rules: `exp` gets no leeway (a token is dead at its expiry on our clock; our hosts keep
    NTP time, and a grace period would only lengthen a stolen token's life), while `iat` and `nbf`
    may be up to `leeway` seconds ahead of our clock, since a fresh token from a slightly fast IdP
    clock must not be rejected.

    Verified claims are cached by the token's SHA-256 (bounded LRU, `claims_cache_size`, 0 turns it
    off), which skips the RSA check and the parsing on repeat requests. A hit is honoured only
    while `exp` is still in the future and the signing key is still in the JWKS.
    """

    def __init__(
        self,
        jwks: JWKSCache,
        *,
        issuer: str,
        client_id: str,
        leeway: int = 60,
        max_token_bytes: int = 8192,
        clock: Callable[[], float] = time.time,
        claims_cache_size: int = 1024,
    ) -> None:
        self._jwks = jwks
        self._issuer = issuer
        self._client_id = client_id
        self._leeway = leeway
        self._max_token_bytes = max_token_bytes
        self._clock = clock
        self._verified: LRUCache[bytes, tuple[AccessClaims, str]] | None = (
            LRUCache(maxsize=claims_cache_size) if claims_cache_size > 0 else None
        )

    async def verify(self, token: str) -> AccessClaims:
        # Size first: nothing below (hashing, splitting, decoding) runs on an oversized input.
        if not isinstance(token, str) or len(token) > self._max_token_bytes:
            raise TokenError("token missing or larger than the size limit")
        if not token.isascii():
            raise TokenError("token has non-ASCII characters")

        cache_key = hashlib.sha256(token.encode("ascii")).digest()
        if self._verified is not None:
            hit = self._verified.get(cache_key)
            if hit is not None:
                claims, kid = hit
                if claims.exp > self._clock() and self._jwks.holds(kid):
                    return claims
                del self._verified[cache_key]

        claims, kid = await self._verify_uncached(token)
        if self._verified is not None:
            self._verified[cache_key] = (claims, kid)
        return claims

    async def _verify_uncached(self, token: str) -> tuple[AccessClaims, str]:
        segments = token.split(".")
        if len(segments) != 3:
            raise TokenError(f"token has {len(segments)} segments, expected 3")
        header_b64, payload_b64, signature_b64 = segments
        header = _json_object(_b64url_decode(header_b64, "header"), "header")
        payload_bytes = _b64url_decode(payload_b64, "payload")
        signature = _b64url_decode(signature_b64, "signature")

        # Header checks come before any key lookup so junk never triggers a JWKS fetch. Keys
        # come only from the configured JWKS URL; Cognito never sets a key-carrying header, so
        # a token that does is someone else's and is refused without following it.
        if header.get("alg") != ALGORITHM:
            raise TokenError(f"header alg is not {ALGORITHM}")
        if "crit" in header:
            raise TokenError("header has crit")
        if not _KEY_CARRYING_HEADERS.isdisjoint(header):
            raise TokenError("header carries its own key or key URL")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
            raise TokenError("header kid missing or not a short string")

        key = await self._jwks.get_key(kid)
        if key.alg is not None and key.alg != header["alg"]:
            raise TokenError("header alg differs from the JWK alg")
        signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
        if not key.verify(signing_input, signature):
            raise TokenError("signature verification failed")

        return self._check_claims(_json_object(payload_bytes, "payload")), kid

    def _check_claims(self, claims: Mapping[str, Any]) -> AccessClaims:
        now = self._clock()
        exp = _int_claim(claims, "exp")
        if exp is None:
            raise TokenError("exp missing")
        if exp <= now:
            raise TokenError("token expired")
        iat = _int_claim(claims, "iat")
        if iat is None:
            raise TokenError("iat missing")
        if iat > now + self._leeway:
            raise TokenError("iat in the future")
        auth_time = _int_claim(claims, "auth_time")
        if auth_time is not None and auth_time > iat + self._leeway:
            raise TokenError("auth_time after iat")
        nbf = _int_claim(claims, "nbf")
        if nbf is not None and nbf > now + self._leeway:
            raise TokenError("token not yet valid (nbf)")
        if claims.get("iss") != self._issuer:
            raise TokenError("issuer mismatch")
        kind = claims.get("token_use")
        if kind != "access":
            raise TokenError("token_use is not access")
        if claims.get("client_id") != self._client_id:
            raise TokenError("client_id mismatch")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise TokenError("sub missing or empty")
        groups = claims.get("cognito:groups", [])
        if not isinstance(groups, list) or not all(isinstance(group, str) for group in groups):
            raise TokenError("cognito:groups is not a list of strings")
        return AccessClaims(
            sub=sub,
            username=_optional_str_claim(claims, "username"),
            client_id=self._client_id,
            token_use=kind,
            exp=exp,
            iat=iat,
            auth_time=auth_time,
            jti=_optional_str_claim(claims, "jti"),
            groups=tuple(groups),
        )
