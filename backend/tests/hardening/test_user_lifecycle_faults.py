"""User accounts under faults that span processes and time: restarts, two instances, a hanging
Cognito, a database that a failover turned read-only.

Each test runs the real app (its lifespan, worker, pools) against PostgreSQL and moto's Cognito
behind the fault proxy, and checks what an operator would: every request bounded and honest,
and afterwards the database and Cognito in agreement.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import httpx
import pytest

from app.core.roles import Role
from tests.hardening.faults import (
    Fault,
    FaultProxy,
    OwnPostgres,
    fault_proxy,
    proxied_adapter,
    timed,
)
from tests.support.database import execute_sql
from tests.support.harness import (
    LiveApp,
    add_user,
    bearer,
    directory_caught_up,
    live_app,
    make_settings,
    wait_until,
)
from tests.support.jwt_tokens import JWKSServer
from tests.support.moto_cognito import MotoCognito

USERS = "/api/v1/users"


@pytest.fixture
def proxy(moto_cognito: MotoCognito) -> Iterator[FaultProxy]:
    with fault_proxy(moto_cognito.endpoint_url) as running:
        yield running


def new_user(role: Role = Role.DISPATCHER) -> dict[str, str]:
    email = f"life-{uuid.uuid4().hex[:12]}@example.gov"
    return {"full_name": "Life Cycle", "email": email, "role": role.value}


async def created(client: httpx.AsyncClient, headers: dict[str, str]) -> tuple[str, str]:
    body = new_user()
    response = await client.post(USERS, json=body, headers=headers)
    assert response.status_code == 201, response.text
    return str(response.json()["id"]), body["email"]


async def test_directory_work_pending_at_a_restart_is_carried_out_by_the_next_process(
    fresh_database_url: str, jwks_server: JWKSServer, moto_cognito: MotoCognito, proxy: FaultProxy
) -> None:
    settings = make_settings(fresh_database_url, cognito_jwks_url=jwks_server.url)
    admin = bearer((await add_user(fresh_database_url, Role.ADMIN)).cognito_user_id)
    adapter = proxied_adapter(proxy, moto_cognito, settings)
    async with live_app(settings, cognito=adapter) as first:
        user_id, email = await created(first.client, admin)
        proxy.refuse()
        response = await first.client.put(
            f"{USERS}/{user_id}", json={"is_active": False}, headers=admin
        )
        assert response.status_code == 200
        assert await first.state["directory_sync"].pending() == 1
    # The first process is gone with its work undone; Cognito still has the user enabled.
    proxy.accept()
    assert moto_cognito.find(email)["Enabled"] is True  # type: ignore[index]

    async with live_app(settings, cognito=adapter) as second:
        # The user may still be leased by the first process, and its entry waits out a backoff:
        # the second takes it up when those end; a test does not wait, so they end by hand.
        await execute_sql(fresh_database_url, "UPDATE outbox_leases SET expires_at = now()")
        await execute_sql(fresh_database_url, "UPDATE outbox SET next_attempt_at = now()")
        await directory_caught_up(second.state)
    assert moto_cognito.find(email)["Enabled"] is False  # type: ignore[index]


async def test_two_instances_carry_out_each_row_once(
    fresh_database_url: str, jwks_server: JWKSServer, moto_cognito: MotoCognito, proxy: FaultProxy
) -> None:
    settings = make_settings(fresh_database_url, cognito_jwks_url=jwks_server.url)
    admin = bearer((await add_user(fresh_database_url, Role.ADMIN)).cognito_user_id)
    adapter = proxied_adapter(proxy, moto_cognito, settings)
    async with (
        live_app(settings, cognito=adapter) as first,
        live_app(settings, cognito=adapter) as second,
    ):
        targets = [await created(first.client, admin) for _ in range(8)]
        disabled_before = proxy.count("AdminDisableUser")
        responses = await asyncio.gather(
            *(
                (first if index % 2 else second).client.put(
                    f"{USERS}/{user_id}", json={"is_active": False}, headers=admin
                )
                for index, (user_id, _) in enumerate(targets)
            )
        )
        assert {response.status_code for response in responses} == {200}
        await directory_caught_up(first.state)
    assert proxy.count("AdminDisableUser") - disabled_before == len(targets)
    for _, email in targets:
        assert moto_cognito.find(email)["Enabled"] is False  # type: ignore[index]


async def outbox_empty(database_url: str, key: str) -> bool:
    """Nothing left for the key: no work, and no read-back still due."""
    rows = await execute_sql(database_url, f"SELECT count(*) FROM outbox WHERE key = '{key}'")
    return bool(rows[0][0] == 0)


async def test_one_users_changes_converge_across_instances_whatever_cognitos_speed(
    fresh_database_url: str, jwks_server: JWKSServer, moto_cognito: MotoCognito, proxy: FaultProxy
) -> None:
    """A slow disable on one instance cannot land after the reactivation another carried out.

    Held 4 s, past the 2 s read timeout: the worker's call is abandoned, retried by the outbox,
    and the key read back once the held call can have landed."""
    settings = make_settings(
        fresh_database_url, cognito_jwks_url=jwks_server.url, aws_read_timeout_seconds=2
    )
    admin = bearer((await add_user(fresh_database_url, Role.ADMIN)).cognito_user_id)
    async with (
        live_app(settings, cognito=proxied_adapter(proxy, moto_cognito, settings)) as first,
        live_app(settings, cognito=proxied_adapter(proxy, moto_cognito, settings)) as second,
    ):
        user_id, email = await created(first.client, admin)
        proxy.fail("AdminDisableUser", Fault("slow", times=1, delay=4.0))
        response = await first.client.put(
            f"{USERS}/{user_id}", json={"is_active": False}, headers=admin
        )
        assert response.status_code == 200
        while proxy.count("AdminDisableUser") == 0:  # noqa: ASYNC110 - the proxy's log
            await asyncio.sleep(0.05)
        held_since = time.monotonic()
        response = await second.client.put(
            f"{USERS}/{user_id}", json={"is_active": True}, headers=admin
        )
        assert response.status_code == 200
        await directory_caught_up(first.state, within=20)
        await asyncio.sleep(max(0.0, held_since + 4.5 - time.monotonic()))  # it has landed
        await wait_until(lambda: outbox_empty(fresh_database_url, user_id), within=30)
        assert moto_cognito.find(email)["Enabled"] is True  # type: ignore[index]
        shown = await second.client.get(f"{USERS}/{user_id}", headers=admin)
        assert shown.json()["directory_in_step"] is True


async def test_a_disable_held_past_the_read_timeout_cannot_outlast_the_reactivation_after_it(
    fresh_database_url: str, jwks_server: JWKSServer, moto_cognito: MotoCognito, proxy: FaultProxy
) -> None:
    """The disable's first attempt is held past the read timeout and lands 3 s late. Retried
    by botocore, the handler saw one success and nothing read Cognito back: the reactivation
    carried out meanwhile was undone by the late landing (Cognito disabled, the row active,
    nothing pending). Sent once, the timeout is a failure the outbox sees, and the key is read
    back once every call can have landed."""
    settings = make_settings(
        fresh_database_url, cognito_jwks_url=jwks_server.url, aws_read_timeout_seconds=1
    )
    admin = bearer((await add_user(fresh_database_url, Role.ADMIN)).cognito_user_id)
    async with live_app(settings, cognito=proxied_adapter(proxy, moto_cognito, settings)) as live:
        user_id, email = await created(live.client, admin)
        held = proxy.fail("AdminDisableUser", Fault("slow", times=1, delay=3.0))
        deactivate = {"is_active": False}
        assert (
            await live.client.put(f"{USERS}/{user_id}", json=deactivate, headers=admin)
        ).status_code == 200
        await wait_until(lambda: held.seen == 1, within=5)
        sent = time.monotonic()
        await directory_caught_up(live.state, within=10)
        reactivate = {"is_active": True}
        assert (
            await live.client.put(f"{USERS}/{user_id}", json=reactivate, headers=admin)
        ).status_code == 200
        await directory_caught_up(live.state, within=10)
        await asyncio.sleep(max(0.0, sent + 3.5 - time.monotonic()))  # the held call has landed

        await wait_until(lambda: outbox_empty(fresh_database_url, user_id), within=30)
    assert moto_cognito.find(email)["Enabled"] is True  # type: ignore[index]


@asynccontextmanager
async def first_create_lands_late(
    database_url: str,
    jwks_server: JWKSServer,
    moto_cognito: MotoCognito,
    proxy: FaultProxy,
    body: dict[str, str],
) -> AsyncIterator[tuple[LiveApp, dict[str, str]]]:
    """The app (a 2 s Cognito deadline) and an admin's headers, after the admin's first create
    of `body` answered 503 at its deadline: its AdminCreateUser reaches Cognito 3 s late."""
    settings = make_settings(
        database_url, cognito_jwks_url=jwks_server.url, cognito_deadline_seconds=2
    )
    admin = bearer((await add_user(database_url, Role.ADMIN)).cognito_user_id)
    proxy.fail("AdminCreateUser", Fault("slow", times=1, delay=3.0))
    async with live_app(settings, cognito=proxied_adapter(proxy, moto_cognito, settings)) as live:
        first = await live.client.post(USERS, json=body, headers=admin)
        assert first.status_code == 503
        assert first.headers["Retry-After"]
        yield live, admin


async def retried_until_settled(
    client: httpx.AsyncClient, body: dict[str, str], headers: dict[str, str]
) -> tuple[list[int], httpx.Response]:
    """What an admin retrying a create every half second sees: each status until one is neither
    a 503 nor a `409 create_in_progress` (each of those with `Retry-After`), and that last
    answer."""
    answers: list[int] = []
    for _ in range(60):
        response = await client.post(USERS, json=body, headers=headers)
        answers.append(response.status_code)
        if response.status_code != 503 and not in_progress(response):
            break
        assert response.headers["Retry-After"]
        await asyncio.sleep(0.5)
    return answers, response


def in_progress(response: httpx.Response) -> bool:
    """Whether the create met another create of its email still in progress."""
    return response.status_code == 409 and response.json()["code"] == "create_in_progress"


async def test_a_create_that_lands_after_its_deadline_is_finished_and_retries_never_meet_409(
    fresh_database_url: str, jwks_server: JWKSServer, moto_cognito: MotoCognito, proxy: FaultProxy
) -> None:
    body = new_user()
    late = first_create_lands_late(fresh_database_url, jwks_server, moto_cognito, proxy, body)
    async with late as (live, admin):
        answers, response = await retried_until_settled(live.client, body, admin)
        # Until the outcome is known, 503 or 409 create_in_progress (the worker settling it
        # holds the email); then the user, created once, is the admin's.
        assert answers[-1] == 201, answers
        assert set(answers) <= {503, 409, 201}, answers
        in_cognito = moto_cognito.users_with_email(body["email"])
        assert len(in_cognito) == 1
        sub = {a["Name"]: a["Value"] for a in in_cognito[0]["Attributes"]}["sub"]
        row = await live.client.get(f"{USERS}/{response.json()['id']}", headers=admin)
        assert row.json()["email"] == body["email"]
        assert sub  # the one Cognito user is the one the row was made for (the sub is unique)


async def test_a_retry_refused_outright_keeps_the_intent_an_earlier_late_create_lands_under(
    fresh_database_url: str, jwks_server: JWKSServer, moto_cognito: MotoCognito, proxy: FaultProxy
) -> None:
    """Found by `make chaos`: a retry whose own AdminCreateUser was throttled (nothing done)
    dropped the intent while the first try's call was still on its way; when it landed, the
    user was an orphan and every later create of the email answered 409 email_taken."""
    body = new_user()
    late = first_create_lands_late(fresh_database_url, jwks_server, moto_cognito, proxy, body)
    async with late as (live, admin):
        throttled = proxy.fail(
            "AdminCreateUser",
            Fault("status", times=1, status=400, error_type="TooManyRequestsException"),
        )
        retried: list[int] = []
        while throttled.seen == 0 and len(retried) < 20:  # the worker may hold the email a moment
            retried.append((await live.client.post(USERS, json=body, headers=admin)).status_code)
        assert throttled.seen == 1, retried
        assert set(retried) <= {409, 429, 503}, retried
        await asyncio.sleep(2.0)  # the first try's call lands meanwhile (3 s after it was sent)
        assert len(moto_cognito.users_with_email(body["email"])) == 1
        answers, _ = await retried_until_settled(live.client, body, admin)
        assert answers[-1] == 201, answers
        assert len(moto_cognito.users_with_email(body["email"])) == 1


async def test_a_create_whose_answer_was_lost_beside_a_console_user_keeps_its_intent(
    fresh_database_url: str, jwks_server: JWKSServer, moto_cognito: MotoCognito, proxy: FaultProxy
) -> None:
    """Found by `make chaos`: a create's AdminCreateUser is held past the read timeout (its
    answer lost) while someone else's user of the email exists. The create rightly answers
    409 cognito_user_exists, but it dropped its intent although its own call was still on its
    way; the operator then removed the console user, the call landed, and its user was an
    orphan. The intent must stay until the call can no longer land: the worker then settles
    it (here: adopts the user it made)."""
    settings = make_settings(
        fresh_database_url, cognito_jwks_url=jwks_server.url, aws_read_timeout_seconds=1.0
    )
    admin = bearer((await add_user(fresh_database_url, Role.ADMIN)).cognito_user_id)
    body = new_user()
    email = body["email"]
    moto_cognito.client.admin_create_user(
        UserPoolId=moto_cognito.user_pool_id,
        Username=email,
        UserAttributes=[{"Name": "email", "Value": email}],
        MessageAction="SUPPRESS",
    )
    await asyncio.sleep(1.5)  # made before the create: not the create's to adopt
    proxy.fail("AdminCreateUser", Fault("slow", times=1, delay=2.5))
    async with live_app(settings, cognito=proxied_adapter(proxy, moto_cognito, settings)) as live:
        refused = await live.client.post(USERS, json=body, headers=admin)
        assert refused.status_code == 409, refused.text
        assert refused.json()["code"] == "cognito_user_exists"
        # The operator removes the user made in the console; then the create's call lands.
        moto_cognito.client.admin_delete_user(UserPoolId=moto_cognito.user_pool_id, Username=email)
        await wait_until(lambda: bool(moto_cognito.users_with_email(email)), within=10)

        async def adopted() -> bool:
            listed = await live.client.get(USERS, params={"q": email}, headers=admin)
            return bool(listed.json()["items"])

        await wait_until(adopted, within=60)
        assert len(moto_cognito.users_with_email(email)) == 1


async def test_creates_against_a_hanging_cognito_end_at_the_deadline_and_health_stays_up(
    fresh_database_url: str, jwks_server: JWKSServer, moto_cognito: MotoCognito, proxy: FaultProxy
) -> None:
    deadline = 3.0
    settings = make_settings(
        fresh_database_url,
        cognito_jwks_url=jwks_server.url,
        cognito_deadline_seconds=deadline,
        # Each call alone could wait longer than the deadline: the deadline must cut it.
        aws_read_timeout_seconds=10,
    )
    admin = bearer((await add_user(fresh_database_url, Role.ADMIN)).cognito_user_id)
    adapter = proxied_adapter(proxy, moto_cognito, settings)
    proxy.fail("AdminCreateUser", Fault("hang"))
    bodies = [new_user() for _ in range(8)]
    async with live_app(settings, cognito=adapter) as live:
        creates = [
            asyncio.ensure_future(timed(live.client.post(USERS, json=body, headers=admin)))
            for body in bodies
        ]
        probes: list[tuple[httpx.Response, float]] = []
        while not all(create.done() for create in creates):
            probes.append(await timed(live.client.get("/health")))
            await asyncio.sleep(0.3)
        results = [create.result() for create in creates]
        proxy.heal()
    for response, seconds in results:
        assert response.status_code == 503, response.text
        # Cognito may still create the user: the create's intent settles it.
        assert response.json()["code"] == "create_unsettled"
        assert int(response.headers["Retry-After"]) > 0
        assert seconds < deadline + 2, seconds
    assert len(probes) >= 5
    for health, seconds in probes:
        assert health.status_code == 200
        assert seconds < 3, seconds
    rows = await execute_sql(fresh_database_url, "SELECT lower(email) FROM users")
    for body in bodies:
        assert body["email"] not in {row[0] for row in rows}
        assert moto_cognito.find(body["email"]) is None


async def test_a_read_only_database_is_503_and_the_pool_recovers_when_the_writer_is_back(
    own_pg: OwnPostgres,
    own_database: str,
    jwks_server: JWKSServer,
    moto_cognito: MotoCognito,
) -> None:
    settings = make_settings(own_database, cognito_jwks_url=jwks_server.url)
    admin = bearer((await add_user(own_database, Role.ADMIN)).cognito_user_id)
    target = await add_user(own_database, Role.DISPATCHER)
    database = own_database.rsplit("/", 1)[-1]
    async with live_app(settings, cognito=moto_cognito.adapter()) as live:
        rename = {"full_name": "Renamed"}
        assert (
            await live.client.put(f"{USERS}/{target.id}", json=rename, headers=admin)
        ).status_code == 200

        # A failover: every connection is cut, and the instance they reach again is a reader.
        own_pg.execute(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on')
        own_pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )
        update = await live.client.put(f"{USERS}/{target.id}", json=rename, headers=admin)
        assert update.status_code == 503, update.text
        assert update.json()["code"] == "database_unavailable"
        assert int(update.headers["Retry-After"]) > 0
        body = new_user()
        create = await live.client.post(USERS, json=body, headers=admin)
        assert create.status_code == 503, create.text
        # Nothing half-written: the Cognito user the create made was deleted again.
        assert moto_cognito.find(body["email"]) is None

        own_pg.execute(f'ALTER DATABASE "{database}" RESET default_transaction_read_only')
        # Connections opened while it was a reader are dropped at their first refusal.
        statuses = []
        started = time.monotonic()
        while (not statuses or statuses[-1] != 200) and time.monotonic() - started < 10:
            response = await live.client.put(f"{USERS}/{target.id}", json=rename, headers=admin)
            statuses.append(response.status_code)
        assert statuses[-1] == 200, statuses
        assert len(statuses) <= 3, statuses
        for _ in range(5):
            response = await live.client.put(f"{USERS}/{target.id}", json=rename, headers=admin)
            assert response.status_code == 200
        assert live.checked_out() == 0
