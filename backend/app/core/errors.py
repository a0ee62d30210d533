"""Domain errors and the one place that turns errors into JSON responses.

Every error body has FastAPI's `detail` plus a stable machine-readable `code` and the request id.
Services raise the domain errors below; they never build HTTP responses themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar, Final

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import iter_route_contexts
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from app.core import metrics
from app.core.logging import request_id_var
from app.core.middleware import REQUEST_ID_SCOPE_KEY

logger = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
# A body of 200k unknown fields made a 422 listing each: seconds of CPU on the event loop and
# an 18 MB answer. The first problems say what is wrong as well as all of them would.
MAX_REPORTED_PROBLEMS = 20


class DomainError(Exception):
    status_code: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"

    def __init__(self, detail: str, *, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = dict(headers or {})


class InvalidInputError(DomainError):
    status_code = 422
    code = "invalid_input"


class InvalidFieldError(DomainError):
    """A request field that is wrong in a way only the stored state shows.

    Answered exactly as request validation is (422 `validation_error`, `detail` a list naming
    the field), so a client meets one shape for a rule whichever check finds it broken.
    """

    status_code = 422
    code = "validation_error"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

    def problems(self) -> list[dict[str, Any]]:
        return [{"loc": ["body", self.field], "msg": self.detail, "type": "value_error"}]


class NotAuthenticatedError(DomainError):
    status_code = 401
    code = "not_authenticated"

    def __init__(self, detail: str = "Not authenticated", *, token_sent: bool = False) -> None:
        challenge = 'Bearer error="invalid_token"' if token_sent else "Bearer"
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class ForbiddenError(DomainError):
    status_code = 403
    code = "forbidden"


class NotFoundError(DomainError):
    status_code = 404
    code = "not_found"


class ConflictError(DomainError):
    status_code = 409
    code = "conflict"


class TooManyRequestsError(DomainError):
    status_code = 429
    code = "too_many_requests"

    def __init__(self, detail: str, *, retry_after: int = RETRY_AFTER_SECONDS) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class ServiceUnavailableError(DomainError):
    status_code = 503
    code = "service_unavailable"

    def __init__(self, detail: str, *, retry_after: int = RETRY_AFTER_SECONDS) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class ErrorResponse(BaseModel):
    """The body of every error response (`detail` is a list for request validation errors)."""

    detail: str | list[dict[str, Any]]
    code: str
    request_id: str | None = None


def error_response(
    request: Request,
    status_code: int,
    code: str,
    detail: str | list[dict[str, Any]],
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    request_id = request.scope.get(REQUEST_ID_SCOPE_KEY)
    body = {"detail": detail, "code": code, "request_id": request_id}
    response = JSONResponse(jsonable_encoder(body), status_code=status_code, headers=headers)
    if request_id:
        response.headers["X-Request-ID"] = request_id
    return response


# Connection-level failures only: a query that is wrong is a bug and must stay a 500.
DATABASE_UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    sqlalchemy.exc.TimeoutError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    ConnectionError,
    TimeoutError,
)


# SQLSTATE classes that say the database cannot serve right now, not that the query is wrong:
# 08 connection exception, 28 authorization (a rotated password), 40 transaction rollback (a
# deadlock or serialization failure: the same request may succeed when sent again), 53
# insufficient resources (too many connections), 57 operator intervention (shutdown, still
# starting up; and 57014, a statement timeout, which is answered 503 as well, since the query
# may pass when the database is less busy, but logged as the bug a slow query is).
# asyncpg's errors of these classes reach us as plain DBAPIError, so the class is what tells.
_UNAVAILABLE_SQLSTATE_CLASSES = frozenset({"08", "28", "40", "53", "57"})


def _causes(error: BaseException) -> list[BaseException]:
    """The error and what it was raised from, outermost first: SQLAlchemy's DB-API error
    (`orig`), the driver's error beneath it, and that one's own cause. Only explicit causes: an
    error raised while another was being handled is not that error."""
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain and len(chain) < 10:
        chain.append(current)
        orig = getattr(current, "orig", None)
        current = orig if isinstance(orig, BaseException) else current.__cause__
    return chain


def _sqlstate(error: BaseException) -> str | None:
    """The outermost SQLSTATE in the error's chain (None: the server sent none)."""
    for cause in _causes(error):
        state = getattr(cause, "sqlstate", None)
        if isinstance(state, str) and state:
            return state
    return None


# query_canceled, what PostgreSQL raises when a statement runs past `statement_timeout`.
STATEMENT_TIMEOUT_SQLSTATE: Final = "57014"


def describe_database_error(error: BaseException) -> str:
    """A database error for a log line: its SQLSTATE and the driver's error class, or, when the
    server said nothing, the connection error beneath it. Never its message, which may quote
    the data of a row."""
    causes = _causes(error)
    states: list[tuple[str, str]] = []
    for cause in causes:
        state = getattr(cause, "sqlstate", None)
        if not (isinstance(state, str) and state):
            continue
        if states and states[-1][0] == state:
            # SQLAlchemy's adapter copies the driver's state: name the driver's class.
            states[-1] = (state, type(cause).__name__)
        else:
            states.append((state, type(cause).__name__))
    if states:
        return ", caused by ".join(f"SQLSTATE {state} ({name})" for state, name in states)
    driver = type(causes[-1]).__name__
    if isinstance(error, sqlalchemy.exc.TimeoutError):
        return "no connection free in the pool within its timeout (no SQLSTATE)"
    return f"connection error {driver} (no SQLSTATE)"


