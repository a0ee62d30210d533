"""Database password rotation through Secrets Manager, while the app runs.

The dedicated server enforces scram-sha-256 for the test's roles over TCP (the embedded cluster
trusts everyone else). The secret lives in moto's Secrets Manager behind a proxy that counts
GetSecretValue calls and can break them. A rotation is followed on the next refused
connection with one read of the secret; a secret that is wrong, or unreadable, gives 503s and a
bounded number of reads, never a loop or a 500; no password ever reaches a log line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import boto3
import pytest
from sqlalchemy.engine import make_url

import app.core.db
from app.core.roles import Role
from tests.hardening.faults import Fault, FaultProxy, OwnPostgres, fault_proxy, timed
from tests.support.harness import add_user, bearer, live_app, make_settings, uncached_user_list
from tests.support.jwt_tokens import TEST_REGION, JWKSServer
from tests.support.logs import recorded_logs
from tests.support.moto_cognito import DUMMY_CREDENTIALS_ENV, MotoCognito

ME = "/api/v1/users/me"


PASSWORD_GROUP = "password_auth"


@pytest.fixture(scope="module")
def password_auth(own_pg: OwnPostgres) -> str:
    """Members of this group must log in with their password over TCP."""
    own_pg.execute(f"CREATE ROLE {PASSWORD_GROUP} NOLOGIN")
    own_pg.hba_prepend(f"host all +{PASSWORD_GROUP} 127.0.0.1/32 scram-sha-256")
    return PASSWORD_GROUP


def new_password() -> str:
    return f"pw-{uuid.uuid4().hex}"


@pytest.fixture
def db_role(own_pg: OwnPostgres, own_database: str, password_auth: str) -> Iterator[str]:
    """A login role with a password, allowed to do what the API does."""
    role = f"api_{uuid.uuid4().hex[:8]}"
    database = make_url(own_database).database
    assert database is not None
    own_pg.execute(f"CREATE ROLE {role} LOGIN IN ROLE {password_auth}")
    own_pg.execute(
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}; "
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
        database=database,
    )
    yield role
    own_pg.execute(f"DROP OWNED BY {role}", database=database)
    own_pg.execute(f"DROP ROLE {role}")


def set_password(own_pg: OwnPostgres, role: str, password: str) -> None:
    own_pg.execute(f"ALTER ROLE {role} PASSWORD '{password}'")


@pytest.fixture
def secrets_proxy(
    moto_cognito: MotoCognito, monkeypatch: pytest.MonkeyPatch
) -> Iterator[FaultProxy]:
    """The app's Secrets Manager endpoint: moto, through a counting, breakable proxy."""
    with fault_proxy(moto_cognito.endpoint_url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", proxy.url)
        for name, value in DUMMY_CREDENTIALS_ENV.items():
            monkeypatch.setenv(name, value)
        yield proxy


class Secret:
    def __init__(self, moto: MotoCognito, own_database: str, own_pg: OwnPostgres) -> None:
        self.client: Any = boto3.client(
            "secretsmanager",
            region_name=TEST_REGION,
            endpoint_url=moto.endpoint_url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        self.secret_id = f"/one-system/test/{uuid.uuid4().hex[:8]}"
        self.database = make_url(own_database).database
        self.port = own_pg.port

    def document(self, role: str, password: str) -> str:
        return json.dumps(
            {
                "engine": "postgres",
                "host": "127.0.0.1",
                "port": str(self.port),
                "username": role,
                "password": password,
                "dbname": self.database,
            }
        )

    def create(self, role: str, password: str) -> None:
        self.client.create_secret(Name=self.secret_id, SecretString=self.document(role, password))

    def put(self, role: str, password: str) -> None:
        self.client.put_secret_value(
            SecretId=self.secret_id, SecretString=self.document(role, password)
        )


async def terminate_backends(own_database: str, role: str) -> None:
    """Kill the app's open connections, so its next request must open new ones."""
    url = make_url(own_database)
    admin = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, database=url.database
    )
    try:
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role
        )
    finally:
        await admin.close()


def assert_no_password_in_logs(lines: list[str], *passwords: str) -> None:
    for line in lines:
        for password in passwords:
            assert password not in line, line


