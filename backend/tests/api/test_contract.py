"""One contract for every route: what a client sending the wrong thing is told, and HEAD."""

from __future__ import annotations

import uuid

import httpx
import pytest

from app.core.roles import Role
from tests.support.harness import UserFactory, auth_headers


@pytest.mark.parametrize("value", ["no", "false", 0, 1, None])
async def test_is_active_takes_true_or_false_only(
    client: httpx.AsyncClient, make_user: UserFactory, value: object
) -> None:
    admin = await make_user()
    target = await make_user(Role.DISPATCHER)

    response = await client.put(
        f"/api/v1/users/{target.id}", json={"is_active": value}, headers=auth_headers(admin)
    )

    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert [problem["loc"] for problem in response.json()["detail"]] == [["body", "is_active"]]


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/v1/users/{id}/reset-password"), ("GET", "/api/v1/users/me")],
)
async def test_an_operation_without_a_body_refuses_one_after_the_credentials(
    client: httpx.AsyncClient, make_user: UserFactory, method: str, path: str
) -> None:
    admin = await make_user()
    url = path.format(id=uuid.uuid4())

    with_body = await client.request(method, url, json={}, headers=auth_headers(admin))
    anonymous = await client.request(method, url, json={})
    without = await client.request(method, url, headers=auth_headers(admin))

    assert with_body.status_code == 422, with_body.text
    assert with_body.json()["code"] == "body_not_allowed"
    assert anonymous.status_code == 401
    assert without.status_code in {200, 404}  # the operation itself: the user is unknown


@pytest.mark.parametrize("email", ["ünicode@example.gov", "名前@example.gov"])
async def test_an_address_cognito_cannot_email_is_refused_before_any_call(
    client: httpx.AsyncClient, make_user: UserFactory, email: str
) -> None:
    admin = await make_user()

    response = await client.post(
        "/api/v1/users",
        json={"full_name": "New", "email": email, "role": "DISPATCHER"},
        headers=auth_headers(admin),
    )

    assert response.status_code == 422, response.text
    [problem] = response.json()["detail"]
    assert problem["loc"] == ["body", "email"]
    assert "before the @-sign" in problem["msg"]


async def test_head_is_answered_wherever_get_is(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    user = await make_user(Role.EXECUTIVE)
    for path, headers in (("/health", {}), ("/api/v1/users/me", auth_headers(user))):
        got = await client.get(path, headers=headers)
        head = await client.head(path, headers=headers)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b""
        assert head.headers["content-length"] == got.headers["content-length"]
    refused = await client.head("/api/v1/users/me")
    assert refused.status_code == 401
    assert (await client.head(f"/api/v1/users/{user.id}/reset-password")).status_code == 405


@pytest.mark.parametrize("query", ["q=", "province=", "role=", "is_active=", "q=&role="])
async def test_a_filter_left_blank_is_no_filter(
    client: httpx.AsyncClient, make_user: UserFactory, query: str
) -> None:
    admin = await make_user()

    blank = await client.get(f"/api/v1/users?{query}", headers=auth_headers(admin))
    unfiltered = await client.get("/api/v1/users", headers=auth_headers(admin))

    assert blank.status_code == 200, blank.text
    assert blank.json() == unfiltered.json()


async def test_a_trailing_slash_is_another_path_not_a_redirect(
    client: httpx.AsyncClient, make_user: UserFactory
) -> None:
    admin = await make_user()

    response = await client.get("/api/v1/users/", headers=auth_headers(admin))

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert "location" not in response.headers
