"""Strict query strings for the read endpoints, and list filters read by the route itself.

A list's filters are a Pydantic model (`UserListParams`). Declared as
`Annotated[Model, Query()]`, FastAPI reads it field by field on every request, resolving each
field's aliases and annotation anew, which costs more than a cached page's own work and grows
with every filter (docs/performance.md). `QueryModel` reads it in one `model_validate` call
instead, and only when the route needs it (a cached page needs nothing but the query string
it was cached under); it documents it exactly as FastAPI would, from FastAPI's own generator:
the route passes `openapi_extra=QUERY.openapi_extra`, and `document_query_schemas` (installed
by the app factory) moves the schemas the parameters refer to (`UserSort`) into the
document's components.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Collection
from typing import Annotated, Any, Final, Generic, TypeVar

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ValidationError

from app.core.errors import InvalidInputError

M = TypeVar("M", bound=BaseModel)

# Where an operation's `openapi_extra` carries the schemas its parameters refer to, until
# `document_query_schemas` moves them into the document's components.
_SCHEMAS_KEY: Final = "x-query-schemas"
_COMPONENT: Final = "#/components/schemas/"
_POSITIONAL: Final = inspect.Parameter.POSITIONAL_OR_KEYWORD


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


class QueryModel(Generic[M]):
    """A route's query string as a `model`, read by `parse` and documented by `openapi_extra`.

    Every field takes one value: a repeated parameter is refused, so a filter of several values
    needs a spelling of its own (`status=a,b`) rather than FastAPI's repeated-key lists.
    """

    def __init__(self, model: type[M]) -> None:
        self.model = model
        self._names = frozenset(model.model_fields)

        # What FastAPI itself documents for the model declared as query parameters.
        async def documented(**_: object) -> None:
            raise NotImplementedError  # never served: only its OpenAPI operation is read

        documented.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
            [inspect.Parameter("params", _POSITIONAL, annotation=Annotated[model, Query()])]
        )
        scratch = APIRouter()
        scratch.add_api_route("/", documented, methods=["GET"])
        document = get_openapi(title="", version="", routes=scratch.routes)
        parameters = document["paths"]["/"]["get"]["parameters"]
        schemas = document.get("components", {}).get("schemas", {})
        self._extra: dict[str, Any] = {
            "parameters": parameters,
            _SCHEMAS_KEY: {name: schemas[name] for name in _referenced(parameters, schemas)},
        }

    @property
    def openapi_extra(self) -> dict[str, Any]:
        return copy.deepcopy(self._extra)

    def parse(self, request: Request) -> M:
        """The request's query as the model; 422 as FastAPI answers for a query model, and for
        unknown or repeated parameters (`refuse_unexpected_query`)."""
        try:
            params = self.model.model_validate(dict(request.query_params))
        except ValidationError as error:
            problems = [
                {**problem, "loc": ("query", *problem["loc"])} for problem in error.errors()
            ]
            raise RequestValidationError(problems) from None
        refuse_unexpected_query(request, self._names)  # repeated ones: the model saw the last
        return params


def _referenced(value: object, schemas: dict[str, Any]) -> set[str]:
    """The component schemas `value` refers to, and those they refer to in turn."""
    found: set[str] = set()
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            reference = item.get("$ref")
            if isinstance(reference, str) and reference.startswith(_COMPONENT):
                name = reference.removeprefix(_COMPONENT)
                if name not in found:
                    found.add(name)
                    pending.append(schemas[name])
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return found


def document_query_schemas(app: FastAPI) -> None:
    """Have `app`'s OpenAPI document hold the schemas its `QueryModel`s' parameters refer to."""
    build_schema = app.openapi  # FastAPI's: builds the document once and keeps it

    def openapi() -> dict[str, Any]:
        document = build_schema()
        for path_item in document.get("paths", {}).values():
            for operation in path_item.values():
                if _SCHEMAS_KEY in operation:
                    schemas = document.setdefault("components", {}).setdefault("schemas", {})
                    schemas.update(operation.pop(_SCHEMAS_KEY))
        return document

    app.openapi = openapi  # type: ignore[method-assign]