async def test_rotation_is_followed_with_one_read_of_the_secret_and_no_restart(
    own_pg: OwnPostgres,
    own_database: str,
    db_role: str,
    moto_cognito: MotoCognito,
    secrets_proxy: FaultProxy,
    jwks_server: JWKSServer,
) -> None:
    first, second = new_password(), new_password()
    set_password(own_pg, db_role, first)
    secret = Secret(moto_cognito, own_database, own_pg)
    secret.create(db_role, first)
    # Password auth really applies to this role: a wrong password is refused.
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(
            host="127.0.0.1", port=own_pg.port, user=db_role, password="wrong", database="postgres"
        )
    admin = await add_user(own_database, Role.ADMIN)
    headers = bearer(admin.cognito_user_id)
    settings = make_settings(
        own_database, db_secret_id=secret.secret_id, cognito_jwks_url=jwks_server.url
    )
    async with live_app(settings, background=False) as live:
        with recorded_logs() as logs:
            assert (await live.client.get(ME, headers=headers)).status_code == 200
            assert secrets_proxy.count("GetSecretValue") == 1  # at startup

            set_password(own_pg, db_role, second)
            secret.put(db_role, second)
            # Open connections outlive a password change: nothing to do yet.
            assert (await live.client.get(uncached_user_list(), headers=headers)).status_code == 200
            assert secrets_proxy.count("GetSecretValue") == 1

            await terminate_backends(own_database, db_role)
            responses = await asyncio.gather(
                *(live.client.get(uncached_user_list(), headers=headers) for _ in range(5))
            )
            assert [response.status_code for response in responses] == [200] * 5
            # One read for all the pool's connections the refused password made fail (a
            # connection of the app's own outside the pool may read once more).
            assert 2 <= secrets_proxy.count("GetSecretValue") <= 3
            assert (await live.client.get("/health")).status_code == 200
            assert live.checked_out() == 0
    assert_no_password_in_logs(logs.lines, first, second)
    assert not logs.at_least(logging.ERROR)


async def test_wrong_or_unreadable_secret_is_503_with_bounded_reads_then_heals(
    own_pg: OwnPostgres,
    own_database: str,
    db_role: str,
    moto_cognito: MotoCognito,
    secrets_proxy: FaultProxy,
    jwks_server: JWKSServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, changed = new_password(), new_password()
    set_password(own_pg, db_role, first)
    secret = Secret(moto_cognito, own_database, own_pg)
    secret.create(db_role, first)
    admin = await add_user(own_database, Role.ADMIN)
    headers = bearer(admin.cognito_user_id)
    settings = make_settings(
        own_database, db_secret_id=secret.secret_id, cognito_jwks_url=jwks_server.url
    )
    async with live_app(settings, background=False) as live:
        with recorded_logs() as logs:
            assert (await live.client.get(ME, headers=headers)).status_code == 200
            # The password changes but the secret does not (a rotation that went half-way).
            set_password(own_pg, db_role, changed)
            await terminate_backends(own_database, db_role)
            for _ in range(10):
                response, seconds = await timed(
                    live.client.get(uncached_user_list(), headers=headers)
                )
                assert_503(response)
                assert seconds < 5
            assert (await live.client.get("/health")).status_code == 503
            # One re-read (it held the refused password), then none within the interval,
            # however many requests come.
            reads = secrets_proxy.count("GetSecretValue")
            assert 2 <= reads <= 3
            for _ in range(10):
                assert_503(await live.client.get(uncached_user_list(), headers=headers))
            assert secrets_proxy.count("GetSecretValue") == reads

            # Once the interval has passed, Secrets Manager itself failing is a 503 too.
            monkeypatch.setattr(app.core.db, "CREDENTIALS_REFRESH_INTERVAL_SECONDS", 0.5)
            await asyncio.sleep(0.6)
            secrets_proxy.fail("GetSecretValue", Fault("status", status=500))
            response, seconds = await timed(live.client.get(uncached_user_list(), headers=headers))
            assert_503(response)
            assert seconds < 5
            # Each refresh is one call and its retries; two connectors at most.
            assert secrets_proxy.count("GetSecretValue") <= reads + 2 * settings.aws_max_attempts
            reads = secrets_proxy.count("GetSecretValue")

            # The operator fixes the secret: the same process heals after the interval.
            secrets_proxy.heal()
            secret.put(db_role, changed)
            await asyncio.sleep(0.6)
            assert (await live.client.get(ME, headers=headers)).status_code == 200
            assert (await live.client.get("/health")).status_code == 200
            assert reads < secrets_proxy.count("GetSecretValue") <= reads + 2
            assert live.checked_out() == 0
    assert_no_password_in_logs(logs.lines, first, changed)
    assert not logs.at_least(logging.ERROR)


def assert_503(response: Any) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0


async def test_secret_read_at_startup_failing_does_not_hang(
    own_database: str, secrets_proxy: FaultProxy, jwks_server: JWKSServer
) -> None:
    """An unreadable secret at startup stops the process with a message, quickly."""
    secrets_proxy.fail("GetSecretValue", Fault("status", status=500))
    settings = make_settings(
        own_database,
        db_secret_id="/one-system/test/missing",
        cognito_jwks_url=jwks_server.url,
        aws_read_timeout_seconds=1,
    )
    with pytest.raises(Exception, match="cannot read secret") as raised:
        async with asyncio.timeout(10), live_app(settings):
            pass
    assert "pw-" not in str(raised.value)
