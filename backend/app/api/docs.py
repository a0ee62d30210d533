"""Swagger UI at /docs, served by the app itself so the page works without any CDN.

The Swagger UI files come from the `fastapi-swagger` package (its files only, not its patching);
the page's start-up code lives in `app/static/` and reads its configuration from a `data-`
attribute, so no page under /docs has an inline script or style and a strict Content-Security-
Policy holds. With `COGNITO_DOMAIN` set, the OpenAPI schema also offers the Cognito Hosted UI
(authorization code + PKCE) as an alternative to pasting a bearer token.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import html
import json
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final
from urllib.parse import urlsplit

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse

from app.core.config import ConfigError, Settings
from app.core.encoding import accepts_gzip
from app.core.errors import NotFoundError
from app.core.rbac import BEARER_SCHEME_NAME

DOCS_PATH: Final = "/docs"
STATIC_PATH: Final = f"{DOCS_PATH}/static"
OAUTH2_REDIRECT_PATH: Final = f"{DOCS_PATH}/oauth2-redirect"

OAUTH2_SCHEME_NAME: Final = "oauth2"
HOSTED_UI_SCOPES: Final = ("openid", "email", "profile")

_JAVASCRIPT: Final = "text/javascript; charset=utf-8"

# name -> (package holding the file, media type). Nothing outside this list is ever served.
_ASSET_SOURCES: Final[Mapping[str, tuple[str, str]]] = {
    "swagger-ui-bundle.js": ("fastapi_swagger.resources", _JAVASCRIPT),
    "swagger-ui.css": ("fastapi_swagger.resources", "text/css; charset=utf-8"),
    "favicon-32x32.png": ("fastapi_swagger.resources", "image/png"),
    "swagger-init.js": ("app.static", _JAVASCRIPT),
    "oauth2-redirect.js": ("app.static", _JAVASCRIPT),
}

# The URL carries the content digest (`?v=`), so a deploy that changes a file changes its URL and
# a year-long, immutable cache can never serve a stale Swagger UI.
_VERSIONED_CACHE: Final = "public, max-age=31536000, immutable"
_UNVERSIONED_CACHE: Final = "no-cache"

# Text assets are gzipped once, at start-up, at the highest level: the 1.7 MB bundle was
# gzipped again by Nginx on every request. Nginx passes a response that already has a
# Content-Encoding through untouched (its gzip filter skips it).
_COMPRESSIBLE: Final = ("text/", "application/javascript")


@dataclass(frozen=True, slots=True)
class StaticAsset:
    body: bytes
    media_type: str
    digest: str
    # The gzip encoding of `body`, made once; None for what gzip does not shrink (PNG).
    gzipped: bytes | None = None


@dataclass(frozen=True, slots=True)
class HostedUI:
    """Where Swagger UI sends the user to sign in, from `COGNITO_DOMAIN`."""

    base_url: str
    client_id: str

    @property
    def authorization_url(self) -> str:
        return f"{self.base_url}/oauth2/authorize"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/oauth2/token"


def hosted_ui_from_settings(settings: Settings) -> HostedUI | None:
    """The Hosted UI to offer, or None when `COGNITO_DOMAIN` is unset.

    The domain goes into a response header (the CSP), so anything but a bare origin is refused
    at startup rather than trusted.
    """
    domain = (settings.cognito_domain or "").strip().rstrip("/")
    if not domain:
        return None
    if "://" not in domain:
        domain = f"https://{domain}"
    parts = urlsplit(domain)
    try:
        port = parts.port
    except ValueError:  # a port that is not a number, or out of range
        raise ConfigError("COGNITO_DOMAIN has an invalid port") from None
    host = parts.hostname or ""
    is_origin = (
        parts.scheme in {"https", "http"}
        and host != ""
        and all(ch.isalnum() or ch in ".-" for ch in host)
        and not (parts.username or parts.password or parts.path or parts.query or parts.fragment)
    )
    if not is_origin:
        raise ConfigError("COGNITO_DOMAIN must be a host name such as auth.example.gov")
    netloc = host if port is None else f"{host}:{port}"
    return HostedUI(base_url=f"{parts.scheme}://{netloc}", client_id=settings.cognito_app_client_id)


def content_security_policy(hosted_ui: HostedUI | None) -> str:
    """The policy for everything under /docs: same-origin only, no inline code at all.

    The Hosted UI origin is added where Swagger UI reaches it: the token request (connect-src)
    and the sign-in navigation (form-action).
    """
    cognito = f" {hosted_ui.base_url}" if hosted_ui else ""
    return "; ".join(
        [
            "default-src 'self'",
            "img-src 'self' data:",
            "style-src 'self'",
            "script-src 'self'",
            f"connect-src 'self'{cognito}",
            "frame-ancestors 'none'",
            "base-uri 'none'",
            f"form-action 'self'{cognito}",
            "object-src 'none'",
        ]
    )


def load_static_assets() -> dict[str, StaticAsset]:
    assets: dict[str, StaticAsset] = {}
    for name, (package, media_type) in _ASSET_SOURCES.items():
        body = resources.files(package).joinpath(name).read_bytes()
        digest = hashlib.sha256(body).hexdigest()[:16]
        gzipped = (
            gzip.compress(body, compresslevel=9, mtime=0)
            if media_type.startswith(_COMPRESSIBLE)
            else None
        )
        assets[name] = StaticAsset(body=body, media_type=media_type, digest=digest, gzipped=gzipped)
    return assets


def init_oauth_config(hosted_ui: HostedUI) -> dict[str, Any]:
    """Swagger UI's `initOAuth` options: a public client (no secret), so PKCE is what binds
    the code to this browser."""
    return {
        "clientId": hosted_ui.client_id,
        "usePkceWithAuthorizationCodeGrant": True,
        "scopes": list(HOSTED_UI_SCOPES),
    }


def offer_hosted_ui(schema: Mapping[str, Any], hosted_ui: HostedUI) -> dict[str, Any]:
    """A copy of `schema` where every bearer-protected operation also accepts Hosted UI sign-in.

    The OAuth2 requirement is a second requirement object (either one suffices), and it asks for
    no scope: the API checks the access token, never its scopes. Swagger UI sends the token it
    obtains as `Authorization: Bearer`, which the API already accepts.
    """
    result = copy.deepcopy(dict(schema))
    schemes = result.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes[OAUTH2_SCHEME_NAME] = {
        "type": "oauth2",
        "description": "Sign in through the Cognito Hosted UI (authorization code with PKCE).",
        "flows": {
            "authorizationCode": {
                "authorizationUrl": hosted_ui.authorization_url,
                "tokenUrl": hosted_ui.token_url,
                "scopes": {
                    "openid": "Sign in with OpenID Connect",
                    "email": "Your email address",
                    "profile": "Your name",
                },
            }
        },
    }
    alternative: dict[str, list[str]] = {OAUTH2_SCHEME_NAME: []}
    for path_item in result.get("paths", {}).values():
        for operation in path_item.values():
            # A path item also holds non-operation keys such as a `parameters` list.
            if not isinstance(operation, dict):
                continue
            security = operation.get("security")
            if not security or alternative in security:
                continue
            if any(BEARER_SCHEME_NAME in requirement for requirement in security):
                security.append(dict(alternative))
    return result


def _offer_hosted_ui_in_openapi(app: FastAPI, hosted_ui: HostedUI) -> None:
    build_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = offer_hosted_ui(build_schema(), hosted_ui)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _asset_url(assets: Mapping[str, StaticAsset], name: str, root: str) -> str:
    return html.escape(f"{root}{STATIC_PATH}/{name}?v={assets[name].digest}")


def _docs_page(
    title: str, config: Mapping[str, Any], assets: Mapping[str, StaticAsset], root: str
) -> str:
    def asset_url(name: str) -> str:
        return _asset_url(assets, name, root)

    data_config = html.escape(json.dumps(config, separators=(",", ":")), quote=True)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)} - Swagger UI</title>
<link rel="icon" type="image/png" href="{asset_url("favicon-32x32.png")}">
<link rel="stylesheet" href="{asset_url("swagger-ui.css")}">
</head>
<body>
<div id="swagger-ui" data-config="{data_config}"></div>
<script src="{asset_url("swagger-ui-bundle.js")}"></script>
<script src="{asset_url("swagger-init.js")}"></script>
</body>
</html>
"""


