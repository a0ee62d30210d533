"""Error responses that routes declare, so the OpenAPI schema lists every status they can return.

Every domain's router takes its declarations from here: `AUTH_RESPONSES` for any signed-in
route, `ADMIN_RESPONSES` where a role is required, `INVALID` / `UNREADABLE` / `UNKNOWN_QUERY`
for what FastAPI and `refuse_unexpected_query` refuse, and `error(status, description)` for a
route's own cases (a 404 naming what is missing, a 409 naming its codes). Every body is
`ErrorResponse`, whatever raised it (`app.core.errors`).
"""

from typing import Final

from app.core.errors import ErrorResponse

Responses = dict[int | str, dict[str, object]]


def error(status: int, description: str) -> Responses:
    """One error status a route may answer, with the body every error has."""
    return {status: {"model": ErrorResponse, "description": description}}


AUTH_RESPONSES: Final[Responses] = {
    **error(401, "Missing, invalid or expired access token"),
    **error(503, "A dependency is unavailable"),
}
ADMIN_RESPONSES: Final[Responses] = {
    **AUTH_RESPONSES,
    **error(403, "The caller's role may not do this"),
}
INVALID: Final = error(422, "Invalid parameters or body")
# FastAPI's answer to a body that is not text at all (invalid UTF-8), before any validation.
UNREADABLE: Final = error(400, "The body cannot be read")
UNKNOWN_QUERY: Final = error(422, "Unknown or invalid query parameters")
