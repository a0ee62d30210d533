"""The emulator's sessions behave as real Cognito's where the API relies on it.

Real Cognito stamps `auth_time` (when the user authenticated) on every token of a session, and
keeps it across refreshes: a token minted from a refresh token has a new `iat` and the sign-in's
`auth_time`. A deactivation ends the sessions begun before it by that claim, so the emulator the
tests and the chaos run sign in through must do the same (`tests.support.moto_cognito`).
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.moto_cognito import MotoCognito, running_moto_cognito

EMAIL = "refresher@example.gov"
PASSWORD = "Correct-Horse-9!"


@pytest.fixture(scope="module")
def cognito() -> Iterator[MotoCognito]:
    with running_moto_cognito() as running:
        yield running


def claims_of(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def test_a_refreshed_access_token_keeps_the_sessions_auth_time(cognito: MotoCognito) -> None:
    client = cognito.client
    app_client = client.create_user_pool_client(
        UserPoolId=cognito.user_pool_id,
        ClientName="spa",
        ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
    )["UserPoolClient"]["ClientId"]
    cognito.create_user(EMAIL, confirmed=True)
    signed_in = client.initiate_auth(
        ClientId=app_client,
        AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": EMAIL, "PASSWORD": PASSWORD},
    )["AuthenticationResult"]
    first = claims_of(signed_in["AccessToken"])
    assert first["auth_time"] == first["iat"]

    # Into the next whole second, so a fresh `auth_time` would differ from the sign-in's.
    time.sleep(1.1)
    refreshed = client.initiate_auth(
        ClientId=app_client,
        AuthFlow="REFRESH_TOKEN_AUTH",
        AuthParameters={"REFRESH_TOKEN": signed_in["RefreshToken"]},
    )["AuthenticationResult"]
    access, identity = claims_of(refreshed["AccessToken"]), claims_of(refreshed["IdToken"])
    assert access["iat"] > first["iat"]
    assert access["auth_time"] == first["auth_time"]
    assert identity["auth_time"] == first["auth_time"]
    assert access["origin_jti"] == first["origin_jti"]

    # A new sign-in is a new session, with an `auth_time` of its own.
    again = client.initiate_auth(
        ClientId=app_client,
        AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters={"USERNAME": EMAIL, "PASSWORD": PASSWORD},
    )["AuthenticationResult"]
    assert claims_of(again["AccessToken"])["auth_time"] > first["auth_time"]
