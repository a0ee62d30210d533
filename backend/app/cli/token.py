"""Sign in to Cognito and print an access token: `python -m app.cli.token --email ...`.

Uses InitiateAuth with USER_PASSWORD_AUTH (the app client must allow it) and answers a
NEW_PASSWORD_REQUIRED challenge (a user's first sign-in with the temporary password from the
invitation) with `--new-password`, or with one asked for on the terminal. Works against real
Cognito and, through boto3's AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER, the local emulator.
Passwords not given are asked for on the terminal, so they need not appear in shell history;
without a terminal the command fails at once instead of waiting for input.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import hashlib
import hmac
import os
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import boto3
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_cognito_idp import CognitoIdentityProviderClient


class SignInError(RuntimeError):
    pass


def _secret_hash(username: str, client_id: str, client_secret: str) -> str:
    digest = hmac.new(
        client_secret.encode(), (username + client_id).encode(), hashlib.sha256
    ).digest()
    return base64.b64encode(digest).decode()


def _challenge_username(parameters: Mapping[str, str], fallback: str) -> str:
    # Cognito names the user by their real username in USER_ID_FOR_SRP. Where the email is an
    # alias or the username attribute, that is not the email signed in with, and a challenge
    # response must use it, for USERNAME and for SECRET_HASH alike.
    return parameters.get("USER_ID_FOR_SRP") or parameters.get("USERNAME") or fallback


def _refusal(code: str, message: str | None) -> str:
    """Why Cognito refused, in its own words: NotAuthorizedException alone is both a wrong
    password ("Incorrect username or password.") and a deactivated user ("User is disabled.")."""
    if message and "disabled" in message.lower():
        return f"sign-in refused: the user is deactivated (Cognito: {message})"
    if message:
        return f"sign-in refused: {message} ({code})"
    return f"sign-in refused: {code}"


def _client(region: str) -> CognitoIdentityProviderClient:
    # Sign-in calls are public: no AWS credentials are needed or used.
    config = Config(signature_version=UNSIGNED, connect_timeout=2, read_timeout=5)
    return boto3.client("cognito-idp", region_name=region, config=config)


def sign_in(
    *,
    email: str,
    password: str,
    client_id: str,
    region: str,
    client_secret: str | None = None,
    new_password: str | None = None,
    ask_new_password: Callable[[], str] | None = None,
) -> str:
    """Return an access token for the user, or raise SignInError saying why not.

    A NEW_PASSWORD_REQUIRED challenge is answered with ``new_password``, else with what
    ``ask_new_password`` returns; with neither, it is an error.
    """
    client = _client(region)
    parameters = {"USERNAME": email, "PASSWORD": password}
    if client_secret:
        parameters["SECRET_HASH"] = _secret_hash(email, client_id, client_secret)
    try:
        response: Any = client.initiate_auth(
            ClientId=client_id, AuthFlow="USER_PASSWORD_AUTH", AuthParameters=parameters
        )
        if response.get("ChallengeName") == "NEW_PASSWORD_REQUIRED":
            if not new_password and ask_new_password is not None:
                new_password = ask_new_password()
            if not new_password:
                raise SignInError(
                    "Cognito requires a new password on first sign-in: pass --new-password"
                )
            username = _challenge_username(response.get("ChallengeParameters") or {}, email)
            answers = {"USERNAME": username, "NEW_PASSWORD": new_password}
            if client_secret:
                answers["SECRET_HASH"] = _secret_hash(username, client_id, client_secret)
            response = client.respond_to_auth_challenge(
                ClientId=client_id,
                ChallengeName="NEW_PASSWORD_REQUIRED",
                Session=response["Session"],
                ChallengeResponses=answers,
            )
        elif "ChallengeName" in response:
            raise SignInError(f"unsupported challenge {response['ChallengeName']}")
    except ClientError as error:
        details = error.response.get("Error", {})
        refusal = _refusal(details.get("Code", "unknown"), details.get("Message"))
        raise SignInError(refusal) from None
    except BotoCoreError as error:
        raise SignInError(f"Cognito unreachable: {type(error).__name__}") from None
    return str(response["AuthenticationResult"]["AccessToken"])


def _ask(prompt: str) -> str:
    try:
        return getpass.getpass(prompt)
    except (EOFError, KeyboardInterrupt):
        raise SignInError("cancelled") from None


def _ask_new_password() -> str:
    chosen = _ask("New password: ")
    if _ask("New password again: ") != chosen:
        raise SignInError("the new passwords do not match")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--email", required=True)
    parser.add_argument("--password", help="asked for when omitted")
    parser.add_argument("--new-password", help="answer to NEW_PASSWORD_REQUIRED")
    parser.add_argument("--client-id", default=os.environ.get("COGNITO_APP_CLIENT_ID"))
    parser.add_argument("--client-secret", default=os.environ.get("COGNITO_APP_CLIENT_SECRET"))
    parser.add_argument("--region", default=os.environ.get("AWS_REGION"))
    args = parser.parse_args(argv)
    if not args.client_id or not args.region:
        parser.error("--client-id and --region (or COGNITO_APP_CLIENT_ID, AWS_REGION) are needed")
    # Without a terminal nobody can answer a prompt: fail now rather than read a pipe or hang.
    on_terminal = sys.stdin.isatty()
    try:
        if args.password:
            password = args.password
        elif on_terminal:
            password = _ask("Password: ")
        else:
            raise SignInError("no --password given and stdin is not a terminal to ask for one")
        token = sign_in(
            email=args.email,
            password=password,
            client_id=args.client_id,
            region=args.region,
            client_secret=args.client_secret,
            new_password=args.new_password,
            ask_new_password=_ask_new_password if on_terminal else None,
        )
    except SignInError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
