"""Swagger UI in a real headless Chromium, against the real app served by uvicorn over HTTP.

An admin authorises (pasted bearer token, or sign-in through a stand-in for the Cognito Hosted
UI with authorization code + PKCE), runs `GET /api/v1/users/me` from the page and sees their own
record, while the page's strict CSP holds: any violation, blocked or failed request, failed
response or script error fails the test.

Needs the Debian `chromium` package (scripts/install_test_tools.sh installs it); Playwright
drives that browser and never downloads one of its own.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import secrets
import shutil
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import uvicorn
from fastapi import FastAPI
from playwright.async_api import (
    BrowserContext,
    ConsoleMessage,
    Page,
    Request,
    Response,
    async_playwright,
    expect,
)
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from app.core.roles import Role
from app.main import create_app
from app.models.user import User
from tests.support.harness import make_settings, token_for
from tests.support.jwt_tokens import TEST_CLIENT_ID, JWKSServer
from tests.support.net import free_port
from tests.support.servers import BackgroundServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    # Root in a container has no user namespaces for the sandbox.
    "--no-sandbox",
    "--headless",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-proxy-server",
    # Nothing may leave this machine; these stop the browser from trying.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 10_000

# Reports CSP violations through the console, where the collector below sees them, including
# those in the sign-in pop-up. Injected by the browser driver, so the CSP does not apply to it.
REPORT_CSP_VIOLATIONS = """
document.addEventListener("securitypolicyviolation", (event) => {
  console.error(`CSP violation: ${event.violatedDirective} blocked ${event.blockedURI}`);
});
"""


INJECT_INLINE_SCRIPT = """() => {
  const script = document.createElement("script");
  script.textContent = "window.injectedInlineScriptRan = true";
  document.body.append(script);
}"""


def chromium_path() -> str:
    """The system Chromium; fails (never skips) with the fix."""
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} not found: run scripts/install_test_tools.sh (as root)")
    return CHROMIUM


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Serve `app` with uvicorn on a loopback port in a background thread; yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        lifespan="on",
        ws="none",
        log_config=None,
        access_log=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn-docs-test", daemon=True)
    thread.start()
    try:
        for _ in range(500):
            if server.started or not thread.is_alive():
                break
            threading.Event().wait(0.01)
        assert server.started, "uvicorn did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


async def committed_user(database_url: str) -> User:
    """A user row committed for real, so the server's own connections see it."""
    engine = create_async_engine(database_url)
    try:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            unique = uuid.uuid4().hex[:12]
            user = User(
                cognito_user_id=str(uuid.uuid4()),
                email=f"swagger-admin-{unique}@example.gov",
                full_name=f"Swagger Admin {unique}",
                role=Role.ADMIN,
                is_active=True,
            )
            session.add(user)
            await session.commit()
            return user
    finally:
        await engine.dispose()


@dataclass
class BrowserProblems:
    """Everything that went wrong in any page of a browser context."""

    items: list[str] = field(default_factory=list)

    def watch(self, context: BrowserContext) -> None:
        context.on("console", self._console)
        context.on("weberror", lambda error: self.items.append(f"page error: {error.error}"))
        context.on("requestfailed", self._request_failed)
        context.on("response", self._response)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type in {"error", "warning"}:
            self.items.append(f"console {message.type}: {message.text}")

    def _request_failed(self, request: Request) -> None:
        self.items.append(f"request failed: {request.url} ({request.failure})")

    def _response(self, response: Response) -> None:
        if response.status >= 400:
            self.items.append(f"HTTP {response.status}: {response.url}")


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[tuple[BrowserContext, BrowserProblems]]:
    """A fresh headless Chromium profile, watched for problems."""
    executable = chromium_path()
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            context.set_default_timeout(UI_TIMEOUT_MS)
            await context.add_init_script(script=REPORT_CSP_VIOLATIONS)
            problems = BrowserProblems()
            problems.watch(context)
            yield context, problems
        finally:
            await context.close()


async def open_docs(context: BrowserContext, base_url: str) -> Page:
    page = context.pages[0] if context.pages else await context.new_page()
    await page.goto(f"{base_url}/docs")
    await expect(page.locator(".swagger-ui .info .title")).to_contain_text("one-system API")
    return page


async def call_users_me(page: Page) -> str:
    """Expand `GET /api/v1/users/me`, try it out and execute; returns the response panel text."""
    operation = page.locator(".opblock-get").filter(
        has=page.locator('[data-path="/api/v1/users/me"]')
    )
    await operation.locator(".opblock-summary-control").click()
    await operation.locator("button.try-out__btn").click()
    await operation.locator("button.execute").click()
    live = operation.locator(".live-responses-table")
    await expect(live.locator("tr.response .response-col_status")).to_have_text("200")
    return await live.inner_text()


