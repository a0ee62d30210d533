"""The token command against the Cognito emulator over HTTP, with an app client secret.

moto answers USER_PASSWORD_AUTH's NEW_PASSWORD_REQUIRED challenge without USER_ID_FOR_SRP and
checks no SECRET_HASH on that flow. Real Cognito does both: the challenge names the user by
their real username in USER_ID_FOR_SRP, and the answer's SECRET_HASH must be computed from it,
not from the email signed in with (in a pool with email as username the two differ). The
``cognito_like_secret_hash_checks`` fixture makes moto behave that way while a test runs.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import pty
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto.cognitoidp.exceptions import NotAuthorizedError
from moto.cognitoidp.models import CognitoIdpBackend

from devtools.cognito_emulator import emulator_server

REGION = "us-east-1"
EMAIL = "officer@example.gov"
TEMPORARY_PASSWORD = "Temp-Passw0rd!"
NEW_PASSWORD = "Chosen-Passw0rd!"
PROMPT_WAIT_S = 30  # only bounds a broken test; nothing asserts on time


def secret_hash(username: str, client_id: str, client_secret: str) -> str:
    """Cognito's SECRET_HASH, written out here independently of the command's own."""
    message = (username + client_id).encode()
    return base64.b64encode(
        hmac.new(client_secret.encode(), message, hashlib.sha256).digest()
    ).decode()


@pytest.fixture
def cognito_like_secret_hash_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    original_initiate = CognitoIdpBackend.initiate_auth
    original_respond = CognitoIdpBackend.respond_to_auth_challenge

    def check(client: Any, username: str, sent: str | None) -> None:
        if client.generate_secret and sent != secret_hash(username, client.id, client.secret):
            raise NotAuthorizedError(f"Unable to verify secret hash for client {client.id}")

    def initiate_auth(
        self: CognitoIdpBackend, client_id: str, auth_flow: str, parameters: dict[str, str]
    ) -> dict[str, Any]:
        if auth_flow == "USER_PASSWORD_AUTH":
            pool = next(p for p in self.user_pools.values() if client_id in p.clients)
            # Signing in, the name typed (an email alias included) is the one hashed.
            check(pool.clients[client_id], parameters["USERNAME"], parameters.get("SECRET_HASH"))
        result = original_initiate(self, client_id, auth_flow, parameters)
        if result.get("ChallengeName") == "NEW_PASSWORD_REQUIRED":
            # moto puts the real username under USERNAME; Cognito under USER_ID_FOR_SRP only.
            username = result["ChallengeParameters"]["USERNAME"]
            result["ChallengeParameters"] = {
                "USER_ID_FOR_SRP": username,
                "requiredAttributes": "[]",
                "userAttributes": "{}",
            }
        return result

    def respond_to_auth_challenge(
        self: CognitoIdpBackend,
        session: str,
        client_id: str,
        challenge_name: str,
        responses: dict[str, str],
    ) -> dict[str, Any]:
        if challenge_name == "NEW_PASSWORD_REQUIRED" and session in self.sessions:
            signed_in_as, pool = self.sessions[session]
            real_username = self.admin_get_user(pool.id, signed_in_as).username
            check(pool.clients[client_id], real_username, responses.get("SECRET_HASH"))
        return original_respond(self, session, client_id, challenge_name, responses)

    monkeypatch.setattr(CognitoIdpBackend, "initiate_auth", initiate_auth)
    monkeypatch.setattr(CognitoIdpBackend, "respond_to_auth_challenge", respond_to_auth_challenge)


@dataclass
class Pool:
    endpoint: str
    client: Any
    pool_id: str
    client_id: str
    client_secret: str

    def invite(self, email: str = EMAIL) -> str:
        """A user as AdminCreateUser leaves them; returns the real username (not the email)."""
        user = self.client.admin_create_user(
            UserPoolId=self.pool_id,
            Username=email,
            TemporaryPassword=TEMPORARY_PASSWORD,
            MessageAction="SUPPRESS",
            UserAttributes=[{"Name": "email", "Value": email}],
        )["User"]
        username: str = user["Username"]
        assert username != email
        return username

    def cli_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "AWS_ENDPOINT_URL_COGNITO_IDENTITY_PROVIDER": self.endpoint,
            "COGNITO_APP_CLIENT_ID": self.client_id,
            "COGNITO_APP_CLIENT_SECRET": self.client_secret,
            "AWS_REGION": REGION,
        }


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    with emulator_server() as endpoint:
        yield endpoint


@pytest.fixture
def pool(moto_endpoint: str, cognito_like_secret_hash_checks: None) -> Pool:
    """A pool with email as username, so a user's real username is a generated id."""
    client = boto3.client(
        "cognito-idp",
        region_name=REGION,
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    pool_id = client.create_user_pool(PoolName="token-cli", UsernameAttributes=["email"])[
        "UserPool"
    ]["Id"]
    app_client = client.create_user_pool_client(
        UserPoolId=pool_id,
        ClientName="confidential",
        GenerateSecret=True,
        ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH"],
    )["UserPoolClient"]
    return Pool(moto_endpoint, client, pool_id, app_client["ClientId"], app_client["ClientSecret"])


def token_cli(
    pool: Pool, *args: str, stdin: int | None = subprocess.DEVNULL
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli.token", "--email", EMAIL, *args],
        env=pool.cli_env(),
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def assert_access_token(text: str) -> None:
    token = text.strip()
    assert token.count(".") == 2, text
    assert all(token.split("."))


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("error: ")
    assert result.stderr.count("\n") == 1, result.stderr
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_first_sign_in_with_a_client_secret_answers_the_challenge_as_the_real_user(
    pool: Pool,
) -> None:
    pool.invite()
    first = token_cli(pool, "--password", TEMPORARY_PASSWORD, "--new-password", NEW_PASSWORD)
    assert first.returncode == 0, first.stderr
    assert_access_token(first.stdout)
    assert NEW_PASSWORD not in first.stdout + first.stderr

    again = token_cli(pool, "--password", NEW_PASSWORD)
    assert again.returncode == 0, again.stderr
    assert_access_token(again.stdout)


def test_emulated_cognito_refuses_a_secret_hash_computed_from_the_email(pool: Pool) -> None:
    """Guards the guard: the old answer (USERNAME and SECRET_HASH from the email) is refused."""
    pool.invite()
    challenge = pool.client.initiate_auth(
        ClientId=pool.client_id,
        AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={
            "USERNAME": EMAIL,
            "PASSWORD": TEMPORARY_PASSWORD,
            "SECRET_HASH": secret_hash(EMAIL, pool.client_id, pool.client_secret),
        },
    )
    assert challenge["ChallengeName"] == "NEW_PASSWORD_REQUIRED"
    with pytest.raises(pool.client.exceptions.NotAuthorizedException):
        pool.client.respond_to_auth_challenge(
            ClientId=pool.client_id,
            ChallengeName="NEW_PASSWORD_REQUIRED",
            Session=challenge["Session"],
            ChallengeResponses={
                "USERNAME": EMAIL,
                "NEW_PASSWORD": NEW_PASSWORD,
                "SECRET_HASH": secret_hash(EMAIL, pool.client_id, pool.client_secret),
            },
        )


def test_new_password_needed_without_a_terminal_is_a_one_line_error(pool: Pool) -> None:
    pool.invite()
    for stdin in (subprocess.DEVNULL, subprocess.PIPE):
        result = token_cli(pool, "--password", TEMPORARY_PASSWORD, stdin=stdin)
        assert_one_line_error(result, "pass --new-password")


def test_a_deactivated_user_and_a_wrong_password_are_told_apart(pool: Pool) -> None:
    pool.invite()
    pool.client.admin_set_user_password(
        UserPoolId=pool.pool_id, Username=EMAIL, Password=NEW_PASSWORD, Permanent=True
    )
    wrong = token_cli(pool, "--password", NEW_PASSWORD + "x")
    pool.client.admin_disable_user(UserPoolId=pool.pool_id, Username=EMAIL)
    deactivated = token_cli(pool, "--password", NEW_PASSWORD)

    assert_one_line_error(wrong, "sign-in refused: Incorrect username or password.")
    assert_one_line_error(
        deactivated, "sign-in refused: the user is deactivated (Cognito: User is disabled.)"
    )


def test_password_not_given_without_a_terminal_is_a_one_line_error(pool: Pool) -> None:
    result = token_cli(pool)
    assert_one_line_error(result, "stdin is not a terminal")


def run_on_a_terminal(pool: Pool, args: list[str], answers: list[str]) -> tuple[int, str]:
    """Run the command with a terminal as stdin, typing each answer after its prompt."""
    pid, terminal = pty.fork()
    if pid == 0:  # the child, whose controlling terminal is the pty: become the command
        command = [sys.executable, "-m", "app.cli.token", *args]
        os.execve(sys.executable, command, pool.cli_env())  # noqa: S606 (fixed argv, no shell)
    output = b""
    answered_up_to = 0
    pending = list(answers)
    closed_by_the_child = False
    try:
        while True:
            ready, _, _ = select.select([terminal], [], [], PROMPT_WAIT_S)
            if not ready:
                raise AssertionError(f"no output for {PROMPT_WAIT_S} s; so far: {output!r}")
            try:
                chunk = os.read(terminal, 4096)
            except OSError:  # EIO: the child has closed the terminal
                chunk = b""
            if not chunk:
                closed_by_the_child = True
                break
            output += chunk
            # Answer a prompt only once it is on the terminal: getpass discards what was
            # typed before it (TCSAFLUSH), and the newline after an answer is no prompt.
            if pending and output[answered_up_to:].endswith(b": "):
                os.write(terminal, pending.pop(0).encode() + b"\n")
                answered_up_to = len(output)
    finally:
        if not closed_by_the_child:  # a stuck child must not outlive the test
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(terminal)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def test_on_a_terminal_the_new_password_is_asked_for_twice(pool: Pool) -> None:
    pool.invite()
    code, output = run_on_a_terminal(
        pool, ["--email", EMAIL], [TEMPORARY_PASSWORD, NEW_PASSWORD, NEW_PASSWORD]
    )
    assert code == 0, output
    assert "Password:" in output
    assert "New password again:" in output
    # getpass turns echo off: no password is shown on the terminal.
    assert TEMPORARY_PASSWORD not in output
    assert NEW_PASSWORD not in output
    assert_access_token(output.splitlines()[-1])

    signed_in = token_cli(pool, "--password", NEW_PASSWORD)
    assert signed_in.returncode == 0, signed_in.stderr


def test_on_a_terminal_mismatched_new_passwords_are_refused(pool: Pool) -> None:
    pool.invite()
    code, output = run_on_a_terminal(
        pool,
        ["--email", EMAIL, "--password", TEMPORARY_PASSWORD],
        [NEW_PASSWORD, NEW_PASSWORD + "x"],
    )
    assert code == 1
    assert output.splitlines()[-1] == "error: the new passwords do not match"
    assert "Traceback" not in output
