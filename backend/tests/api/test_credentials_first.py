"""Credentials before the body: a caller who may not call a write route never gets its body read.

FastAPI parses the body before it solves the dependencies, so a malformed body used to be a 422
(or 400) even without a token or with the wrong role. Every route that takes a body is walked,
so a new one is covered too.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts

from app.core.roles import Role
from app.core.tokens import AccessClaims, AccessTokenVerifier
from tests.support.harness import ServedApp, UserFactory, auth_headers

PATH_VALUES = {"user_id": str(uuid.uuid4())}


@dataclass(frozen=True)
class Body:
    content: bytes
    content_type: str
    status_for_admin: int  # what an allowed caller gets: the problem with the body
    code_for_admin: str


JSON = "application/json"
MALFORMED = {
    "invalid JSON": Body(b'{"full_name": "a', JSON, 422, "validation_error"),
    "wrong types": Body(
        b'{"full_name": 5, "role": ["ADMIN"], "is_active": "maybe"}', JSON, 422, "validation_error"
    ),
    "not UTF-8": Body(b'{"full_name": "\xff\xfe"}', JSON, 400, "bad_request"),
    "wrong content type": Body(b'{"full_name": "A"}', "text/plain", 422, "validation_error"),
    "form": Body(b"full_name=A", "application/x-www-form-urlencoded", 422, "validation_error"),
    "JSON null": Body(b"null", JSON, 422, "validation_error"),
}


def write_routes(app: FastAPI) -> list[tuple[str, str]]:
    routes = []
    for route in iter_route_contexts(app.routes):
        if getattr(route, "body_field", None) is not None:
            routes.extend((method, route.path) for method in sorted(route.methods or ()))
    return routes


def cases() -> Iterator[tuple[str, str]]:
    yield from (("POST", "/api/v1/users"), ("PUT", "/api/v1/users/{user_id}"))


def test_the_walk_finds_every_route_that_takes_a_body(app: FastAPI) -> None:
    assert sorted(write_routes(app)) == sorted(cases())


async def send(
    client: httpx.AsyncClient, method: str, path: str, body: Body, headers: dict[str, str]
) -> httpx.Response:
    return await client.request(
        method,
        path.format(**PATH_VALUES),
        content=body.content,
        headers={"Content-Type": body.content_type, **headers},
    )


@pytest.mark.parametrize("kind", list(MALFORMED))
@pytest.mark.parametrize(("method", "path"), list(cases()))
async def test_anonymous_is_401_whatever_the_body(
    client: httpx.AsyncClient, method: str, path: str, kind: str
) -> None:
    response = await send(client, method, path, MALFORMED[kind], {})

    assert response.status_code == 401, response.text
    assert response.json()["code"] == "not_authenticated"
    assert response.headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.parametrize("kind", list(MALFORMED))
@pytest.mark.parametrize(("method", "path"), list(cases()))
async def test_a_bad_token_is_401_whatever_the_body(
    client: httpx.AsyncClient, method: str, path: str, kind: str
) -> None:
    response = await send(
        client, method, path, MALFORMED[kind], {"Authorization": "Bearer not.a.token"}
    )

    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == 'Bearer error="invalid_token"'


@pytest.mark.parametrize("kind", list(MALFORMED))
@pytest.mark.parametrize(("method", "path"), list(cases()))
async def test_a_role_without_access_is_403_whatever_the_body(
    client: httpx.AsyncClient, make_user: UserFactory, method: str, path: str, kind: str
) -> None:
    dispatcher = await make_user(Role.DISPATCHER)

    response = await send(client, method, path, MALFORMED[kind], auth_headers(dispatcher))

    assert response.status_code == 403, response.text
    assert response.json()["code"] == "forbidden"


@pytest.mark.parametrize("kind", list(MALFORMED))
@pytest.mark.parametrize(("method", "path"), list(cases()))
async def test_an_admin_is_told_what_is_wrong_with_the_body(
    client: httpx.AsyncClient, make_user: UserFactory, method: str, path: str, kind: str
) -> None:
    admin = await make_user(Role.ADMIN)

    response = await send(client, method, path, MALFORMED[kind], auth_headers(admin))

    expected = MALFORMED[kind]
    assert response.status_code == expected.status_for_admin, response.text
    body = response.json()
    assert body["code"] == expected.code_for_admin
    # Either the whole body is unreadable, or every problem found is in the body.
    problems = body["detail"] if isinstance(body["detail"], list) else [{"loc": ["body"]}]
    assert all(problem["loc"][0] == "body" for problem in problems), body


class CountingVerifier:
    """The app's verifier, counting the tokens it is asked to verify."""

    def __init__(self, verifier: AccessTokenVerifier) -> None:
        self.verifier = verifier
        self.calls = 0

    async def verify(self, token: str) -> AccessClaims:
        self.calls += 1
        return await self.verifier.verify(token)


@pytest.fixture
def counting_verifier(served_app: ServedApp) -> Iterator[CountingVerifier]:
    counting = CountingVerifier(served_app.state["token_verifier"])
    served_app.overrides["token_verifier"] = counting
    try:
        yield counting
    finally:
        served_app.overrides.pop("token_verifier")


@pytest.mark.parametrize(
    ("method", "path", "json_body"),
    [
        ("POST", "/api/v1/users", {"full_name": "A"}),  # 422: the body, after the caller
        ("PUT", "/api/v1/users/{user_id}", {"full_name": "A"}),  # 404: the endpoint ran
        ("PUT", "/api/v1/users/{user_id}", {"full_name": None}),  # 422
    ],
)
async def test_a_request_is_authenticated_once(
    client: httpx.AsyncClient,
    make_user: UserFactory,
    counting_verifier: CountingVerifier,
    method: str,
    path: str,
    json_body: dict[str, Any],
) -> None:
    admin = await make_user(Role.ADMIN)

    response = await client.request(
        method, path.format(**PATH_VALUES), json=json_body, headers=auth_headers(admin)
    )

    assert response.status_code in (404, 422), response.text
    assert counting_verifier.calls == 1


def test_the_openapi_operation_keeps_its_security_and_body(app: FastAPI) -> None:
    paths = app.openapi()["paths"]
    for (method, path), model in {
        ("post", "/api/v1/users"): "UserCreate",
        ("put", "/api/v1/users/{user_id}"): "UserUpdate",
    }.items():
        operation = paths[path][method]
        assert operation["security"] == [{"HTTPBearer": []}]
        assert operation["requestBody"] == {
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}},
            "required": True,
        }
