"""Error responses that routes declare, so the OpenAPI schema lists every status they can return."""

from app.core.errors import ErrorResponse

AUTH_RESPONSES: dict[int | str, dict[str, object]] = {
    401: {"model": ErrorResponse, "description": "Missing, invalid or expired access token"},
    503: {"model": ErrorResponse, "description": "A dependency is unavailable"},
}
ADMIN_RESPONSES: dict[int | str, dict[str, object]] = {
    **AUTH_RESPONSES,
    403: {"model": ErrorResponse, "description": "The caller's role may not do this"},
}
