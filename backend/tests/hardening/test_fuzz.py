"""Property-based tests of every API operation, generated from the app's own OpenAPI schema.

schemathesis sends valid and invalid requests (positive and negative generation) to the app,
with an ADMIN token and with a DISPATCHER token, and checks every response: no server error,
a status the schema declares for the operation, a body and headers that match the schema,
invalid input rejected with a 4xx, a missing or bad token answered 401.

The app is the real one on a migrated database of its own, its users' Cognito calls going to a
moto server; schemathesis runs its lifespan and talks to it over ASGI. The budget is small and
the generation deterministic in `make test`; `make fuzz` raises it (FUZZ_EXAMPLES).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.python import asgi

from app.core.roles import Role
from app.main import create_app
from devtools.postgres import PsqlAdmin
from tests.support.database import cloned_database
from tests.support.harness import add_user, bearer, make_settings
from tests.support.jwt_tokens import JWKSServer
from tests.support.moto_cognito import MotoCognito

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "6"))
FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    derandomize=True,  # the same cases on every run: a failure in CI reproduces locally
    deadline=None,
    database=None,  # no example database written into the work tree
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
async def fuzz_database(pg: PsqlAdmin, migrated_template: str) -> AsyncIterator[str]:
    async with cloned_database(pg, migrated_template, "fuzz") as url:
        yield url


@pytest.fixture(scope="module")
async def fuzz_callers(fuzz_database: str) -> dict[Role, dict[str, str]]:
    callers = {}
    for role in (Role.ADMIN, Role.DISPATCHER):
        user = await add_user(fuzz_database, role)
        callers[role] = bearer(user.cognito_user_id)
    return callers


@pytest.fixture(scope="module")
def api_schema(
    fuzz_database: str,
    fuzz_callers: dict[Role, dict[str, str]],
    jwks_server: JWKSServer,
    moto_cognito: MotoCognito,
) -> Iterator[schemathesis.BaseSchema]:
    from app.api.deps import COGNITO

    app = create_app(make_settings(fuzz_database, cognito_jwks_url=jwks_server.url))
    adapter = moto_cognito.adapter()
    app.dependency_overrides[COGNITO] = lambda: adapter
    # Loading the schema starts the app's lifespan in schemathesis' event loop thread; every
    # case then runs in that loop, where the engine and the key cache live.
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    try:
        yield schema
    finally:
        asgi.shutdown_lifespans()


# Every check runs, `positive_data_acceptance` included: the schema states every rule a request
# alone decides (limits, blank text, the OFFICER/province rule, which fields may be null). That
# check accepts, besides 2xx, the statuses where something other than the request decides:
# 401/403 (who calls), 404 (an id no user has: the generated ids are random), 409 (an email
# already taken by an earlier example) and 429 (Cognito throttling).


def has_inputs(operation: schemathesis.APIOperation) -> bool:
    return any(True for _ in operation.iter_parameters()) or bool(list(operation.body))


def operations(schema: schemathesis.BaseSchema) -> list[schemathesis.APIOperation]:
    found = [result.ok() for result in schema.get_all_operations()]
    assert len(found) >= 12, "the schema lost operations"
    return found


# schemathesis' own pytest integration does not run on pytest 9.2 (it sets a node attribute
# pytest renamed), so each operation gets a plain Hypothesis run of schemathesis' strategy.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("role", [Role.ADMIN, Role.DISPATCHER])
def test_every_operation(
    api_schema: schemathesis.BaseSchema,
    fuzz_callers: dict[Role, dict[str, str]],
    subtests: pytest.Subtests,
    role: Role,
    mode: GenerationMode,
) -> None:
    headers = fuzz_callers[role]
    for operation in operations(api_schema):
        if mode is GenerationMode.NEGATIVE and not has_inputs(operation):
            continue  # nothing to make invalid

        @FUZZ_SETTINGS
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers=headers)

        with subtests.test(msg=operation.label):
            run()