async def test_admin_authorizes_with_a_bearer_token_and_calls_users_me(
    fresh_database_url: str,
    jwks_server: JWKSServer,
    browser: tuple[BrowserContext, BrowserProblems],
) -> None:
    context, problems = browser
    user = await committed_user(fresh_database_url)
    app = create_app(make_settings(fresh_database_url, cognito_jwks_url=jwks_server.url))

    with live_server(app) as base_url:
        page = await open_docs(context, base_url)
        await page.locator(".auth-wrapper button.authorize").click()
        bearer = page.locator(".auth-container").filter(has_text="HTTPBearer")
        await bearer.locator("input").fill(token_for(user))
        await bearer.locator("button.authorize").click()
        await expect(bearer).to_contain_text("Authorized")
        await bearer.locator("button.btn-done").click()
        # No OAuth2 option without COGNITO_DOMAIN.
        assert await page.locator(".auth-container").count() == 0

        panel = await call_users_me(page)
        assert user.email in panel
        assert problems.items == []

        # The policy is really in force, and a violation really fails these tests.
        await page.evaluate(INJECT_INLINE_SCRIPT)
        for _ in range(100):
            if problems.items:
                break
            await asyncio.sleep(0.02)
        assert await page.evaluate("window.injectedInlineScriptRan") is None
        assert any("CSP violation: script-src" in item for item in problems.items), problems


class FakeHostedUI:
    """Just enough of the Cognito Hosted UI for Swagger UI's authorization code + PKCE flow.

    `/oauth2/authorize` signs the user in at once and redirects back with a code;
    `/oauth2/token` redeems it only with the right client, redirect URI and PKCE verifier, and
    answers with CORS headers, as the browser calls it from the docs page's origin.
    """

    def __init__(self, access_token: str) -> None:
        self.access_token = access_token
        self.challenges: dict[str, tuple[str, str]] = {}  # code -> (challenge, redirect_uri)
        self.token_requests: list[dict[str, str]] = []
        self.authorize_queries: list[dict[str, str]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._running: BackgroundServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHostedUI:
        self._running = BackgroundServer(self._server)
        return self

    def __exit__(self, *_: object) -> None:
        assert self._running is not None
        self._running.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hosted_ui = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test asserts on what matters; access logs are noise

            def _cors(self) -> None:
                self.send_header("Access-Control-Allow-Origin", self.headers.get("Origin", "*"))
                self.send_header("Access-Control-Allow-Methods", "POST")
                self.send_header(
                    "Access-Control-Allow-Headers", "Content-Type, Accept, X-Requested-With"
                )

            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path != "/oauth2/authorize":
                    self.send_error(404)
                    return
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                hosted_ui.authorize_queries.append(query)
                code = secrets.token_urlsafe(16)
                hosted_ui.challenges[code] = (
                    query.get("code_challenge", ""),
                    query.get("redirect_uri", ""),
                )
                answer = urlencode({"code": code, "state": query.get("state", "")})
                self.send_response(302)
                self.send_header("Location", f"{query['redirect_uri']}?{answer}")
                self.end_headers()

            def do_OPTIONS(self) -> None:
                self.send_response(204)
                self._cors()
                self.end_headers()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                hosted_ui.token_requests.append(form)
                challenge, redirect_uri = hosted_ui.challenges.pop(form.get("code", ""), ("", ""))
                verifier = form.get("code_verifier", "").encode()
                expected = (
                    base64.urlsafe_b64encode(hashlib.sha256(verifier).digest()).rstrip(b"=")
                ).decode()
                valid = (
                    self.path == "/oauth2/token"
                    and form.get("grant_type") == "authorization_code"
                    and form.get("client_id") == TEST_CLIENT_ID
                    and form.get("redirect_uri") == redirect_uri
                    and challenge != ""
                    and expected == challenge
                )
                body = (
                    {
                        "access_token": hosted_ui.access_token,
                        "token_type": "Bearer",
                        "expires_in": 3600,
                    }
                    if valid
                    else {"error": "invalid_grant"}
                )
                payload = json.dumps(body).encode()
                self.send_response(200 if valid else 400)
                self._cors()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        return Handler


async def test_admin_signs_in_through_the_hosted_ui_with_pkce_and_calls_users_me(
    fresh_database_url: str,
    jwks_server: JWKSServer,
    browser: tuple[BrowserContext, BrowserProblems],
) -> None:
    context, problems = browser
    user = await committed_user(fresh_database_url)

    with FakeHostedUI(token_for(user)) as hosted_ui:
        settings = make_settings(
            fresh_database_url,
            cognito_jwks_url=jwks_server.url,
            cognito_domain=hosted_ui.base_url,
        )
        with live_server(create_app(settings)) as base_url:
            page = await open_docs(context, base_url)
            await page.locator(".auth-wrapper button.authorize").click()
            oauth2 = page.locator(".auth-container").filter(has_text="authorizationCode")
            await expect(oauth2.get_by_label("client_id:")).to_have_value(TEST_CLIENT_ID)
            async with page.expect_popup() as popup_info:
                await oauth2.locator("button.authorize").click()
            popup = await popup_info.value
            # The redirect page hands the code over and closes itself.
            # It may be gone already; no event is handled between this check and the wait.
            if not popup.is_closed():
                await popup.wait_for_event("close")
            await expect(oauth2).to_contain_text("Authorized")
            await oauth2.locator("button.btn-done").click()

            panel = await call_users_me(page)

        # Swagger UI keeps a failed token exchange quiet; make sure it happened, once, correctly.
        await asyncio.sleep(0)
        [authorize] = hosted_ui.authorize_queries
        assert authorize["code_challenge_method"] == "S256"
        assert authorize["redirect_uri"] == f"{base_url}/docs/oauth2-redirect"
        assert set(authorize["scope"].split()) == {"openid", "email", "profile"}
        [token_request] = hosted_ui.token_requests
        assert "client_secret" not in token_request

    assert user.email in panel
    assert problems.items == []
