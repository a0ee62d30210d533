"""The Cognito emulator: moto's server, patched where moto and the real Cognito differ.

One emulator for everything that needs a Cognito: the tests run it in their own process
(`emulator_server`), and `make run` runs it as a child process (`python -m
devtools.cognito_emulator`, see `devtools.local_cognito`). Both start it here, with the same
patches, so an admin action that works against one works against the other, and both as
against the real service.

The differences from the real service that matter here and are patched while a server runs
(`fidelity_patches`):
- AdminCreateUser checks the username and then stores the user in two steps; with concurrent
  requests (the server is threaded) two creates of one name can both succeed. Real Cognito's
  username uniqueness is atomic, so the patch serialises creates.
- AdminCreateUser with MessageAction=RESEND replaces the user with a new one (new sub, no
  attributes, no groups), and in an email-as-username pool refuses the real username (a UUID)
  with "Username should be either an email or a phone number". Real Cognito keeps the user,
  accepts any name of it, and only sends a new temporary password: the AdminCreateUser
  reference says RESEND resends "the invitation message to a user that already exists, and
  [resets] the temporary-password duration with a new temporary password"
  (https://docs.aws.amazon.com/cognito-user-identity-pools/latest/APIReference/API_AdminCreateUser.html,
  `MessageAction`), so the password the user had before no longer signs in. A user who has
  left FORCE_CHANGE_PASSWORD has no invitation to resend (UnsupportedUserStateException).
- moto does not emulate email-alias pools at all. Real Cognito, in a pool with
  `AliasAttributes: [email]`:
  - refuses an email-shaped username in AdminCreateUser with InvalidParameterException
    "Username cannot be of email format, since user pool is configured for email alias.";
  - refuses AdminCreateUser with AliasExistsException when `email_verified` is true and
    another user already has that verified email (ForceAliasCreation defaults to false);
  - accepts a user's verified email alias wherever an admin call takes a Username ("it can
    be any of their alias attributes", the AdminGetUser reference); an unverified email is
    no alias.
  The patches make moto do the same; moto's email-as-username pools already behave as real
  ones otherwise (the real username is a UUID equal to `sub`, and the email is accepted).
- moto stamps every token with `auth_time` = now, refreshed ones too. Real Cognito's
  `auth_time` is when the user authenticated: tokens minted from a refresh token keep the
  `auth_time` of the sign-in that issued it (only `iat` and `exp` are new). The patch remembers
  each sign-in's time by its `origin_jti` and stamps it on every token of that session.

The patches replace methods of moto's classes only while a server of this module runs in the
process (counted, so servers may overlap), and never at import.
"""

from __future__ import annotations

import argparse
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Final

from moto.cognitoidp.exceptions import AliasExistsException, InvalidParameterException
from moto.cognitoidp.models import (
    CognitoIdpBackend,
    CognitoIdpUser,
    CognitoIdpUserPool,
    UserStatus,
)
from moto.cognitoidp.utils import flatten_attrs, validate_username_format
from moto.core.exceptions import JsonRESTError
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

_patch_lock = threading.Lock()
_patch_users = 0
_original_admin_create_user = CognitoIdpBackend.admin_create_user
_original_get_user = CognitoIdpUserPool._get_user
_original_create_refresh_token = CognitoIdpUserPool.create_refresh_token
_original_create_jwt = CognitoIdpUserPool.create_jwt


class UnsupportedUserStateException(JsonRESTError):
    def __init__(self, message: str) -> None:
        super().__init__("UnsupportedUserStateException", message)


def _email_is_alias(pool: CognitoIdpUserPool) -> bool:
    return "email" in (pool.extended_config.get("AliasAttributes") or [])


def _verified_email_owner(pool: CognitoIdpUserPool, email: str) -> CognitoIdpUser | None:
    for user in pool.users.values():
        lookup = user.attribute_lookup
        if lookup.get("email") == email and lookup.get("email_verified") == "true":
            return user
    return None


def _get_user_like_cognito(self: CognitoIdpUserPool, username: str) -> CognitoIdpUser | None:
    user: CognitoIdpUser | None = _original_get_user(self, username)
    if user is None and _email_is_alias(self):
        user = _verified_email_owner(self, username)
    return user


def _resend(
    backend: CognitoIdpBackend, user_pool_id: str, username: str, temporary_password: str | None
) -> CognitoIdpUser:
    """The same user, with a new temporary password (the old one no longer signs in)."""
    user = backend.admin_get_user(user_pool_id, username)
    if user.status != UserStatus.FORCE_CHANGE_PASSWORD:
        raise UnsupportedUserStateException(
            f"Resend not possible. {user.username} status is not FORCE_CHANGE_PASSWORD"
        )
    user.password = temporary_password or secrets.token_urlsafe(24)
    return user


