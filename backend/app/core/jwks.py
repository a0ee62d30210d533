"""The user pool's signing keys (its JWKS), fetched over HTTPS and cached.

`JWKSCache` builds each key object once per fetch, keeps the last good keys when a refresh
fails, and bounds how often untrusted input (an unknown `kid`) can make it go back to the
network. `TokenError` is here because a key lookup is the first check a token can fail.
`str(error)` is written for logs; it never contains token contents.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import httpx

# python-jose ships no type information; the ignore is marked so it stays quiet if a mypy override
# for jose is added to the project config later.
from jose.backends import RSAKey  # type: ignore[import-untyped, unused-ignore]
from jose.exceptions import JWKError  # type: ignore[import-untyped, unused-ignore]

from app.core import metrics

__all__ = [
    "ALGORITHM",
    "MAX_KID_LENGTH",
    "JWKSCache",
    "JWKSUnavailableError",
    "TokenError",
    "VerificationKey",
    "cognito_issuer",
    "cognito_jwks_url",
]

logger = logging.getLogger(__name__)

# Cognito signs with RS256 only. Anything else in a header is an attack or a misconfiguration, and
# accepting a second algorithm is how algorithm-confusion bugs start.
ALGORITHM: Final = "RS256"
_MIN_RSA_BITS: Final = 2048
MAX_KID_LENGTH: Final = 256


class TokenError(Exception):
    """The token is not acceptable. The message is a precise reason, meant for logs only."""


class JWKSUnavailableError(TokenError):
    """The token's key could not be found because no usable JWKS could be obtained."""


class _InvalidJWKSError(Exception):
    """A fetched JWKS document cannot be used."""


def cognito_issuer(region: str, user_pool_id: str) -> str:
    return f"https://cognito-idp.{region}.amazonaws.com/{user_pool_id}"


