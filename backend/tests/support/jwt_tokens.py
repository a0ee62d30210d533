"""Test helpers for Cognito-style JWTs: keys, JWKS documents, token minting and a real JWKS server.

Tokens are signed here with `cryptography` directly, not with the code under test, so a bug in the
verifier cannot hide behind the same bug in the helper. Everything is framework-free; test modules
wrap what they need in fixtures.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import functools
import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Self

from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from tests.support.servers import BackgroundServer

TEST_REGION: Final = "ap-southeast-1"
TEST_USER_POOL_ID: Final = "ap-southeast-1_TestPool1"
TEST_ISSUER: Final = f"https://cognito-idp.{TEST_REGION}.amazonaws.com/{TEST_USER_POOL_ID}"
TEST_CLIENT_ID: Final = "testclient0123456789abcdef"
TEST_SUB: Final = "8f2c6a1e-0000-4000-8000-000000000001"
# The key the `jwks_server` fixture serves and the harness signs tokens with.
SIGNING_KEY_ID: Final = "test-signing-key-1"


class _Omit(enum.Enum):
    OMIT = "omit"


OMIT: Final = _Omit.OMIT
"""Pass as a claim or header value to leave that field out entirely."""


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class RSAKeyPair:
    kid: str
    private_key: rsa.RSAPrivateKey

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    def public_jwk(self, *, alg: str | None = "RS256", use: str | None = "sig") -> dict[str, Any]:
        """The public half as Cognito publishes it (`alg`/`use` left out when None)."""
        numbers = self.public_key.public_numbers()
        jwk: dict[str, Any] = {
            "kid": self.kid,
            "kty": "RSA",
            "e": b64url(_int_bytes(numbers.e)),
            "n": b64url(_int_bytes(numbers.n)),
        }
        if alg is not None:
            jwk["alg"] = alg
        if use is not None:
            jwk["use"] = use
        return jwk

    def public_pem(self) -> bytes:
        return self.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def _int_bytes(value: int) -> bytes:
    return value.to_bytes((value.bit_length() + 7) // 8 or 1, "big")


def generate_rsa_key(kid: str, *, bits: int = 2048) -> RSAKeyPair:
    return RSAKeyPair(kid, rsa.generate_private_key(public_exponent=65537, key_size=bits))


@functools.cache
def shared_rsa_key(kid: str) -> RSAKeyPair:
    """One key per kid for the whole test run; RSA generation is the slow part of these tests."""
    return generate_rsa_key(kid)


def jwks_document(*keys: RSAKeyPair, alg: str | None = "RS256") -> dict[str, Any]:
    return {"keys": [key.public_jwk(alg=alg) for key in keys]}


def _drop_omitted(values: Mapping[str, object]) -> dict[str, object]:
    return {name: value for name, value in values.items() if value is not OMIT}


def access_token_claims(
    overrides: Mapping[str, object] | None = None,
    /,
    *,
    now: float | None = None,
    lifetime: int = 3600,
    **claim_overrides: object,
) -> dict[str, object]:
    """Claims shaped like a Cognito access token for `TEST_ISSUER` and `TEST_CLIENT_ID`.

    `overrides` (for names that are not identifiers, like `cognito:groups`) and keyword arguments
    replace or add claims; a value of `OMIT` removes the claim.
    """
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {
        "sub": TEST_SUB,
        "iss": TEST_ISSUER,
        "client_id": TEST_CLIENT_ID,
        "origin_jti": "0c0ffee0-0000-4000-8000-000000000002",
        "event_id": "0c0ffee0-0000-4000-8000-000000000003",
        "token_use": "access",
        "scope": "aws.cognito.signin.user.admin",
        "auth_time": issued,
        "exp": issued + lifetime,
        "iat": issued,
        "jti": "0c0ffee0-0000-4000-8000-000000000004",
        "username": "test-user",
    }
    return _drop_omitted({**claims, **(overrides or {}), **claim_overrides})


def id_token_claims(
    overrides: Mapping[str, object] | None = None,
    /,
    *,
    now: float | None = None,
    lifetime: int = 3600,
    **claim_overrides: object,
) -> dict[str, object]:
    """Claims shaped like a Cognito ID token: `aud` instead of `client_id`, `token_use` "id"."""
    issued = int(time.time() if now is None else now)
    claims: dict[str, object] = {
        "sub": TEST_SUB,
        "aud": TEST_CLIENT_ID,
        "iss": TEST_ISSUER,
        "token_use": "id",
        "auth_time": issued,
        "exp": issued + lifetime,
        "iat": issued,
        "cognito:username": "test-user",
        "email": "test-user@example.org",
    }
    return _drop_omitted({**claims, **(overrides or {}), **claim_overrides})


SigningKey = RSAKeyPair | ec.EllipticCurvePrivateKey | bytes | None
"""RSA pair for RS*/PS*, EC private key for ES256, bytes secret for HS*, None for alg "none"."""


def _signature(signing_input: bytes, key: SigningKey, alg: str) -> bytes:
    if alg == "none":
        return b""
    if isinstance(key, bytes):
        digest = {"HS256": hashes.SHA256(), "HS384": hashes.SHA384(), "HS512": hashes.SHA512()}
        mac = hmac.HMAC(key, digest[alg])
        mac.update(signing_input)
        return mac.finalize()
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    if isinstance(key, RSAKeyPair):
        family, bits = alg[:2], int(alg[2:])
        hash_algorithm = {256: hashes.SHA256(), 384: hashes.SHA384(), 512: hashes.SHA512()}[bits]
        pad: padding.AsymmetricPadding = (
            padding.PKCS1v15()
            if family == "RS"
            else padding.PSS(padding.MGF1(hash_algorithm), padding.PSS.DIGEST_LENGTH)
        )
        return key.private_key.sign(signing_input, pad, hash_algorithm)
    raise ValueError(f"no key given to sign {alg}")


def encode_jws(header: object, payload: object, *, key: SigningKey, alg: str) -> str:
    """Sign arbitrary header and payload (JSON-encoded unless already bytes) with `alg`."""
    header_b64 = b64url(header if isinstance(header, bytes) else json.dumps(header).encode())
    payload_b64 = b64url(payload if isinstance(payload, bytes) else json.dumps(payload).encode())
    signing_input = f"{header_b64}.{payload_b64}".encode("ascii")
    return f"{header_b64}.{payload_b64}.{b64url(_signature(signing_input, key, alg))}"


def mint_token(
    claims: object,
    key: RSAKeyPair,
    *,
    alg: str = "RS256",
    headers: Mapping[str, object] | None = None,
    signing_key: SigningKey | _Omit = OMIT,
    **header_overrides: object,
) -> str:
    """A token with header `{"alg": alg, "kid": key.kid, **headers, **header_overrides}`.

    Signed by `key` unless `signing_key` names something else (an HMAC secret, another key) while
    keeping `key`'s kid. A header value of `OMIT` removes that header.
    """
    header = _drop_omitted({"alg": alg, "kid": key.kid, **(headers or {}), **header_overrides})
    signer: SigningKey = key if signing_key is OMIT else signing_key
    return encode_jws(header, claims, key=signer, alg=alg)


class FakeClock:
    """A settable clock for code that takes `clock: Callable[[], float]`."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class _Response:
    status: int = 200
    body: bytes = b'{"keys": []}'
    content_type: str = "application/json"
    declare_length: bool = True
    delay: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()
    trickle: float = 0.0


