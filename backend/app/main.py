"""Application factory. `uvicorn app.main:app` serves the app built from the environment."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TypedDict

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from app import __version__
from app.api.docs import install_docs
from app.api.metrics import router as metrics_router
from app.api.v1 import API_PREFIX
from app.api.v1 import routers as v1_routers
from app.api.v1.health import router as health_router
from app.api.v1.query import document_query_schemas
from app.core import cors, metrics
from app.core.config import Settings, load_settings
from app.core.db import (
    Database,
    ReadSessions,
    Sessionmaker,
    create_engine,
    create_sessionmaker,
    database_is_reachable,
    open_database,
)
from app.core.errors import ErrorResponse, register_error_handlers
from app.core.gc_tuning import startup_heap_frozen
from app.core.jwks import JWKSCache
from app.core.listener import NotificationListener
from app.core.logging import configure_logging
from app.core.middleware import HeadAsGetMiddleware, RequestContextMiddleware
from app.core.rbac import UserLookup
from app.core.tasks import BackgroundTask
from app.core.tokens import AccessTokenVerifier
from app.services.cognito import CognitoUserPool
from app.services.directory_sync import DirectoryRecorder
from app.services.pool_check import start_pool_check
from app.services.reference import ReferenceCache
from app.services.user_cache import (
    PAGES_CACHED,
    ActiveUsers,
    UserCache,
    UserCountCache,
    UserPageCache,
    session_class_evicting_from,
)

logger = logging.getLogger(__name__)


class State(TypedDict):
    """What the lifespan builds, handed to every request (`app.core.state.LifespanItem`)."""

    settings: Settings
    engine: AsyncEngine
    sessionmaker: Sessionmaker
    read_sessionmaker: ReadSessions
    token_verifier: AccessTokenVerifier
    user_cache: UserCache
    user_lookup: UserLookup
    user_counts: UserCountCache
    user_pages: UserPageCache
    cognito: CognitoUserPool
    directory_sync: DirectoryRecorder
    reference_cache: ReferenceCache
    # A pool of one connection of its own, so the ALB's probe never waits behind requests.
    health_engine: AsyncEngine


def _lifespan(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[State]]:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[State]:
        metrics.RELEASE.labels(settings.app_release or __version__, __version__).set(1)
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(metrics.forget_this_process)  # the last thing a clean stop does
            if settings.metrics:
                flushing = BackgroundTask(metrics.flushing, "metrics")
                flushing.start()
                stack.push_async_callback(flushing.aclose)  # a last flush before forgetting
            state = await _start(settings, stack)
            # Start-up is over: what it built is never walked by the collector again.
            with startup_heap_frozen():
                yield state

    return lifespan


async def _start(settings: Settings, stack: contextlib.AsyncExitStack) -> State:
    """Build what requests use; `stack` stops it again, in the reverse order."""
    database = await open_database(settings)
    stack.push_async_callback(database.dispose)
    await _say_whether_the_database_is_reachable(database, settings)
    health_engine = create_engine(
        database.connector, settings, pool_size=1, max_overflow=0, name="health"
    )
    stack.push_async_callback(health_engine.dispose)
    jwks = JWKSCache(settings.jwks_url)
    stack.push_async_callback(jwks.aclose)
    # Warm the key cache without holding up startup: tokens verify once it lands, and a
    # Cognito outage now only means the first requests fetch the keys themselves.
    stack.callback(asyncio.create_task(jwks.preload()).cancel)
    user_cache = await _user_cache(settings, database, stack)
    # Its sessions evict the users they commit from this worker's cache at once.
    sessionmaker = create_sessionmaker(database.engine, session_class_evicting_from(user_cache))
    cognito = CognitoUserPool.from_settings(settings)
    # Says once whether the pool is as this system needs it, without holding up startup.
    pool_check = start_pool_check(cognito, settings)
    if pool_check is not None:
        stack.callback(pool_check.cancel)
    read_sessions = database.read_sessions
    return State(
        settings=settings,
        engine=database.engine,
        sessionmaker=sessionmaker,
        read_sessionmaker=read_sessions,
        token_verifier=AccessTokenVerifier(
            jwks, issuer=settings.cognito_issuer, client_id=settings.cognito_app_client_id
        ),
        user_cache=user_cache,
        user_lookup=ActiveUsers(user_cache, database.engine),
        user_counts=UserCountCache(user_cache),
        user_pages=UserPageCache(user_cache, max_entries=PAGES_CACHED),
        cognito=cognito,
        # Requests only record work in the outbox; the worker process (app.worker) does it.
        directory_sync=DirectoryRecorder(read_sessions),
        reference_cache=ReferenceCache(),
        health_engine=health_engine,
    )


async def _say_whether_the_database_is_reachable(database: Database, settings: Settings) -> None:
    # A database that is down at startup must not stop the process: /health reports it and
    # the pool reconnects once it is back.
    host = {"db_host": database.connector.credentials.host}
    if await database_is_reachable(database.engine, settings.health_timeout_seconds):
        logger.info("database reachable", extra=host)
    else:
        logger.warning("database unreachable at startup", extra=host)


async def _user_cache(
    settings: Settings, database: Database, stack: contextlib.AsyncExitStack
) -> UserCache:
    """The worker's cache of active users, trusted once its notifications are proven.

    Two connections per worker, beside the pool, listen for the changes the cache must hear of
    (and send the heartbeat that proves they arrive); the cache stays bypassed until it is
    proven, so startup does not wait.
    """
    if not settings.user_cache:
        return UserCache(None, counted=settings.metrics)
    listener = NotificationListener(database.connector.connect)
    user_cache = UserCache(listener, counted=settings.metrics)
    listener.start()
    stack.push_async_callback(listener.aclose)
    return user_cache


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or load_settings()
    configure_logging(settings.log_level)
    app = FastAPI(
        title="one-system API",
        version=__version__,
        description="Complaint case management: authentication, users and reference data.",
        lifespan=_lifespan(settings),
        responses={500: {"model": ErrorResponse, "description": "Unexpected error"}},
        # FastAPI's native OpenTelemetry looks up the global providers on every request; this
        # service exports no traces, metrics or logs through it (Nginx and the JSON logs do).
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        # FastAPI's own pages load Swagger UI from a CDN with inline scripts; install_docs
        # serves it from the app under a strict CSP instead.
        docs_url=None,
        redoc_url=None,
        swagger_ui_oauth2_redirect_url=None,
        # `/api/v1/users/` is not `/api/v1/users`: a 404 that says so, not a redirect that
        # behind the proxies would name the app's own scheme and host.
        redirect_slashes=False,
    )
    register_error_handlers(app)
    app.add_middleware(
        cors.ApiCORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=cors.METHODS,
        allow_headers=cors.REQUEST_HEADERS,
        expose_headers=cors.EXPOSED_HEADERS,
        max_age=cors.PREFLIGHT_MAX_AGE_SECONDS,
    )
    app.add_middleware(HeadAsGetMiddleware)
    app.add_middleware(
        RequestContextMiddleware, access_log=settings.access_log, metrics=settings.metrics
    )
    app.include_router(health_router)
    for router in v1_routers:
        app.include_router(router, prefix=API_PREFIX)
    if settings.metrics:
        app.include_router(metrics_router)  # after the API's routes, which are matched first
    document_query_schemas(app)
    install_docs(app, settings)
    return app


def __getattr__(name: str) -> FastAPI:
    # Built on first access rather than at import, so tests and tools can import this module
    # (and call create_app with their own settings) without a production environment.
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