def _admin_create_user_like_cognito(
    self: CognitoIdpBackend,
    user_pool_id: str,
    username: str,
    message_action: str,
    temporary_password: str,
    attributes: list[dict[str, str]],
) -> Any:
    with _patch_lock:
        if message_action == "RESEND":
            return _resend(self, user_pool_id, username, temporary_password)
        pool = self.describe_user_pool(user_pool_id)
        if _email_is_alias(pool):
            if validate_username_format(username, _format="email"):
                raise InvalidParameterException(
                    "Username cannot be of email format, since user pool is configured for "
                    "email alias."
                )
            wanted = flatten_attrs(attributes or [])
            if (
                wanted.get("email_verified") == "true"
                and _verified_email_owner(pool, wanted.get("email", "")) is not None
            ):
                raise AliasExistsException()
        return _original_admin_create_user(
            self, user_pool_id, username, message_action, temporary_password, attributes
        )


def _session_auth_times(pool: CognitoIdpUserPool) -> dict[str, int]:
    """The sign-in time of each session of `pool`, by the `origin_jti` its tokens carry."""
    times: dict[str, int] = pool.__dict__.setdefault("_session_auth_times", {})
    return times


def _create_refresh_token_remembering_auth_time(
    self: CognitoIdpUserPool, client_id: str, username: str
) -> tuple[str, str]:
    # A refresh token is made at each sign-in (never at a refresh): the session begins here.
    refresh_token, origin_jti = _original_create_refresh_token(self, client_id, username)
    _session_auth_times(self)[origin_jti] = int(time.time())
    return refresh_token, origin_jti


def _create_jwt_keeping_auth_time(
    self: CognitoIdpUserPool,
    client_id: str,
    username: str,
    token_use: str,
    expires_in: int = 60 * 60,
    extra_data: dict[str, Any] | None = None,
) -> tuple[str, int]:
    origin_jti = (extra_data or {}).get("origin_jti")
    auth_time = _session_auth_times(self).get(origin_jti) if origin_jti else None
    if auth_time is not None:
        extra_data = {**(extra_data or {}), "auth_time": auth_time}
    token: tuple[str, int] = _original_create_jwt(
        self, client_id, username, token_use, expires_in, extra_data
    )
    return token


# (class, method, moto's own, the replacement). `CognitoIdpUserPool._get_user` is moto's private
# lookup behind every admin call that takes a Username: the one place an alias can be accepted.
# tests/devtools/test_emulator_internals.py checks that each still exists, with the parameters
# its replacement takes, so a moto release that changes one fails there, by name.
PATCHES: Final[tuple[tuple[type, str, Callable[..., Any], Callable[..., Any]], ...]] = (
    (
        CognitoIdpBackend,
        "admin_create_user",
        _original_admin_create_user,
        _admin_create_user_like_cognito,
    ),
    (CognitoIdpUserPool, "_get_user", _original_get_user, _get_user_like_cognito),
    (
        CognitoIdpUserPool,
        "create_refresh_token",
        _original_create_refresh_token,
        _create_refresh_token_remembering_auth_time,
    ),
    (CognitoIdpUserPool, "create_jwt", _original_create_jwt, _create_jwt_keeping_auth_time),
)


@contextmanager
def fidelity_patches() -> Iterator[None]:
    """moto behaving like real Cognito (see the module docstring) while the block runs."""
    global _patch_users
    with _patch_lock:
        _patch_users += 1
        for owner, name, _, replacement in PATCHES:
            setattr(owner, name, replacement)
    try:
        yield
    finally:
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0:
                for owner, name, original, _ in PATCHES:
                    setattr(owner, name, original)


@contextmanager
def emulator_server(host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """The patched emulator serving in this process (on a free port unless `port`); its URL.

    The port is bound before this returns (an OSError if it is taken). Its pools live in this
    process's moto backends, so a test can reach into them.
    """
    with fidelity_patches():
        server = make_server(
            host,
            port,
            DomainDispatcherApplication(create_backend_app),
            threaded=True,
            request_handler=MotoRequestHandler,
        )
        # A short poll keeps the stop quick; the default half second adds up over a test suite.
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        thread.start()
        try:
            yield f"http://{host}:{server.server_port}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM, SIGINT or SIGHUP (what `make run` starts as its emulator)."""
    parser = argparse.ArgumentParser(
        prog="python -m devtools.cognito_emulator", description=main.__doc__
    )
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    arguments = parser.parse_args(argv)
    stop_signals = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
    # Blocked before the server's threads start, so they inherit the mask and only the wait
    # below receives them.
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    with emulator_server(arguments.host, arguments.port) as url:
        print(f"Cognito emulator on {url}", flush=True)
        received = signal.sigwait(stop_signals)
        print(f"Cognito emulator: {signal.Signals(received).name}, stopping", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
