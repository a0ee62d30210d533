"""The OpenAPI document is a reviewed artifact: `openapi.json` at the repository root is what the
app serves, so any change to the API shows up as a diff of that file in review."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from app.main import create_app
from devtools.openapi import COMMITTED_PATH, REGENERATE, document
from tests.support.harness import make_settings, serve

# Nothing listens there: no test here verifies a token.
NO_JWKS = "http://127.0.0.1:9/jwks.json"


def test_the_committed_document_is_the_apps() -> None:
    committed = COMMITTED_PATH.read_text(encoding="utf-8") if COMMITTED_PATH.exists() else ""
    assert committed == document(), (
        f"{COMMITTED_PATH.name} differs from the app's OpenAPI document: run `{REGENERATE}` "
        "and commit the result"
    )


@pytest.fixture(scope="module")
async def openapi_client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(make_settings(database_url, cognito_jwks_url=NO_JWKS))) as client:
        yield client


async def test_the_app_serves_the_committed_document(openapi_client: httpx.AsyncClient) -> None:
    response = await openapi_client.get("/openapi.json")

    assert response.status_code == 200
    assert response.json() == json.loads(COMMITTED_PATH.read_text(encoding="utf-8"))


def test_the_document_is_stable_and_readable() -> None:
    text = document()
    assert text == document()
    schema = json.loads(text)
    assert schema["openapi"].startswith("3.1")
    assert list(schema) == sorted(schema)
    assert text.startswith('{\n  "')