def cognito_jwks_url(region: str, user_pool_id: str) -> str:
    return f"{cognito_issuer(region, user_pool_id)}/.well-known/jwks.json"


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One RSA public key from the JWKS, built once per fetch and shared by every request."""

    kid: str
    alg: str | None  # the JWK's own `alg`, when it names one
    key: Any  # jose's RSAKey bound to RS256; jose is untyped

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        try:
            return bool(self.key.verify(signing_input, signature))
        except (JWKError, ValueError, TypeError):
            return False


def _build_keys(body: bytes) -> dict[str, VerificationKey]:
    """Parse a JWKS document; skip keys we cannot use, fail only if none is left."""
    try:
        document = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError) as error:
        raise _InvalidJWKSError(f"not JSON: {type(error).__name__}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise _InvalidJWKSError('not a {"keys": [...]} object')

    keys: dict[str, VerificationKey] = {}
    duplicated: set[str] = set()
    for index, jwk in enumerate(document["keys"]):
        try:
            key = _build_key(jwk)
        except _InvalidJWKSError as error:
            logger.warning("JWKS key #%d skipped: %s", index, error)
            continue
        if key.kid in keys or key.kid in duplicated:
            # Two keys under one kid make the choice ambiguous; trust neither.
            duplicated.add(key.kid)
            keys.pop(key.kid, None)
            logger.warning("JWKS key #%d skipped: duplicate kid %r", index, key.kid)
            continue
        keys[key.kid] = key
    if not keys:
        raise _InvalidJWKSError("no usable RS256 signing key")
    return keys


def _build_key(jwk: object) -> VerificationKey:
    if not isinstance(jwk, dict):
        raise _InvalidJWKSError("not an object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_LENGTH:
        raise _InvalidJWKSError("kid missing or not a short string")
    if jwk.get("kty") != "RSA":
        raise _InvalidJWKSError(f"kid {kid!r}: kty is not RSA")
    alg = jwk.get("alg")
    if alg is not None and alg != ALGORITHM:
        raise _InvalidJWKSError(f"kid {kid!r}: alg is not {ALGORITHM}")
    if jwk.get("use", "sig") != "sig":
        raise _InvalidJWKSError(f"kid {kid!r}: use is not sig")
    if "d" in jwk:
        raise _InvalidJWKSError(f"kid {kid!r}: private key material published")
    if not isinstance(jwk.get("n"), str) or not isinstance(jwk.get("e"), str):
        raise _InvalidJWKSError(f"kid {kid!r}: n or e missing")
    try:
        key = RSAKey({"kty": "RSA", "n": jwk["n"], "e": jwk["e"]}, ALGORITHM)
        bits = key.prepared_key.key_size
    except (JWKError, ValueError, TypeError, binascii.Error) as error:
        raise _InvalidJWKSError(f"kid {kid!r}: {type(error).__name__}") from None
    if bits < _MIN_RSA_BITS:
        raise _InvalidJWKSError(f"kid {kid!r}: RSA key of {bits} bits is too weak")
    return VerificationKey(kid=kid, alg=alg, key=key)


class JWKSCache:
    """The pool's signing keys, fetched lazily and refreshed on TTL expiry or an unknown `kid`.

    An unknown `kid` costs at most one fetch per `refetch_interval` no matter how many requests
    carry it (single-flight behind a lock, then a penalty window), so forged tokens cannot turn
    this service into a load generator against the IdP. A failed refresh keeps the last good keys.
    """

    def __init__(
        self,
        url: str,
        *,
        http: httpx.AsyncClient | None = None,
        timeout: float = 3.0,
        ttl: float = 86400,
        refetch_interval: float = 10.0,
        max_bytes: int = 64 * 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url
        self._owns_http = http is None
        self._http = http or httpx.AsyncClient(
            timeout=httpx.Timeout(timeout), follow_redirects=False
        )
        self._timeout = timeout
        self._ttl = ttl
        self._refetch_interval = refetch_interval
        self._max_bytes = max_bytes
        self._clock = clock
        self._lock = asyncio.Lock()
        self._keys: dict[str, VerificationKey] = {}
        self._loaded_at: float | None = None
        self._attempted_at: float | None = None
        self._last_attempt_ok = False

    def holds(self, kid: str) -> bool:
        """Whether `kid` is among the current keys; no I/O, no refresh."""
        return kid in self._keys

    async def get_key(self, kid: str) -> VerificationKey:
        key = self._keys.get(kid)
        if key is not None and (not self._is_stale() or self._lock.locked()):
            # While one request refreshes stale keys, the others keep using the last good ones
            # instead of queueing behind a possibly slow IdP.
            return key
        async with self._lock:
            key = self._keys.get(kid)
            if key is not None and not self._is_stale():
                return key  # another request refreshed while this one waited
            if self._may_fetch():
                await self._refresh()
            key = self._keys.get(kid)
            if key is not None:
                return key
            if not self._last_attempt_ok:
                raise JWKSUnavailableError("kid not in JWKS and the JWKS could not be fetched")
            raise TokenError("kid not in JWKS")

    async def preload(self) -> bool:
        """Fetch the keys once, for app startup. Never raises: startup must not need the IdP.

        A request that needed the keys before the preload ran has fetched them already; the
        preload then has nothing left to do.
        """
        try:
            async with self._lock:
                if not self._is_stale():
                    return True
                return await self._refresh()
        except Exception:
            logger.exception("JWKS preload failed unexpectedly")
            return False

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    def _is_stale(self) -> bool:
        return self._loaded_at is None or self._clock() - self._loaded_at >= self._ttl

    def _may_fetch(self) -> bool:
        return (
            self._attempted_at is None
            or self._clock() - self._attempted_at >= self._refetch_interval
        )

    async def _refresh(self) -> bool:
        try:
            keys = await self._fetch()
        except (httpx.HTTPError, httpx.InvalidURL, TimeoutError, _InvalidJWKSError) as error:
            metrics.JWKS_FETCHES.labels("failed").inc()
            self._attempted_at = self._clock()
            self._last_attempt_ok = False
            logger.warning(
                "JWKS refresh from %s failed (%s: %s); keeping %d cached key(s)",
                self._url,
                type(error).__name__,
                error,
                len(self._keys),
            )
            return False
        metrics.JWKS_FETCHES.labels("ok").inc()
        now = self._clock()
        self._keys = keys
        self._loaded_at = now
        self._attempted_at = now
        self._last_attempt_ok = True
        logger.info("JWKS loaded from %s: kids %s", self._url, sorted(keys))
        return True

    async def _fetch(self) -> dict[str, VerificationKey]:
        # httpx's timeout applies per connect/read/write; asyncio.timeout bounds the whole exchange
        # so a server that trickles bytes cannot hold a request past the budget either.
        async with asyncio.timeout(self._timeout):
            async with self._http.stream(
                "GET",
                self._url,
                # Raw bytes are what we count; compressed bodies could inflate past the cap.
                headers={"Accept": "application/json", "Accept-Encoding": "identity"},
                timeout=self._timeout,
                follow_redirects=False,
            ) as response:
                if response.status_code != 200:
                    raise _InvalidJWKSError(f"HTTP status {response.status_code}")
                declared = response.headers.get("content-length", "")
                if declared.isdigit() and int(declared) > self._max_bytes:
                    raise _InvalidJWKSError(f"body of {declared} bytes exceeds {self._max_bytes}")
                body = bytearray()
                async for chunk in response.aiter_raw():
                    body += chunk
                    if len(body) > self._max_bytes:
                        raise _InvalidJWKSError(f"body exceeds {self._max_bytes} bytes")
        return _build_keys(bytes(body))
