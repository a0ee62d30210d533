"""Swagger UI at /docs: same-origin assets only, no inline code, a strict CSP, and the Cognito
Hosted UI offered in the OpenAPI schema only when COGNITO_DOMAIN is set."""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from importlib import resources
from urllib.parse import urlsplit

import httpx
import pytest

from app.api.docs import (
    OAUTH2_SCHEME_NAME,
    HostedUI,
    content_security_policy,
    hosted_ui_from_settings,
    offer_hosted_ui,
)
from app.core.config import ConfigError
from app.core.encoding import accepts_gzip
from app.main import create_app
from tests.support.harness import make_settings, serve
from tests.support.jwt_tokens import TEST_CLIENT_ID

# Nothing listens there: these tests never verify a token, and must not fetch keys from AWS.
NO_JWKS = "http://127.0.0.1:9/jwks.json"
COGNITO_DOMAIN = "auth.example.gov"
COGNITO_ORIGIN = "https://auth.example.gov"

STRICT_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; "
    "object-src 'none'"
)


class PageScan(HTMLParser):
    """What a page loads and whether it carries any inline code or style."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_code: list[str] = []
        self.data_config: str | None = None
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for name, value in attrs:
            if name == "style" or name.startswith("on"):
                self.inline_code.append(f"<{tag} {name}={value!r}>")
        if tag == "style":
            self.inline_code.append("<style>")
        if tag == "script":
            self._in_script = True
            if attributes.get("src"):
                self.urls.append(str(attributes["src"]))
            else:
                self.inline_code.append("<script> without src")
        if tag == "link" and attributes.get("href"):
            self.urls.append(str(attributes["href"]))
        if "data-config" in attributes:
            self.data_config = attributes["data-config"]

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_code.append(f"script body {data.strip()[:40]!r}")


def scan(page: str) -> PageScan:
    scanner = PageScan()
    scanner.feed(page)
    scanner.close()
    return scanner


@pytest.fixture(scope="module")
async def docs_client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with serve(create_app(make_settings(database_url, cognito_jwks_url=NO_JWKS))) as client:
        yield client


@pytest.fixture(scope="module")
async def hosted_ui_client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(database_url, cognito_domain=COGNITO_DOMAIN, cognito_jwks_url=NO_JWKS)
    async with serve(create_app(settings)) as client:
        yield client


async def test_docs_page_loads_same_origin_assets_only_and_no_inline_code(
    docs_client: httpx.AsyncClient,
) -> None:
    response = await docs_client.get("/docs")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    page = scan(response.text)
    assert page.inline_code == []
    assert page.urls, "the page must load Swagger UI"
    for url in page.urls:
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc) == ("", ""), url
        assert parts.path.startswith("/docs/static/"), url
    assert "://" not in response.text


@pytest.mark.parametrize(
    ("suffix", "media_type"),
    [
        ("swagger-ui-bundle.js", "text/javascript"),
        ("swagger-init.js", "text/javascript"),
        ("swagger-ui.css", "text/css"),
        ("favicon-32x32.png", "image/png"),
    ],
)
async def test_every_asset_the_page_references_is_served(
    docs_client: httpx.AsyncClient, suffix: str, media_type: str
) -> None:
    page = scan((await docs_client.get("/docs")).text)
    [url] = [url for url in page.urls if urlsplit(url).path.endswith(f"/{suffix}")]

    response = await docs_client.get(url)

    assert response.status_code == 200
    assert response.headers["content-type"].split(";")[0] == media_type
    assert response.headers["x-content-type-options"] == "nosniff"
    assert len(response.content) > 0
    # Versioned by content digest, so the browser may keep it for good.
    assert "immutable" in response.headers["cache-control"]


async def test_oauth2_redirect_page_runs_an_external_script_only(
    docs_client: httpx.AsyncClient,
) -> None:
    response = await docs_client.get("/docs/oauth2-redirect")

    assert response.status_code == 200
    assert response.headers["content-security-policy"] == STRICT_CSP
    assert response.headers["referrer-policy"] == "no-referrer"
    page = scan(response.text)
    assert page.inline_code == []
    [script] = page.urls
    assert urlsplit(script).path == "/docs/static/oauth2-redirect.js"
    served = await docs_client.get(script)
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("text/javascript")
    assert b"swaggerUIRedirectOauth2" in served.content


@pytest.mark.parametrize("path", ["/docs", "/docs/oauth2-redirect", "/docs/static/swagger-ui.css"])
async def test_docs_responses_carry_the_strict_csp(
    docs_client: httpx.AsyncClient, path: str
) -> None:
    response = await docs_client.get(path)

    assert response.headers["content-security-policy"] == STRICT_CSP


async def test_with_a_cognito_domain_the_csp_lets_swagger_reach_it_and_nothing_else(
    hosted_ui_client: httpx.AsyncClient,
) -> None:
    csp = (await hosted_ui_client.get("/docs")).headers["content-security-policy"]

    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["connect-src"] == f"'self' {COGNITO_ORIGIN}"
    assert directives["form-action"] == f"'self' {COGNITO_ORIGIN}"
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["default-src"] == "'self'"


@pytest.mark.parametrize(
    "name",
    ["no-such-asset.js", "main.py", "..%2F..%2Fmain.py", "swagger-ui-bundle.js.map", "__init__.py"],
)
async def test_names_outside_the_allow_list_are_404(
    docs_client: httpx.AsyncClient, name: str
) -> None:
    response = await docs_client.get(f"/docs/static/{name}")

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"


async def test_unversioned_asset_is_revalidated_and_answers_304_when_unchanged(
    docs_client: httpx.AsyncClient,
) -> None:
    first = await docs_client.get("/docs/static/swagger-init.js")
    assert first.headers["cache-control"] == "no-cache"

    again = await docs_client.get(
        "/docs/static/swagger-init.js", headers={"If-None-Match": first.headers["etag"]}
    )

    assert again.status_code == 304
    assert again.content == b""


async def test_without_a_cognito_domain_nothing_oauth_related_appears(
    docs_client: httpx.AsyncClient,
) -> None:
    schema = (await docs_client.get("/openapi.json")).json()
    config = json.loads(scan((await docs_client.get("/docs")).text).data_config or "")

    assert list(schema["components"]["securitySchemes"]) == ["HTTPBearer"]
    assert "oauth2" not in json.dumps(schema["paths"]).lower()
    assert config["initOAuth"] is None
    assert config["openapiUrl"] == "/openapi.json"
    assert config["oauth2RedirectUrl"] == "/docs/oauth2-redirect"


async def test_with_a_cognito_domain_hosted_ui_is_an_alternative_on_every_bearer_operation(
    hosted_ui_client: httpx.AsyncClient,
) -> None:
    schema = (await hosted_ui_client.get("/openapi.json")).json()

    scheme = schema["components"]["securitySchemes"][OAUTH2_SCHEME_NAME]
    assert scheme["type"] == "oauth2"
    flow = scheme["flows"]["authorizationCode"]
    assert flow["authorizationUrl"] == f"{COGNITO_ORIGIN}/oauth2/authorize"
    assert flow["tokenUrl"] == f"{COGNITO_ORIGIN}/oauth2/token"
    assert set(flow["scopes"]) == {"openid", "email", "profile"}
    assert "HTTPBearer" in schema["components"]["securitySchemes"]

    protected = 0
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            security = operation.get("security")
            if security is None:
                continue
            protected += 1
            # Two requirement objects: either one authorises the call.
            assert security == [{"HTTPBearer": []}, {OAUTH2_SCHEME_NAME: []}], (method, path)
    assert protected > 0
    assert "security" not in schema["paths"]["/health"]["get"]


async def test_with_a_cognito_domain_swagger_signs_in_with_pkce(
    hosted_ui_client: httpx.AsyncClient,
) -> None:
    config = json.loads(scan((await hosted_ui_client.get("/docs")).text).data_config or "")

    assert config["initOAuth"] == {
        "clientId": TEST_CLIENT_ID,
        "usePkceWithAuthorizationCodeGrant": True,
        "scopes": ["openid", "email", "profile"],
    }


async def test_openapi_schema_is_built_once(hosted_ui_client: httpx.AsyncClient) -> None:
    first = (await hosted_ui_client.get("/openapi.json")).json()
    second = (await hosted_ui_client.get("/openapi.json")).json()

    assert first == second
    me = second["paths"]["/api/v1/users/me"]["get"]["security"]
    assert me.count({OAUTH2_SCHEME_NAME: []}) == 1


def test_offer_hosted_ui_leaves_the_original_schema_alone() -> None:
    original = {
        "paths": {"/x": {"parameters": [], "get": {"security": [{"HTTPBearer": []}]}}},
        "components": {"securitySchemes": {"HTTPBearer": {"type": "http"}}},
    }

    offered = offer_hosted_ui(original, HostedUI(COGNITO_ORIGIN, TEST_CLIENT_ID))

    assert original["paths"]["/x"]["get"]["security"] == [{"HTTPBearer": []}]
    assert offered["paths"]["/x"]["get"]["security"] == [
        {"HTTPBearer": []},
        {OAUTH2_SCHEME_NAME: []},
    ]


@pytest.mark.parametrize(
    ("domain", "base_url"),
    [
        ("auth.example.gov", "https://auth.example.gov"),
        ("https://auth.example.gov/", "https://auth.example.gov"),
        (" my-pool.auth.ap-southeast-1.amazoncognito.com ", None),
        ("http://localhost:9229", "http://localhost:9229"),
    ],
)
def test_cognito_domain_becomes_an_origin(
    database_url: str, domain: str, base_url: str | None
) -> None:
    hosted_ui = hosted_ui_from_settings(make_settings(database_url, cognito_domain=domain))

    assert hosted_ui is not None
    assert hosted_ui.base_url == (base_url or f"https://{domain.strip()}")
    assert hosted_ui.client_id == TEST_CLIENT_ID


@pytest.mark.parametrize(
    "domain",
    [
        "auth.example.gov; script-src *",
        "https://auth.example.gov/login",
        "https://user:pw@auth.example.gov",
        "ftp://auth.example.gov",
        "https://auth.example.gov:99999",
        "https://auth.example.gov?x=1",
    ],
)
def test_a_cognito_domain_that_is_not_an_origin_is_refused(database_url: str, domain: str) -> None:
    with pytest.raises(ConfigError, match="COGNITO_DOMAIN"):
        create_app(make_settings(database_url, cognito_domain=domain))


def test_csp_names_only_the_cognito_origin() -> None:
    csp = content_security_policy(HostedUI(COGNITO_ORIGIN, TEST_CLIENT_ID))

    assert csp.count(COGNITO_ORIGIN) == 2
    assert "unsafe" not in csp


async def raw_get(
    client: httpx.AsyncClient, path: str, **headers: str
) -> tuple[httpx.Response, bytes]:
    """A response and its body as sent, still encoded."""
    async with client.stream("GET", path, headers=headers) as response:
        return response, b"".join([chunk async for chunk in response.aiter_raw()])


async def test_text_assets_are_served_gzipped_from_one_compression_at_start_up(
    docs_client: httpx.AsyncClient,
) -> None:
    bundle = resources.files("fastapi_swagger.resources").joinpath("swagger-ui-bundle.js")
    body = bundle.read_bytes()

    response, raw = await raw_get(
        docs_client, "/docs/static/swagger-ui-bundle.js", **{"Accept-Encoding": "gzip"}
    )

    assert response.headers["content-encoding"] == "gzip"
    assert "Accept-Encoding" in response.headers["vary"].split(", ")
    assert raw == gzip.compress(body, compresslevel=9, mtime=0)
    assert len(raw) < len(body) // 3

    plain, plain_raw = await raw_get(
        docs_client, "/docs/static/swagger-ui-bundle.js", **{"Accept-Encoding": "identity"}
    )
    assert "content-encoding" not in plain.headers
    assert plain_raw == body
    assert "Accept-Encoding" in plain.headers["vary"].split(", ")
    # Two representations, two strong validators; each revalidates to 304 in its own encoding.
    assert plain.headers["etag"] != response.headers["etag"]
    again = await docs_client.get(
        "/docs/static/swagger-ui-bundle.js",
        headers={"Accept-Encoding": "gzip", "If-None-Match": response.headers["etag"]},
    )
    assert again.status_code == 304
    stale = await docs_client.get(
        "/docs/static/swagger-ui-bundle.js",
        headers={"Accept-Encoding": "gzip", "If-None-Match": plain.headers["etag"]},
    )
    assert stale.status_code == 200

    # A PNG is left as it is: gzip would not shrink it.
    png, _ = await raw_get(
        docs_client, "/docs/static/favicon-32x32.png", **{"Accept-Encoding": "gzip"}
    )
    assert png.status_code == 200
    assert "content-encoding" not in png.headers


@pytest.mark.parametrize(
    ("accept_encoding", "gzipped"),
    [
        ("gzip", True),
        ("br, gzip;q=0.5", True),
        ("*", True),
        ("gzip;q=0", False),
        ("gzip; q=0.000", False),
        ("deflate, br", False),
        ("", False),
    ],
)
def test_accept_encoding_is_read_with_its_quality(accept_encoding: str, gzipped: bool) -> None:
    assert accepts_gzip(accept_encoding) is gzipped