@dataclass
class _ServerState:
    response: _Response = field(default_factory=_Response)
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopping: threading.Event = field(default_factory=threading.Event)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        state = self.server.state
        with state.lock:
            state.paths.append(self.path)
            response = state.response
        if response.delay and state.stopping.wait(response.delay):
            return
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        if response.declare_length:
            self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers:
            self.send_header(name, value)
        self.end_headers()
        if not response.trickle:
            self.wfile.write(response.body)
            return
        for index in range(len(response.body)):
            self.wfile.write(response.body[index : index + 1])
            self.wfile.flush()
            if state.stopping.wait(response.trickle):
                return

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, state: _ServerState) -> None:
        self.state = state
        super().__init__(("127.0.0.1", 0), _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that stop reading mid-body (the size cap) are expected here


class JWKSServer:
    """A real HTTP server on 127.0.0.1 (ephemeral port) in a background thread.

    Serves a JWKS at `url`, counts requests, and can rotate keys, serve garbage or oversized
    bodies, answer with an error status, hang, or go down (`stop()`: connection refused).
    Use as a context manager or call `start()`/`stop()`.
    """

    def __init__(self, *keys: RSAKeyPair, path: str = "/.well-known/jwks.json") -> None:
        self._state = _ServerState()
        self._path = path
        self._running: BackgroundServer | None = None
        self._port: int | None = None
        self.serve_keys(*keys)

    def start(self) -> Self:
        self._state.stopping.clear()
        server = _Server(self._state)
        self._port = server.server_address[1]
        self._running = BackgroundServer(server)
        return self

    def stop(self) -> None:
        """Go down: the port stops accepting, hanging responses are released."""
        self._state.stopping.set()
        if self._running is not None:
            self._running.stop()
            self._running = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError("server was never started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def url(self) -> str:
        return self.base_url + self._path

    @property
    def request_count(self) -> int:
        with self._state.lock:
            return len(self._state.paths)

    @property
    def paths(self) -> list[str]:
        with self._state.lock:
            return list(self._state.paths)

    def serve_keys(self, *keys: RSAKeyPair, alg: str | None = "RS256") -> None:
        self.serve_json(jwks_document(*keys, alg=alg))

    def serve_json(self, document: object) -> None:
        self.serve_body(json.dumps(document).encode())

    def serve_body(
        self,
        body: bytes,
        *,
        status: int = 200,
        content_type: str = "application/json",
        declare_length: bool = True,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Serve these bytes; without `declare_length` the body ends when the connection closes."""
        extra = tuple((headers or {}).items())
        self._set(_Response(status, body, content_type, declare_length, headers=extra))

    def serve_status(self, status: int) -> None:
        self.serve_body(b'{"message": "error"}', status=status)

    def hang(self, seconds: float = 30.0) -> None:
        """Accept requests but answer only after `seconds` (or when stopped), keeping the body."""
        with self._state.lock:
            current = self._state.response
        self._set(dataclasses.replace(current, delay=seconds))

    def trickle(self, seconds_per_byte: float = 0.1) -> None:
        """Send the body a byte at a time: every read is quick, the whole response slow."""
        with self._state.lock:
            current = self._state.response
        self._set(dataclasses.replace(current, trickle=seconds_per_byte))

    def _set(self, response: _Response) -> None:
        with self._state.lock:
            self._state.response = response