# And single states of other classes: 25006 read_only_sql_transaction, what a write meets on an
# instance that a failover turned into a reader.
_UNAVAILABLE_SQLSTATES = frozenset({"25006"})


def _is_database_unavailable(error: BaseException) -> bool:
    if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, DATABASE_UNAVAILABLE_ERRORS):
        return True
    state = _sqlstate(error)
    return state is not None and (
        state[:2] in _UNAVAILABLE_SQLSTATE_CLASSES or state in _UNAVAILABLE_SQLSTATES
    )


_HTTP_CODES = {
    400: "bad_request",
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


async def _domain_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, DomainError)
    detail = error.problems() if isinstance(error, InvalidFieldError) else error.detail
    return error_response(request, error.status_code, error.code, detail, error.headers)


def _message(problem: Mapping[str, Any]) -> str:
    """The problem's message, without the "Value error, " pydantic puts before what a
    validator's ValueError says (the type, `value_error`, already says that much)."""
    message = str(problem.get("msg", ""))
    if problem.get("type") == "value_error":
        message = message.removeprefix("Value error, ")
    return message


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    # `input` may echo a password or a token back: keep only where and what went wrong.
    everything = error.errors()
    problems = [
        {"loc": problem.get("loc", ()), "msg": _message(problem), "type": problem.get("type")}
        for problem in everything[:MAX_REPORTED_PROBLEMS]
    ]
    if len(everything) > MAX_REPORTED_PROBLEMS:
        more = len(everything) - MAX_REPORTED_PROBLEMS
        problems.append({"loc": (), "msg": f"{more} more problems", "type": "truncated"})
    return error_response(request, 422, "validation_error", problems)


def allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app serves at the request's path, sorted."""
    # A copy: matching writes into the scope it is given.
    scope = dict(request.scope)
    methods: set[str] = set()
    for route in iter_route_contexts(request.app.routes):
        match, _ = route.matches(scope)
        if match is not Match.NONE:
            methods |= route.methods or set()
    return sorted(methods)


async def _http_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    code = _HTTP_CODES.get(error.status_code, "http_error")
    headers = error.headers
    if error.status_code == 405:
        # The router answers 405 from the first route whose path matched, and names only that
        # route's methods; RFC 9110 wants every method the resource has (GET and POST on
        # /users are two routes).
        headers = {**(headers or {}), "Allow": ", ".join(allowed_methods(request))}
    return error_response(request, error.status_code, code, str(error.detail), headers)


async def _dependency_error(request: Request, error: Exception) -> JSONResponse:
    if not _is_database_unavailable(error):
        return await _unexpected_error(request, error)
    if _sqlstate(error) == STATEMENT_TIMEOUT_SQLSTATE:
        metrics.DB_STATEMENT_TIMEOUTS.inc()
        # Not an outage: the server is up and cut off a query that ran too long. A slow query
        # is a bug to find, so it is logged as one, with the route that ran it.
        logger.error(
            "statement timeout: a query of %s %s ran past the statement timeout and was "
            "canceled (SQLSTATE %s); a slow query is a bug",
            request.method,
            request.url.path,
            STATEMENT_TIMEOUT_SQLSTATE,
        )
    else:
        what = "database" if isinstance(error, sqlalchemy.exc.SQLAlchemyError) else "dependency"
        logger.warning("%s unavailable: %s", what, describe_database_error(error))
    if isinstance(error, sqlalchemy.exc.SQLAlchemyError):
        code, detail = "database_unavailable", "The database is unavailable; try again shortly"
    else:
        code, detail = "service_unavailable", "A dependency is unavailable; try again shortly"
    return error_response(request, 503, code, detail, {"Retry-After": str(RETRY_AFTER_SECONDS)})


async def _unexpected_error(request: Request, error: Exception) -> JSONResponse:
    # Runs in Starlette's outermost middleware, after the request context was left: restore it
    # so the traceback's log line names the request.
    token = request_id_var.set(request.scope.get(REQUEST_ID_SCOPE_KEY))
    state = _sqlstate(error)
    try:
        if state is None:
            logger.error("unhandled error", exc_info=error)
        else:
            logger.error(
                "unhandled database error: %s", describe_database_error(error), exc_info=error
            )
    finally:
        request_id_var.reset(token)
    return error_response(request, 500, "internal_error", "Internal server error")


def register_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    dependency_errors: tuple[type[Exception], ...] = (
        sqlalchemy.exc.DBAPIError,
        *DATABASE_UNAVAILABLE_ERRORS,
    )
    for error_type in dependency_errors:
        app.add_exception_handler(error_type, _dependency_error)
    app.add_exception_handler(Exception, _unexpected_error)