def _oauth2_redirect_page(assets: Mapping[str, StaticAsset], root: str) -> str:
    script = _asset_url(assets, "oauth2-redirect.js", root)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Signing in - Swagger UI</title>
</head>
<body>
<p id="oauth2-status">Completing sign-in&hellip;</p>
<script src="{script}"></script>
</body>
</html>
"""


def install_docs(app: FastAPI, settings: Settings) -> None:
    """Serve Swagger UI, its assets and its OAuth2 redirect page under /docs.

    Create the app with `docs_url=None, redoc_url=None, swagger_ui_oauth2_redirect_url=None`
    so FastAPI's own CDN-based pages do not exist next to these.
    """
    openapi_url = app.openapi_url
    if openapi_url is None:
        return
    hosted_ui = hosted_ui_from_settings(settings)
    if hosted_ui is not None:
        _offer_hosted_ui_in_openapi(app, hosted_ui)
    assets = load_static_assets()
    security_headers = {
        "Content-Security-Policy": content_security_policy(hosted_ui),
        "X-Content-Type-Options": "nosniff",
        # The redirect page's URL carries the authorization code; keep it out of Referer.
        "Referrer-Policy": "no-referrer",
    }
    init_oauth = init_oauth_config(hosted_ui) if hosted_ui else None

    def root_path(request: Request) -> str:
        # Behind a path prefix the browser must ask for the prefixed URLs.
        return str(request.scope.get("root_path", "")).rstrip("/")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = root_path(request)
        config = {
            "openapiUrl": f"{root}{openapi_url}",
            # Relative; the init script resolves it against the address bar, which is the
            # public https URL the Hosted UI must redirect back to.
            "oauth2RedirectUrl": f"{root}{OAUTH2_REDIRECT_PATH}",
            "initOAuth": init_oauth,
        }
        page = _docs_page(app.title, config, assets, root)
        return HTMLResponse(page, headers={**security_headers, "Cache-Control": _UNVERSIONED_CACHE})

    @app.get(OAUTH2_REDIRECT_PATH, include_in_schema=False)
    async def swagger_ui_oauth2_redirect(request: Request) -> HTMLResponse:
        page = _oauth2_redirect_page(assets, root_path(request))
        return HTMLResponse(page, headers={**security_headers, "Cache-Control": "no-store"})

    @app.get(f"{STATIC_PATH}/{{name}}", include_in_schema=False)
    async def swagger_ui_asset(name: str, request: Request) -> Response:
        asset = assets.get(name)
        if asset is None:
            raise NotFoundError("No such Swagger UI asset")
        return _asset_response(asset, request, security_headers)


def _asset_response(
    asset: StaticAsset, request: Request, security_headers: Mapping[str, str]
) -> Response:
    """The asset, gzipped where the client accepts it, or 304 when it holds this one."""
    gzipped = asset.gzipped is not None and accepts_gzip(request.headers.get("accept-encoding", ""))
    # Each encoding is its own representation, with its own strong validator.
    etag = f'"{asset.digest}-gzip"' if gzipped else f'"{asset.digest}"'
    versioned = request.query_params.get("v") == asset.digest
    headers = {
        **security_headers,
        "ETag": etag,
        "Cache-Control": _VERSIONED_CACHE if versioned else _UNVERSIONED_CACHE,
    }
    if asset.gzipped is not None:
        headers["Vary"] = "Accept-Encoding"
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    body = asset.gzipped if gzipped and asset.gzipped is not None else asset.body
    return Response(body, media_type=asset.media_type, headers=headers)
