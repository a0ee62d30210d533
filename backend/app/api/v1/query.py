"""Strict query strings for the read endpoints."""

from collections.abc import Collection

from fastapi import Request

from app.core.errors import InvalidInputError


def refuse_unexpected_query(request: Request, allowed: Collection[str] = ()) -> None:
    """Refuse unknown and repeated query parameters with a 422 that names them.

    A misspelt filter must fail loudly instead of returning everything, and a repeated one must
    not silently keep only one of its values.
    """
    if not request.scope["query_string"]:
        return
    params = request.query_params
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise InvalidInputError(f"Unknown query parameters: {', '.join(unknown)}")
    repeated = sorted({name for name in params if len(params.getlist(name)) > 1})
    if repeated:
        raise InvalidInputError(f"Query parameters given more than once: {', '.join(repeated)}")
