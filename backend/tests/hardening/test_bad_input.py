"""A corpus of hostile and broken input, sent with a valid ADMIN token.

Oversized and deeply nested JSON, bytes that are not UTF-8, NUL characters and lone surrogates
(which PostgreSQL text cannot hold), absurd page sizes, SQL and script in the search string,
wrong content types, giant and non-ASCII headers, unknown methods. Each is answered with a 4xx
(or, for a harmless search, an empty 200), nothing is logged at ERROR, and no token or password
appears in any log line.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from app.core.roles import Role
from tests.support.database import cloned_database
from tests.support.harness import LiveApp, add_user, bearer, live_app, make_settings
from tests.support.jwt_tokens import JWKSServer
from tests.support.logs import recorded_logs
from tests.support.moto_cognito import MotoCognito

USERS = "/api/v1/users"


@dataclass
class Probe:
    method: str
    path: str
    statuses: set[int]
    content: bytes | None = None
    json_body: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    raw_headers: list[tuple[bytes, bytes]] = field(default_factory=list)


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def create_body(**overrides: Any) -> dict[str, Any]:
    return {
        "full_name": "Bad Input",
        "email": f"bad-{uuid.uuid4().hex[:10]}@example.gov",
        "role": "DISPATCHER",
        **overrides,
    }


INVALID = {400, 422}
SEARCH = {200, 422}
CORPUS: dict[str, Probe] = {
    "5 MB name": Probe("POST", USERS, {422}, json_body=create_body(full_name="x" * 5_000_000)),
    "5 MB of unknown fields": Probe(
        "POST", USERS, {422}, json_body=create_body(**{f"f{i}": i for i in range(200_000)})
    ),
    "array nested 100k deep": Probe("POST", USERS, INVALID, content=nested(100_000)),
    "object nested 10k deep": Probe(
        "POST", USERS, INVALID, content=b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    ),
    "invalid UTF-8 body": Probe("POST", USERS, INVALID, content=b'{"full_name": "\xff\xfe"}'),
    "truncated JSON": Probe("POST", USERS, INVALID, content=b'{"full_name": "a'),
    "JSON null": Probe("POST", USERS, {422}, content=b"null"),
    "JSON array": Probe("POST", USERS, {422}, json_body=[create_body()]),
    "NaN in JSON": Probe("POST", USERS, INVALID, content=b'{"full_name": NaN}'),
    "NUL in the name": Probe("POST", USERS, {422}, json_body=create_body(full_name="a\x00b")),
    "lone surrogate in the name": Probe(
        "POST", USERS, {422}, content=json.dumps(create_body(full_name="a\ud800b")).encode()
    ),
    "NUL in the email": Probe("POST", USERS, {422}, json_body=create_body(email="a\x00@b.gov")),
    "text/plain": Probe(
        "POST",
        USERS,
        {415, 422},
        content=json.dumps(create_body()).encode(),
        headers={"Content-Type": "text/plain"},
    ),
    "form-encoded": Probe(
        "POST",
        USERS,
        {415, 422},
        content=b"full_name=a&email=b%40c.gov&role=ADMIN",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
    "no content type": Probe("POST", USERS, {415, 422}, content=json.dumps(create_body()).encode()),
    "page_size huge": Probe("GET", USERS, {422}, params={"page_size": 10**30}),
    "page_size negative": Probe("GET", USERS, {422}, params={"page_size": -1}),
    "page_size float": Probe("GET", USERS, {422}, params={"page_size": "1e3"}),
    "page past int64": Probe("GET", USERS, {422}, params={"page": 2**63}),
    "sql in q": Probe("GET", USERS, SEARCH, params={"q": "' OR 1=1 --"}),
    "sql drop in q": Probe("GET", USERS, SEARCH, params={"q": "%'; DROP TABLE users; --"}),
    "script in q": Probe("GET", USERS, SEARCH, params={"q": "<script>alert(1)</script>"}),
    "LIKE wildcards in q": Probe("GET", USERS, SEARCH, params={"q": "%_%\\"}),
    "NUL in q": Probe("GET", USERS, {422}, params={"q": "a\x00b"}),
    "NUL in province": Probe("GET", USERS, {422}, params={"province": "\x00"}),
    "repeated parameter": Probe("GET", USERS, SEARCH, params={"page": ["1", "2"]}),
    "NUL in the path": Probe("GET", f"{USERS}/%00", {422}),
    "SQL in the path": Probe("GET", f"{USERS}/' OR '1'='1", {422}),
    "NUL in an update": Probe(
        "PUT", f"{USERS}/{uuid.uuid4()}", {422}, json_body={"full_name": "\x00"}
    ),
    "NUL in complaint filter": Probe(
        "GET", "/api/v1/reference/complaint-types", {422}, params={"service_type_id": "\x00"}
    ),
    "service type id past smallint": Probe(
        "GET", "/api/v1/reference/complaint-types", {422}, params={"service_type_id": 2**40}
    ),
    "giant If-None-Match": Probe(
        "GET", "/api/v1/reference/handlers", {200}, headers={"If-None-Match": "x" * 100_000}
    ),
    "DELETE": Probe("DELETE", f"{USERS}/{uuid.uuid4()}", {405}),
    "PATCH": Probe("PATCH", f"{USERS}/{uuid.uuid4()}", {405}, json_body={}),
}


@pytest.fixture(scope="module")
async def target(
    pg: Any, migrated_template: str, jwks_server: JWKSServer, moto_cognito: MotoCognito
) -> AsyncIterator[tuple[LiveApp, dict[str, str]]]:
    async with cloned_database(pg, migrated_template, "bad_input") as url:
        admin = await add_user(url, Role.ADMIN)
        settings = make_settings(url, cognito_jwks_url=jwks_server.url)
        async with live_app(settings, cognito=moto_cognito.adapter()) as live:
            yield live, bearer(admin.cognito_user_id)


@pytest.mark.parametrize("name", list(CORPUS))
async def test_bad_input_is_a_4xx_and_logs_no_error(
    target: tuple[LiveApp, dict[str, str]], name: str
) -> None:
    live, headers = target
    probe = CORPUS[name]
    with recorded_logs() as logs:
        response = await live.client.request(
            probe.method,
            probe.path,
            content=probe.content,
            json=probe.json_body,
            params=probe.params,
            headers={**headers, **probe.headers},
        )
    assert response.status_code in probe.statuses, (name, response.status_code, response.text)
    # An answer is never an amplification of a large request.
    assert len(response.content) < 16 * 1024, (name, len(response.content))
    body = response.json() if response.content else {}
    if response.status_code >= 400:
        assert body["code"], body
    if response.status_code == 200 and probe.path == USERS:
        assert body["items"] == [] or probe.params == {"page": ["1", "2"]}
    assert not logs.at_least(logging.ERROR), [r.getMessage() for r in logs.at_least(logging.ERROR)]
    token = headers["Authorization"].removeprefix("Bearer ")
    assert not any(token in line for line in logs.lines)


async def test_hostile_headers_are_401_and_never_logged(
    target: tuple[LiveApp, dict[str, str]],
) -> None:
    live, headers = target
    token = headers["Authorization"].removeprefix("Bearer ")
    attempts: list[dict[str, Any]] = [
        {"headers": {"Authorization": "Bearer " + "a" * 200_000}},
        {"headers": {"Authorization": b"Bearer \xe9\xe9\xe9.\xe9.\xe9"}},
        {"headers": {"Authorization": "Basic " + token}},
        {"headers": {"Authorization": "Bearer " + token[::-1]}},
        {"headers": {"Authorization": "Bearer " + token + "x"}},
        {"params": {"access_token": token}},
        {"headers": {"Cookie": f"access_token={token}"}},
        {"headers": {"X-Request-ID": "a\r\nInjected: 1", "Authorization": token}},
    ]
    with recorded_logs() as logs:
        for attempt in attempts:
            response = await live.client.get("/api/v1/users/me", **attempt)
            assert response.status_code == 401, (attempt, response.text)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert not logs.at_least(logging.ERROR)
    for line in logs.lines:
        assert token not in line
        assert token[::-1] not in line
        assert "Injected" not in line
